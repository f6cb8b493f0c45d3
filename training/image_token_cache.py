"""Precomputed image tokens: the frozen image tokenizer (VAE encoder, or patchify) run once over a dataset instead
of at every training step, as MAR trains on cached latents.

Exact in fp32: the tokenizer is frozen and `encode_images` is deterministic (the VAE posterior's mode), so a
cached row holds the very tokens an fp32 training step would compute (under bf16 autocast a step would encode in
bf16; the cache keeps the fp32 tokens). Worth it with a VAE: at the
paper-0.5b geometry on CPU, MMAR's training-step overhead over the bare Qwen2-0.5B falls from +27 % to +13 %
(`python -m benchmarks run --suite cpu-paper`). `data.cache_image_tokens: true` in a run config turns it on;
the collator then passes `image_tokens` instead of `pixel_values` (it still reads the images: the processor
needs them to lay out each image span). Map-style datasets only: a stream has nothing to keep.
"""

from __future__ import annotations

import datasets
from datasets.fingerprint import Hasher

from .data import decode_image

IMAGE_TOKENS_COLUMN = "image_tokens"


def _tokenizer_fingerprint(model, processor) -> str:
    """Changes with the image tokenizer's weights and the image preprocessing, so that datasets never reuses
    tokens made by another VAE or another resize."""
    vae = model.model.vae
    weights = "patchify" if vae is None else Hasher.hash({k: v.cpu().numpy() for k, v in vae.state_dict().items()})
    return Hasher.hash([model.config.to_json_string(), processor.image_processor.to_json_string(), weights])


def add_image_tokens(dataset, model, processor, image_column: str = "image", batch_size: int = 64):
    """`dataset` with an `image_tokens` column ([tokens_per_image, token_dim] float32 per row): the clean
    continuous tokens of its `image_column`, computed once with `model`'s frozen image tokenizer. Works on a
    map-style `Dataset` (cached by datasets like any `map`)."""
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"data.cache_image_tokens needs a map-style datasets.Dataset, got {type(dataset).__name__}: a streamed "
            "dataset is read once per pass, so there is nothing to cache (turn data.streaming off, or the cache)"
        )
    if image_column not in dataset.column_names:
        raise ValueError(f"cannot cache image tokens: the dataset has no {image_column!r} column "
                         f"(columns: {dataset.column_names})")
    config = model.config
    features = dataset.features.copy()
    features[IMAGE_TOKENS_COLUMN] = datasets.Array2D((config.tokens_per_image, config.token_dim), "float32")
    device = next(model.parameters()).device

    def encode(batch):
        images = [decode_image(value, where=f"column {image_column!r}") for value in batch[image_column]]
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        tokens = model.model.encode_images(pixel_values.to(device))
        return {IMAGE_TOKENS_COLUMN: tokens.float().cpu().numpy()}

    # An explicit fingerprint: hashing `encode` would pickle the whole model.
    fingerprint = Hasher.hash([dataset._fingerprint, image_column, _tokenizer_fingerprint(model, processor)])
    return dataset.map(encode, batched=True, batch_size=batch_size, features=features, new_fingerprint=fingerprint,
                       desc="encoding images once (image token cache)")


__all__ = ["IMAGE_TOKENS_COLUMN", "add_image_tokens"]
