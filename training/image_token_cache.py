"""Precomputed image tokens: the frozen image tokenizer (VAE encoder, or patchify) run once over a dataset instead
of at every training step, as MAR trains on cached latents.

Exact, not an approximation: the tokenizer is frozen and `encode_images` is deterministic (the VAE posterior's
mode), so a cached row holds the very tokens a training step would compute. Worth it with a VAE: at the
paper-0.5b geometry on CPU, MMAR's training-step overhead over the bare Qwen2-0.5B falls from +33 % to +18 %
(`python -m benchmarks run --suite cpu-paper`). `data.cache_image_tokens: true` in a run config turns it on;
the collator then passes `image_tokens` instead of `pixel_values`.
"""

from __future__ import annotations

import datasets
import torch
from datasets.fingerprint import Hasher

from .data import decode_image

IMAGE_TOKENS_COLUMN = "image_tokens"


def _tokenizer_checksum(model) -> str:
    """Changes when the image tokenizer's weights do, so datasets never reuses tokens of another VAE."""
    vae = model.model.vae
    if vae is None:
        return "patchify"
    with torch.no_grad():
        return Hasher.hash([float(p.double().sum()) for p in vae.parameters()])


def add_image_tokens(dataset, model, processor, image_column: str = "image", batch_size: int = 64):
    """`dataset` with an `image_tokens` column ([tokens_per_image, token_dim] float32 per row): the clean
    continuous tokens of its `image_column`, computed once with `model`'s frozen image tokenizer. Works on a
    `Dataset` (cached by datasets like any `map`) and on a streamed `IterableDataset` (computed as rows stream)."""
    if image_column not in (dataset.column_names or []):
        raise ValueError(f"cannot cache image tokens: the dataset has no {image_column!r} column "
                         f"(columns: {dataset.column_names})")
    config = model.config
    features = dataset.features.copy() if dataset.features is not None else None
    if features is not None:
        features[IMAGE_TOKENS_COLUMN] = datasets.Array2D((config.tokens_per_image, config.token_dim), "float32")
    device = next(model.parameters()).device

    def encode(batch):
        images = [decode_image(value, where=f"column {image_column!r}") for value in batch[image_column]]
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        tokens = model.model.encode_images(pixel_values.to(device))
        return {IMAGE_TOKENS_COLUMN: tokens.float().cpu().numpy()}

    options = {"batched": True, "batch_size": batch_size, "features": features}
    if isinstance(dataset, datasets.Dataset):
        fingerprint = Hasher.hash([dataset._fingerprint, config.to_json_string(), image_column,
                                   _tokenizer_checksum(model)])
        options.update(new_fingerprint=fingerprint, desc="encoding images once (image token cache)")
    return dataset.map(encode, **options)


__all__ = ["IMAGE_TOKENS_COLUMN", "add_image_tokens"]
