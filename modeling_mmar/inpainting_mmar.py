"""Inpainting inputs for the masked-AR sampler: the given image's tokens and which of them to regenerate.

The mask rule: `mask_image` is at image resolution, white (>= 0.5) = regenerate. A token is regenerated when **any**
pixel of the image cell it covers (image_size / tokens_per_side pixels square) is masked, so a mask never leaves a
partly masked cell unchanged; every other token is kept exactly.
"""

from __future__ import annotations

import numpy as np
import torch

MASK_THRESHOLD = 0.5


def _mask_as_tensor(mask_image) -> torch.Tensor:
    if hasattr(mask_image, "convert") and hasattr(mask_image, "size"):  # a PIL image: luminance, 255 = white
        return torch.from_numpy(np.asarray(mask_image.convert("L"), dtype=np.float32) / 255.0)
    if isinstance(mask_image, (list, tuple)) and mask_image and all(hasattr(m, "convert") for m in mask_image):
        return torch.stack([_mask_as_tensor(m) for m in mask_image])
    if isinstance(mask_image, np.ndarray):
        mask_image = torch.from_numpy(mask_image)
    if not isinstance(mask_image, torch.Tensor):
        raise ValueError(
            "mask_image must be a PIL image (or a list of them), a numpy array or a torch.Tensor at image "
            f"resolution (white / 1 = regenerate), got {type(mask_image).__name__}"
        )
    if mask_image.dtype == torch.bool:
        return mask_image.float()
    if not (mask_image.is_floating_point() or mask_image.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise ValueError(f"mask_image must hold numbers or booleans, got dtype {mask_image.dtype}")
    return mask_image.float()


def token_mask_from_mask_image(mask_image, config, batch_size: int) -> torch.Tensor:
    """`mask_image` ([H, W], [N, H, W] or [N, 1, H, W] with N in {1, batch_size}; values in [0, 1]) -> which tokens to
    regenerate, [batch_size, tokens_per_image] bool (any masked pixel in a token's cell masks the token)."""
    mask = _mask_as_tensor(mask_image).detach().cpu()
    size = config.image_size
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    elif mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or tuple(mask.shape[1:]) != (size, size):
        raise ValueError(
            f"mask_image must be one grayscale mask per image at image resolution ({size}x{size}): shaped [H, W], "
            f"[N, H, W] or [N, 1, H, W]; got shape {tuple(mask.shape)}"
        )
    if mask.shape[0] not in (1, batch_size):
        raise ValueError(f"mask_image holds {mask.shape[0]} masks for {batch_size} images: give one shared mask or "
                         "one per image")
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError("mask_image values must be finite and in [0, 1] (PIL masks: 0 = keep, 255 = regenerate)")
    side = config.tokens_per_side
    cell = size // side
    masked_pixels = (mask >= MASK_THRESHOLD).float()
    per_token = torch.nn.functional.max_pool2d(masked_pixels[:, None], kernel_size=cell, stride=cell)  # "any" rule
    return per_token.flatten(1).bool().expand(batch_size, -1).clone()


def pixel_mask_from_token_mask(token_mask: torch.Tensor, config) -> torch.Tensor:
    """[B, L] bool -> [B, 1, image_size, image_size] bool: the pixels each regenerated token covers."""
    side = config.tokens_per_side
    cell = config.image_size // side
    grid = token_mask.view(-1, 1, side, side)
    return grid.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)


def check_image_for_inpainting(image, mask_image, num_prompts: int, num_images_per_prompt: int) -> None:
    if (image is None) != (mask_image is None):
        raise ValueError("inpainting needs both `image` (the processor's pixel_values in [-1, 1]) and `mask_image`"
                         if image is not None else "mask_image was given without the `image` it masks")
    if image is None:
        return
    if not isinstance(image, torch.Tensor):
        raise ValueError("image must be the processor's pixel_values: a torch.Tensor [N, C, H, W] in [-1, 1] "
                         f"(MMARInpaintPipeline takes PIL images), got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] not in (1, num_prompts, num_prompts * num_images_per_prompt):
        raise ValueError(f"image holds {image.shape[0]} images for {num_prompts} prompts x {num_images_per_prompt} "
                         "images per prompt: give one image, one per prompt or one per generated image")


def expand_images(image: torch.Tensor, num_prompts: int, num_images_per_prompt: int) -> torch.Tensor:
    """One image per generated image, prompt-major (as the sampler's rows are)."""
    if image.shape[0] == 1:
        return image.expand(num_prompts * num_images_per_prompt, -1, -1, -1)
    if image.shape[0] == num_prompts:
        return image.repeat_interleave(num_images_per_prompt, dim=0)
    return image


__all__ = ["token_mask_from_mask_image", "pixel_mask_from_token_mask", "MASK_THRESHOLD"]
