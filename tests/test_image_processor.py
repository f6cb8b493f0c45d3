"""MMARImageProcessor on real digits and PIL images of every mode: shapes, [-1, 1] range, exact inverse, save / load."""

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor

from processors import MMARImageProcessor

PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr"]
SIZES = [(8, 8), (5, 7), (13, 20), (64, 48)]  # (width, height)


def digits_uint8(digits, count=16):
    """sklearn digits [N, 8, 8] in 0..16 -> uint8 0..255 (what training.data stores as "L" images)."""
    return np.rint(digits[0][:count] * (255.0 / 16.0)).astype(np.uint8)


@pytest.fixture(scope="module")
def gray():
    return MMARImageProcessor(image_size=8, num_channels=1)


@pytest.fixture(scope="module")
def rgb():
    return MMARImageProcessor(image_size=16, num_channels=3)


def test_real_digits_round_trip_exactly(gray, digits):
    pixels = digits_uint8(digits)
    pixel_values = gray([PIL.Image.fromarray(p) for p in pixels]).pixel_values
    assert pixel_values.shape == (16, 1, 8, 8) and pixel_values.dtype == torch.float32
    assert pixel_values.min() == -1.0 and pixel_values.max() == 1.0  # digits use the full ink range
    as_np = gray.postprocess(pixel_values, output_type="np")  # floats in [0, 1], as the pipeline returns
    assert as_np.dtype == np.float32 and as_np.shape == (16, 8, 8, 1)
    np.testing.assert_array_equal(np.rint(as_np[..., 0] * 255).astype(np.uint8), pixels)
    images = gray.postprocess(pixel_values, output_type="pil")
    assert [image.mode for image in images] == ["L"] * 16
    np.testing.assert_array_equal(np.stack([np.asarray(image) for image in images]), pixels)
    as_pt = gray.postprocess(pixel_values, output_type="pt")
    torch.testing.assert_close(as_pt[:, 0], torch.from_numpy(pixels / 255.0).float())


def test_array_layouts_and_types_give_the_same_pixels(gray, digits):
    pixels = digits_uint8(digits, count=4)
    reference = gray([PIL.Image.fromarray(p) for p in pixels]).pixel_values
    variants = {
        "list of HW uint8": list(pixels),
        "NHWC uint8 batch": pixels[..., None],
        "NCHW torch batch": torch.from_numpy(pixels[:, None]),
        "list of CHW torch": [torch.from_numpy(p[None]) for p in pixels],
        "list of HWC float [0, 1]": [p[..., None] / 255.0 for p in pixels],
        "uint16": [p.astype(np.uint16) * 257 for p in pixels],
        "int64 0..255": list(pixels.astype(np.int64)),
        "datasets column": datasets.Dataset.from_dict(
            {"image": [PIL.Image.fromarray(p) for p in pixels]}, features=datasets.Features(image=datasets.Image())
        )["image"],
    }
    for name, images in variants.items():
        torch.testing.assert_close(gray(images).pixel_values, reference, msg=name)


def test_float_digits_match_their_quantised_uint8(gray, digits):
    floats = digits[0][:4] / 16.0  # [0, 1]
    quantised = np.rint(floats * 255).astype(np.uint8)
    torch.testing.assert_close(gray(list(floats)).pixel_values, gray(list(quantised)).pixel_values)


@pytest.mark.parametrize("mode", PIL_MODES)
@pytest.mark.parametrize("size", SIZES)
def test_every_pil_mode_and_size(gray, rgb, mode, size):
    image = PIL.Image.new(mode, size)
    for processor, channels in ((gray, 1), (rgb, 3)):
        pixel_values = processor(image).pixel_values
        side = processor.image_size
        assert pixel_values.shape == (1, channels, side, side)
        assert pixel_values.min() >= -1.0 and pixel_values.max() <= 1.0


