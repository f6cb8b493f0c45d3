"""Continuous image tokens: patchify / unpatchify, image-span discovery and input checks.

Pure tensor functions shared by the model, the sampler and the pipeline (no parameters live here).
"""

from __future__ import annotations

import torch


def patchify(latents: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, (H/p)*(W/p), C*p*p], row-major over patches, (c, py, px) inside a token."""
    n, c, h, w = latents.shape
    p = patch_size
    x = latents.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int, tokens_per_side: int) -> torch.Tensor:
    """Exact inverse of `patchify`."""
    n = tokens.shape[0]
    p, s = patch_size, tokens_per_side
    x = tokens.reshape(n, s, s, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, channels, s * p, s * p)


def image_block_ids(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Give every contiguous run of `<img>` tokens in a row its own id (0, 1, ...); text gets -1.

    Fed to `transformers.masking_utils` as `block_sequence_ids`: tokens of one image attend to each other
    bidirectionally, everything else stays causal (a later image cannot be seen by an earlier one).
    """
    is_image = input_ids == image_token_id
    previous = torch.nn.functional.pad(is_image, (1, 0), value=False)[:, :-1]
    starts = is_image & ~previous
    ids = torch.cumsum(starts.long(), dim=1) - 1
    return torch.where(is_image, ids, torch.full_like(ids, -1))


def check_image_spans(input_ids: torch.Tensor, image_token_id: int, tokens_per_image: int) -> int:
    """Return the number of complete image spans in `input_ids`; raise if a span is not `tokens_per_image` long."""
    is_image = (input_ids == image_token_id).long()
    total = int(is_image.sum())
    if total == 0:
        return 0
    padded = torch.nn.functional.pad(is_image, (1, 1))
    edges = padded[:, 1:] - padded[:, :-1]
    starts = (edges == 1).nonzero()[:, 1]
    ends = (edges == -1).nonzero()[:, 1]
    lengths = ends - starts
    if (lengths != tokens_per_image).any():
        raise ValueError(
            f"Every image span in input_ids must hold exactly tokens_per_image={tokens_per_image} image tokens "
            f"(id {image_token_id}); found spans of lengths {sorted(set(lengths.tolist()))}. Build inputs with "
            "MMARProcessor so that each image token expands to the right number of tokens."
        )
    return total // tokens_per_image


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, image_size: int) -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must have shape [num_images, channels, height, width], got {tuple(pixel_values.shape)}"
        )
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a floating-point tensor in [-1, 1], got dtype {pixel_values.dtype}")
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[1]} channels but the model expects num_channels={num_channels}"
        )
    if tuple(pixel_values.shape[2:]) != (image_size, image_size):
        raise ValueError(
            f"pixel_values images are {tuple(pixel_values.shape[2:])} but the model expects "
            f"image_size={image_size} ({image_size}x{image_size}); resize them with MMARImageProcessor"
        )
    if not torch.isfinite(pixel_values).all():
        raise ValueError("pixel_values contains NaN or inf values")


def check_image_tokens(image_tokens: torch.Tensor, tokens_per_image: int, token_dim: int) -> None:
    if image_tokens.ndim != 3 or tuple(image_tokens.shape[1:]) != (tokens_per_image, token_dim):
        raise ValueError(
            f"image_tokens must have shape [num_images, {tokens_per_image}, {token_dim}], got {tuple(image_tokens.shape)}"
        )
    if not torch.isfinite(image_tokens).all():
        raise ValueError("image_tokens contains NaN or inf values")


def check_image_mask(image_mask: torch.Tensor, num_images: int, tokens_per_image: int) -> None:
    if not isinstance(image_mask, torch.Tensor):
        raise ValueError(f"image_mask must be a torch.Tensor, got {type(image_mask).__name__}")
    if image_mask.dtype != torch.bool:
        raise ValueError(f"image_mask must be a bool tensor (True = hidden, diffusion target), got {image_mask.dtype}")
    if tuple(image_mask.shape) != (num_images, tokens_per_image):
        raise ValueError(
            f"image_mask must have shape [num_images, tokens_per_image] = [{num_images}, {tokens_per_image}], "
            f"got {tuple(image_mask.shape)}"
        )
