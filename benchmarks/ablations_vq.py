"""The discrete-token control: the model's own continuous image tokens quantised by a k-means codebook.

The codebook is learnt (scikit-learn k-means) on the clean tokens of the training images only. `quantize_model`
makes the model see images only through it: its image tokenizer (`encode_images`) returns every token snapped to the
nearest codeword, so training, captioning and inpainting inputs are quantised; its decoder (`decode_image_tokens`)
snaps generated tokens before decoding, so every generated image is made of codewords (the sampler still feeds its
continuous samples back to the LLM between masked-AR steps: a VQ *tokenizer* with MMAR's diffusion head, not
Show-o's categorical head over codes).
"""

from __future__ import annotations

import types

import numpy as np
import torch

CODEBOOK_SIZE = 256  # codewords; 8 bits per token


class TokenCodebook:
    """Codewords [K, D]; `quantize` snaps tokens [..., D] to their nearest codeword (Euclidean)."""

    def __init__(self, codewords: np.ndarray | torch.Tensor):
        codewords = torch.as_tensor(np.asarray(codewords), dtype=torch.float32)
        if codewords.ndim != 2 or len(codewords) < 1:
            raise ValueError(f"codewords must be [K, D] with K >= 1, got shape {tuple(codewords.shape)}")
        self.codewords = codewords

    @property
    def size(self) -> int:
        return len(self.codewords)

    @property
    def dim(self) -> int:
        return self.codewords.shape[1]

    def indices(self, tokens: torch.Tensor) -> torch.Tensor:
        flat = tokens.reshape(-1, self.dim).float()
        codewords = self.codewords.to(flat.device)
        return torch.cdist(flat, codewords).argmin(dim=1).reshape(tokens.shape[:-1])

    def quantize(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.dim:
            raise ValueError(f"tokens of dimension {tokens.shape[-1]} cannot use a codebook of dimension {self.dim}")
        return self.codewords.to(tokens.device)[self.indices(tokens)].to(tokens.dtype)


def fit_codebook(tokens: np.ndarray | torch.Tensor, size: int = CODEBOOK_SIZE, seed: int = 0) -> TokenCodebook:
    """k-means (k-means++ start, 1 run) on training tokens [N, D]; `size` is capped at the distinct tokens."""
    from sklearn.cluster import KMeans

    data = np.asarray(tokens, dtype=np.float64).reshape(-1, np.asarray(tokens).shape[-1])
    distinct = len(np.unique(data, axis=0))
    clusters = max(1, min(size, distinct))
    kmeans = KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit(data)
    return TokenCodebook(kmeans.cluster_centers_)


@torch.no_grad()
def training_tokens(model, processor, dataset, batch_size: int = 256) -> torch.Tensor:
    """Clean tokens [N * L, D] of every image of `dataset` (its cached `image_tokens` column when it has one)."""
    from training.data import decode_image
    from training.image_token_cache import IMAGE_TOKENS_COLUMN

    if IMAGE_TOKENS_COLUMN in dataset.column_names:
        return torch.as_tensor(np.asarray(dataset[IMAGE_TOKENS_COLUMN], dtype=np.float32)).reshape(
            -1, model.config.token_dim)
    chunks = []
    for start in range(0, len(dataset), batch_size):
        images = [decode_image(value) for value in dataset[start:start + batch_size]["image"]]
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        chunks.append(model.model.encode_images(pixel_values).reshape(-1, model.config.token_dim))
    return torch.cat(chunks)


def quantize_model(model, codebook: TokenCodebook) -> None:
    """Route every image of `model` through `codebook` (see the module docstring); instance-level, this model only."""
    inner = model.model
    encode, decode = inner.encode_images, inner.decode_image_tokens

    def encode_images(self, pixel_values):
        return codebook.quantize(encode(pixel_values))

    def decode_image_tokens(self, image_tokens):
        return decode(codebook.quantize(image_tokens))

    inner.encode_images = types.MethodType(encode_images, inner)
    inner.decode_image_tokens = types.MethodType(decode_image_tokens, inner)
    inner.token_codebook = codebook


def quantize_cached_tokens(dataset, codebook: TokenCodebook):
    """A dataset's cached `image_tokens` column (made before the model was quantised) snapped to the codebook."""
    from training.image_token_cache import IMAGE_TOKENS_COLUMN

    if dataset is None or IMAGE_TOKENS_COLUMN not in dataset.column_names:
        return dataset

    def snap(batch):
        tokens = torch.as_tensor(np.asarray(batch[IMAGE_TOKENS_COLUMN], dtype=np.float32))
        return {IMAGE_TOKENS_COLUMN: codebook.quantize(tokens).numpy()}

    return dataset.map(snap, batched=True, batch_size=256, features=dataset.features,
                       desc="quantising cached image tokens")


@torch.no_grad()
def quantised_reconstructions(model, processor, images) -> tuple[torch.Tensor, float]:
    """Images (PIL) through the (quantised) image tokenizer and back: ([N, C, H, W] in [0, 1], token RMS
    quantisation error) — what the quantised model can see of them."""
    pixel_values = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    inner = model.model
    tokens = inner.encode_images(pixel_values)
    codebook = getattr(inner, "token_codebook", None)
    error = 0.0
    if codebook is not None:
        exact = type(inner).encode_images(inner, pixel_values)  # the class's own, unquantised tokenizer
        error = float((tokens - exact).pow(2).mean().sqrt())
    pixels = inner.decode_image_tokens(tokens)
    return ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0), error


__all__ = ["CODEBOOK_SIZE", "TokenCodebook", "fit_codebook", "quantize_cached_tokens", "quantize_model",
           "quantised_reconstructions", "training_tokens"]
