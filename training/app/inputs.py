"""What a person sends the app, checked and converted before the model sees it.

Every refusal is an `InputError` (a ValueError) whose message says what to change; the page shows it as a
`gr.Error`. Images arrive as gradio gives them (PIL images, or an image editor's
`{"background", "layers", "composite"}` dict) and leave as PIL images the processor takes.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PROMPT_CHARS = 1000
MAX_IMAGE_SIDE = 4096  # larger uploads are refused before they are decoded into memory


class InputError(ValueError):
    """Bad input from the page or an API client; the message is shown to the person as it is."""


def check_prompt(prompt, allow_empty: bool = False, what: str = "prompt",
                 hint: str = ", e.g. one of the examples below the prompt box") -> str:
    """The text with its whitespace normalised; `what` is what the page calls it (prompt, question)."""
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InputError(f"The {what} must be text, got {type(prompt).__name__}")
    prompt = " ".join(prompt.split())
    if not prompt and not allow_empty:
        raise InputError(f"Type a {what} first{hint}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"The {what} is {len(prompt)} characters long; keep it under {MAX_PROMPT_CHARS}")
    return prompt


def check_number(label: str, value, low: float, high: float, integer: bool = False):
    """`value` (a slider's or number box's) as int / float within [low, high]; `label` is what the page calls it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{label} must be a number, got {value!r:.40}")
    if not math.isfinite(value):
        raise InputError(f"{label} must be a finite number, got {value}")
    if integer:
        if value != int(value):
            raise InputError(f"{label} must be a whole number, got {value}")
        value = int(value)
    if not low <= value <= high:
        raise InputError(f"{label} must be between {low:g} and {high:g}, got {value:g}")
    return value


def open_image(value, what: str = "image") -> Image.Image:
    """A PIL image from what gradio hands over: a PIL image, an array, or a file path."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, np.ndarray):
        try:
            image = Image.fromarray(value)
        except (TypeError, ValueError) as error:
            raise InputError(f"The {what} is an array PIL cannot read as an image ({value.dtype}, shape "
                             f"{value.shape})") from error
    elif isinstance(value, str):
        try:
            with Image.open(value) as opened:
                _check_size(opened, what)
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as error:
            raise InputError(f"The {what} is not an image file this app can read (PNG, JPEG, WebP, GIF, BMP, "
                             "TIFF)") from error
    else:
        raise InputError(f"The {what} is of an unsupported kind ({type(value).__name__}); upload a PNG or JPEG")
    _check_size(image, what)
    return image


def _check_size(image: Image.Image, what: str) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise InputError(f"The {what} is empty ({width}x{height} pixels)")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise InputError(f"The {what} is {width}x{height} pixels; upload one at most {MAX_IMAGE_SIDE} pixels a side")


def editor_image(value, what: str = "image") -> Image.Image:
    """The picture an image editor shows (its composite: the background with everything drawn on it)."""
    if isinstance(value, dict):
        composite = value.get("composite")
        if composite is None:
            composite = value.get("background")
        if composite is None:
            raise InputError(f"Upload or draw an {what} first")
        return open_image(composite, what)
    if value is None:
        raise InputError(f"Upload or draw an {what} first")
    return open_image(value, what)


def check_not_blank(image: Image.Image, what: str = "image") -> None:
    """A canvas of one colour holds nothing to describe."""
    low, high = image.convert("L").getextrema()
    if low == high:
        raise InputError(f"The {what} is blank (every pixel has the same colour): draw something or upload a picture")


def editor_mask(value) -> tuple[Image.Image, Image.Image]:
    """(background image, painted mask as an "L" image of the same size, 255 = painted) from an image editor."""
    if not isinstance(value, dict) or value.get("background") is None:
        raise InputError("Upload the image to inpaint first, then paint over the part to regenerate")
    background = open_image(value["background"], "image to inpaint")
    mask = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or []:
        layer = open_image(layer, "mask layer")
        if layer.size != background.size:
            layer = layer.resize(background.size, Image.Resampling.NEAREST)
        alpha = np.asarray(layer.convert("RGBA"))[..., 3]
        mask |= alpha > 0
    if not mask.any():
        raise InputError("Paint over the part of the image to regenerate (the mask is empty)")
    return background, Image.fromarray(np.uint8(mask) * 255, mode="L")


def square_crop(image: Image.Image) -> Image.Image:
    """The centred square of an image (the processor's shortest-edge resize and centre crop keep the same part)."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def mask_at_resolution(mask: Image.Image, size: int) -> np.ndarray:
    """A painted mask -> [size, size] floats in {0, 1}: a pixel is masked when any painted pixel falls inside it."""
    cropped = square_crop(mask.convert("L"))
    coverage = np.asarray(cropped.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    return (coverage > 0).astype(np.float32)


def enlarge(image: Image.Image, min_side: int = 256) -> Image.Image:
    """Small images (8x8 digits) scaled up by a whole factor with sharp pixels, so a person can see them; the
    factor is whole, so area-averaging the result back down gives the original pixels exactly."""
    factor = max(1, min_side // max(1, min(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


__all__ = ["InputError", "check_not_blank", "check_number", "check_prompt", "editor_image", "editor_mask", "enlarge",
           "mask_at_resolution", "open_image", "square_crop"]