def test_mode_conversions_keep_the_meaning_of_pixels(gray, rgb):
    def value(image, processor=gray):
        return processor(image).pixel_values.mean().item()

    assert value(PIL.Image.new("RGBA", (8, 8), (0, 0, 0, 0))) == 1.0  # transparent -> white background
    assert value(PIL.Image.new("RGBA", (8, 8), (0, 0, 0, 255))) == -1.0  # opaque black stays black
    assert value(PIL.Image.new("LA", (8, 8), (0, 0))) == 1.0
    assert value(PIL.Image.new("I;16", (8, 8), 65535)) == 1.0  # 16-bit white
    assert value(PIL.Image.new("I;16", (8, 8), 32896)) == pytest.approx(0.0, abs=0.01)  # 16-bit mid-gray
    assert value(PIL.Image.new("F", (8, 8), 255.0)) == 1.0
    assert value(PIL.Image.new("1", (8, 8), 1)) == 1.0
    assert value(PIL.Image.new("CMYK", (8, 8), (0, 0, 0, 0))) == 1.0  # no ink = white
    red = PIL.Image.new("RGB", (8, 8), (255, 0, 0))
    assert value(red) == pytest.approx(76 / 127.5 - 1, abs=1e-6)  # ITU-R 601 luma of pure red
    np.testing.assert_allclose(rgb(red).pixel_values[0, :, 0, 0].numpy(), [1.0, -1.0, -1.0])
    palette = PIL.Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    torch.testing.assert_close(rgb(palette).pixel_values, rgb(red).pixel_values)
    palette.info["transparency"] = 1
    assert value(palette, rgb) == 1.0  # transparent palette entry -> white


def test_resize_then_center_crop_keeps_the_aspect_ratio():
    # 24x8 image: black | white | black thirds. Cropping the center keeps only the white third.
    stripes = np.zeros((8, 24), np.uint8)
    stripes[:, 8:16] = 255
    cropped = MMARImageProcessor(image_size=8)(stripes).pixel_values
    assert cropped.shape == (1, 1, 8, 8) and (cropped == 1.0).all()
    squashed = MMARImageProcessor(image_size=8, do_center_crop=False)(stripes).pixel_values
    assert squashed.shape == (1, 1, 8, 8) and squashed[0, 0, :, 0].max() < 0 and squashed[0, 0, :, 4].min() > 0
    # The CLIP / Llava convention spelled out, and a folder saved with the older square `size` mean the same.
    spelled_out = MMARImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    older_folder = MMARImageProcessor(size={"height": 8, "width": 8}, crop_size={"height": 8, "width": 8})
    assert older_folder.size.shortest_edge == 8
    for processor in (spelled_out, older_folder):
        torch.testing.assert_close(processor(stripes).pixel_values, cropped)


def test_upscaling_digits(digits):
    processor = MMARImageProcessor(image_size=32, resample=PIL.Image.Resampling.NEAREST)
    pixels = digits_uint8(digits, count=2)
    pixel_values = processor(list(pixels)).pixel_values
    assert pixel_values.shape == (2, 1, 32, 32)
    upscaled = np.stack([np.asarray(image) for image in processor.postprocess(pixel_values)])
    np.testing.assert_array_equal(upscaled[:, ::4, ::4], pixels)  # every source pixel became a 4x4 block


def test_rgb_round_trip():
    image = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    processor = MMARImageProcessor(image_size=16, num_channels=3)
    pixel_values = processor(PIL.Image.fromarray(image)).pixel_values
    assert pixel_values.shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(np.asarray(processor.postprocess(pixel_values)[0]), image)
    assert processor.postprocess(pixel_values)[0].mode == "RGB"


def test_postprocess_clamps_and_accepts_single_images(gray):
    out_of_range = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).repeat(8, 2)[:, :8].reshape(1, 8, 8)
    image = gray.postprocess(out_of_range, output_type="np")  # [C, H, W] -> batch of one
    assert image.shape == (1, 8, 8, 1) and image.min() == 0.0 and image.max() == 1.0
    assert set(np.unique(image).tolist()) == {0.0, 0.5, 1.0}


def test_save_and_load_with_autoimageprocessor(tmp_path, digits):
    processor = MMARImageProcessor(image_size=12, num_channels=3, resample=PIL.Image.Resampling.BILINEAR)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is MMARImageProcessor
    assert (loaded.image_size, loaded.num_channels, loaded.resample) == (12, 3, PIL.Image.Resampling.BILINEAR)
    images = list(digits_uint8(digits, count=3))
    torch.testing.assert_close(loaded(images).pixel_values, processor(images).pixel_values)


def test_image_file_paths(tmp_path, gray, digits):
    pixels = digits_uint8(digits, count=2)
    paths = []
    for index, (pixel, suffix) in enumerate(zip(pixels, ("png", "bmp"))):
        paths.append(tmp_path / f"digit{index}.{suffix}")
        PIL.Image.fromarray(pixel).save(paths[-1])
    from_files = gray([str(paths[0]), paths[1]]).pixel_values
    torch.testing.assert_close(from_files, gray(list(pixels)).pixel_values)
