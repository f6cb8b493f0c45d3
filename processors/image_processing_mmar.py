"""MMARImageProcessor: any image -> `pixel_values` [N, C, S, S] in [-1, 1] on transformers' PIL backend, and back.

Every input (PIL image of any mode, numpy array, torch tensor, file path) is first turned into an 8-bit PIL image in
the model's mode (`num_channels` 1 -> "L", 3 -> "RGB"), then resized (shortest edge), center-cropped, rescaled and
normalised by `PilBackend`'s own `_preprocess`, with the CLIP / Llava convention for `size` and `crop_size`. `postprocess` inverts the rescale/normalisation exactly, so `postprocess(preprocess(x))`
returns an 8-bit image at the processor's size unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import PIL.Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict, load_image
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType, is_torch_available

if is_torch_available():
    import torch

# Float images are accepted in [0, 1]; this much rounding noise outside the range is clipped instead of rejected.
FLOAT_RANGE_TOLERANCE = 1e-3
# Transparent pixels are shown over white, as image viewers do.
BACKGROUND_WHITE = (255, 255, 255, 255)
OUTPUT_TYPES = ("pil", "np", "pt")
PLAUSIBLE_CHANNELS = (1, 3, 4)  # gray, RGB, RGBA


class MMARImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    num_channels (`int`, *optional*, defaults to `self.num_channels`):
        Channels of `pixel_values`: 1 converts every image to grayscale ("L"), 3 to "RGB".
    """

    num_channels: int


def _is_torch_tensor(value) -> bool:
    return is_torch_available() and isinstance(value, torch.Tensor)


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


class MMARImageProcessor(PilBackend):
    r"""
    Prepares images for MMAR: `pixel_values` of shape [N, num_channels, H, W], float32 in [-1, 1].

    Args:
        image_size (`int`, *optional*): Side of the square output; shorthand for `size={"shortest_edge": s}` and
            `crop_size={"height": s, "width": s}` (`size={"height": s, "width": s}` with `do_center_crop=False`).
        num_channels (`int`, *optional*, defaults to 1): 1 = grayscale ("L"), 3 = RGB.
        size (`dict`, *optional*, defaults to `{"shortest_edge": 8}`): Resize target; the shortest edge keeps the
            aspect ratio, `{"height", "width"}` stretches.
        crop_size (`dict`, *optional*, defaults to `{"height": 8, "width": 8}`): Output size of the center crop.
        resample (`PILImageResampling`, *optional*, defaults to `BICUBIC`): Resampling filter of the resize.
        do_center_crop (`bool`, *optional*, defaults to `True`): Crop the center to `crop_size` after the resize.
        image_mean, image_std (`float` or `list[float]`, *optional*, defaults to 0.5): (x / 255 - mean) / std; 0.5
            maps to [-1, 1].

    Inputs: PIL images (modes 1, L, P, RGB, RGBA, LA, CMYK, I;16, I, F, ...; transparency is composited on white),
    numpy arrays (HW, HWC or CHW; uint8, uint16, bool, or float in [0, 1]; channels-last is assumed when the layout
    is ambiguous, pass `input_data_format` to override), torch tensors (same rules, channels-first assumed),
    local image file paths, a 4-D batch, or a list of any of these.

    ```python
    processor = MMARImageProcessor(image_size=8, num_channels=1)
    pixel_values = processor(images).pixel_values            # [N, 1, 8, 8] in [-1, 1]
    pil_images = processor.postprocess(pixel_values)         # back to 8x8 "L" images
    ```
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = MMARImageProcessorKwargs
    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": 8}
    crop_size = {"height": 8, "width": 8}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = 0.5
    image_std = 0.5
    do_convert_rgb = False  # mode conversion is done by `num_channels`, for every PIL mode
    num_channels = 1
    return_tensors = "pt"

    def __init__(self, image_size: int | None = None, **kwargs: Unpack[MMARImageProcessorKwargs]):
        if image_size is not None:
            if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
                raise ValueError(f"MMARImageProcessor image_size must be a positive integer, got {image_size!r}")
            if kwargs.get("size") is not None or kwargs.get("crop_size") is not None:
                raise ValueError("Pass either image_size or size / crop_size to MMARImageProcessor, not both")
            square = {"height": image_size, "width": image_size}
            if kwargs.get("do_center_crop", self.do_center_crop):
                kwargs.update(size={"shortest_edge": image_size}, crop_size=square)
            else:
                kwargs.update(size=square, crop_size=square)
        size, crop_size = kwargs.get("size"), kwargs.get("crop_size")
        if (kwargs.get("do_center_crop", True) and isinstance(size, dict) and set(size) == {"height", "width"}
                and size == crop_size and size["height"] == size["width"]):
            # Folders saved before the shortest-edge convention meant "cover the square, crop the center".
            kwargs["size"] = {"shortest_edge": size["height"]}
        super().__init__(**kwargs)
        if self.num_channels not in (1, 3):
            raise ValueError(
                f"MMARImageProcessor num_channels must be 1 (grayscale) or 3 (RGB), got {self.num_channels}"
            )
        self._check_output_size(self.do_center_crop, self.size, self.crop_size)

    @staticmethod
    def _check_output_size(do_center_crop: bool, size: SizeDict, crop_size: SizeDict) -> None:
        """Batches stack into one tensor: every image must come out at one fixed size."""
        output = crop_size if do_center_crop else size
        if not (output.height and output.width):
            raise ValueError(
                f"MMARImageProcessor needs a fixed output size: crop_size {{'height': h, 'width': w}} with "
                f"do_center_crop=True, or size {{'height': h, 'width': w}} without it; got size={dict(size)}, "
                f"crop_size={dict(crop_size)}, do_center_crop={do_center_crop}"
            )

    @property
    def image_size(self) -> int:
        """Side of the (square) output images."""
        return (self.crop_size if self.do_center_crop else self.size).height

    # ------------------------------------------------------------------ inputs
    def fetch_images(self, image_url_or_urls):
        """Load file paths (and URLs) into PIL images; anything that is not a path is returned unchanged."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if not _is_path(image_url_or_urls):
            return image_url_or_urls
        path = os.fspath(image_url_or_urls)
        try:
            if path.startswith(("http://", "https://")):
                image = load_image(path)
            else:
                if not os.path.isfile(path):
                    raise FileNotFoundError("no such file")
                with PIL.Image.open(path) as opened:
                    opened.load()  # decode now: a truncated or corrupt file fails here, not deep in the pipeline
                    image = opened.copy()
        except Exception as error:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
            raise ValueError(f"Could not read the image file {path!r}: {error}") from error
        return image

    def make_image_list(self, images: ImageInput) -> list:
        """Flatten `images` (one image, a 4-D batch, a list, or a list of per-sample lists) into a list of images.

        Raises `ValueError` for an empty list, an object that is not an image, or an array of the wrong rank.
        """
        flat: list = []
        self._flatten(images, flat, depth=0)
        if not flat:
            raise ValueError("MMARImageProcessor got an empty image list; pass at least one image")
        return flat

    def _flatten(self, images, flat: list, depth: int):
        # Any sequence of images counts as a list: a `datasets` column (`dataset["image"]`) is one.
        if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
            if depth >= 2:
                raise ValueError("Images nested deeper than a list of per-sample lists are not supported")
            for item in images:
                self._flatten(item, flat, depth + 1)
        elif isinstance(images, np.ndarray) or _is_torch_tensor(images):
            if images.ndim == 4:
                flat.extend(images[i] for i in range(images.shape[0]))
            elif images.ndim in (2, 3):
                flat.append(images)
            else:
                raise ValueError(
                    f"Image arrays must have 2 (HW), 3 (HWC / CHW) or 4 (a batch) dimensions, got shape "
                    f"{tuple(images.shape)}"
                )
        elif isinstance(images, PIL.Image.Image) or _is_path(images):
            flat.append(images)
        else:
            raise ValueError(
                f"Unsupported image type {type(images).__name__}: expected a PIL image, numpy array, torch tensor or "
                "image file path (or a list of them)"
            )

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        return self.make_image_list(self.fetch_images(images))

    def process_image(
        self,
        image,
        num_channels: int | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> np.ndarray:
        """One raw image -> uint8 array [C, H, W] in the model's mode (the PIL backend's working format)."""
        num_channels = self.num_channels if num_channels is None else num_channels
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 (grayscale) or 3 (RGB), got {num_channels}")
        pil_image = self.fetch_images(image)
        if not isinstance(pil_image, PIL.Image.Image):
            pil_image = array_to_pil(pil_image, input_data_format)
        if pil_image.width == 0 or pil_image.height == 0:
            raise ValueError(f"Got a zero-size image ({pil_image.width}x{pil_image.height} pixels)")
        pil_image = convert_mode(pil_image, "L" if num_channels == 1 else "RGB")
        array = np.asarray(pil_image)
        return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)

    # ------------------------------------------------------------------ resize / crop / normalise
    def _preprocess(self, images, do_center_crop: bool, size: SizeDict, crop_size: SizeDict, **kwargs):
        self._check_output_size(do_center_crop, size, crop_size)
        return super()._preprocess(images, do_center_crop=do_center_crop, size=size, crop_size=crop_size, **kwargs)

    # ------------------------------------------------------------------ outputs
    def postprocess(self, images, output_type: str = "pil"):
        """Invert `preprocess`: `pixel_values` [N, C, H, W] (or [C, H, W]) in normalised space -> images.

        Args:
            images: torch tensor or numpy array; values are un-normalised and clamped to [0, 1].
            output_type: the output types of image generation (`model.generate`, `MMARPipeline`): "pil" (list of
                PIL images, mode "L" or "RGB"), "np" (float32 array [N, H, W, C] in [0, 1]) or "pt" (float tensor
                [N, C, H, W] in [0, 1]). Neither float type is quantised; PIL images are 8-bit.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if _is_torch_tensor(images):
            array = images.detach().to("cpu", dtype=torch.float32).numpy()
        elif isinstance(images, np.ndarray):
            array = images.astype(np.float32)
        else:
            raise ValueError(f"postprocess expects a torch tensor or numpy array, got {type(images).__name__}")
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[1] not in (1, 3):
            raise ValueError(f"postprocess expects pixel values [N, C, H, W] with C in (1, 3), got {array.shape}")
        channels = array.shape[1]
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32).reshape(-1, 1, 1)
            std = np.asarray(self.image_std, dtype=np.float32).reshape(-1, 1, 1)
            if mean.shape[0] not in (1, channels) or std.shape[0] not in (1, channels):
                raise ValueError(f"image_mean / image_std do not match {channels} channels")
            array = array * std + mean
        if self.do_rescale:
            array = array * (self.rescale_factor * 255.0)  # back to [0, 1] whatever the rescale factor
        array = np.clip(array, 0.0, 1.0)
        if output_type == "pt":
            return torch.from_numpy(np.ascontiguousarray(array))
        if output_type == "np":
            return np.ascontiguousarray(array.transpose(0, 2, 3, 1))  # [N, H, W, C]
        uint8 = np.rint(array * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)
        return [PIL.Image.fromarray(image[..., 0] if channels == 1 else image) for image in uint8]


def _channel_axis(shape: tuple[int, ...], input_data_format, channels_first_default: bool) -> int:
    """Return 0 (CHW) or 2 (HWC) for a 3-D image; raise when neither end holds a plausible channel count."""
    if input_data_format is not None:
        return 0 if ChannelDimension(input_data_format) == ChannelDimension.FIRST else 2
    first, last = shape[0] in PLAUSIBLE_CHANNELS, shape[-1] in PLAUSIBLE_CHANNELS
    if first and last:
        return 0 if channels_first_default else 2
    if first or last:
        return 0 if first else 2
    raise ValueError(
        f"Cannot find the channel axis of an image of shape {shape}: expected 1, 3 or 4 channels first or last. "
        "A stack of grayscale images must be 4-D ([N, H, W, 1] or [N, 1, H, W]) or a list of 2-D arrays."
    )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / bool / other integers in 0..255 / floats in [0, 1] -> uint8 with the same meaning."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.rint(array / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"Integer images must be in 0..255 (or uint16), got values in [{low}, {high}]")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("Float images must be finite; got NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < -FLOAT_RANGE_TOLERANCE or high > 1 + FLOAT_RANGE_TOLERANCE:
            raise ValueError(
                f"Float images must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; pass uint8 for 0..255, "
                "or use postprocess() for model outputs in [-1, 1]"
            )
        return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"Unsupported image dtype {array.dtype}")


def array_to_pil(image, input_data_format=None) -> PIL.Image.Image:
    """A numpy array / torch tensor image (HW, HWC or CHW) -> PIL image ("L", "RGB" or "RGBA")."""
    channels_first_default = _is_torch_tensor(image)
    if _is_torch_tensor(image):
        image = image.detach().cpu()
        image = (image.float() if image.is_floating_point() else image).numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"Unsupported image type {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise ValueError(f"An image array must have 2 or 3 dimensions, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"Got a zero-size image array of shape {image.shape}")
    if image.ndim == 3:
        if _channel_axis(image.shape, input_data_format, channels_first_default) == 0:
            image = np.moveaxis(image, 0, -1)
        if image.shape[-1] not in PLAUSIBLE_CHANNELS:
            raise ValueError(f"Images must have 1, 3 or 4 channels, got {image.shape[-1]} (shape {image.shape})")
        if image.shape[-1] == 1:
            image = image[..., 0]
    return PIL.Image.fromarray(np.ascontiguousarray(_to_uint8(image)))


def convert_mode(image: PIL.Image.Image, mode: str) -> PIL.Image.Image:
    """Any PIL mode -> "L" or "RGB": 16-bit and float grayscale are rescaled to 8 bits, alpha goes over white."""
    source = image.mode
    if source.startswith("I;16") or source == "I":
        values = np.asarray(image).astype(np.float64)
        if source.startswith("I;16") or values.max(initial=0) > 255:  # 16-bit range
            values = values / 257.0
        image = PIL.Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8))
    elif source == "F":  # PIL's float images use the 0..255 scale (what convert("F") produces)
        image = PIL.Image.fromarray(np.rint(np.clip(np.asarray(image), 0, 255)).astype(np.uint8))
    elif source in ("RGBA", "LA", "PA", "RGBa", "La") or (source == "P" and "transparency" in image.info):
        background = PIL.Image.new("RGBA", image.size, BACKGROUND_WHITE)
        image = PIL.Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    elif source not in ("L", "RGB"):  # 1, P, CMYK, YCbCr, LAB, HSV, ...
        image = image.convert("L" if source == "1" else "RGB")
    return image if image.mode == mode else image.convert(mode)


__all__ = ["MMARImageProcessor", "MMARImageProcessorKwargs", "array_to_pil", "convert_mode"]
