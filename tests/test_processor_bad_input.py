"""Bad input to MMARImageProcessor / MMARProcessor: a ValueError naming the problem, never a crash deep inside."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config

from processors import MMARImageProcessor, MMARProcessor, build_tokenizer

CORPUS = ["a handwritten seven", "What digit is this?", "seven"]
DIGIT = np.full((8, 8), 200, dtype=np.uint8)


@pytest.fixture(scope="module")
def processor():
    return MMARProcessor.from_model_config(tiny_config(), build_tokenizer(CORPUS))


@pytest.mark.parametrize(
    "text, images, message",
    [
        ("<img><img>What digit is this?", [DIGIT], "2 <img> tokens .* 1 images"),
        ("What digit is this?", [DIGIT], "0 <img> tokens .* 1 images"),
        (["<img>seven", "seven"], [DIGIT, DIGIT], r"per sample: \[1, 0\]"),
        ("<img>What digit is this?", None, "1 <img> tokens .* 0 images"),
    ],
)
def test_image_count_must_match_placeholders(processor, text, images, message):
    with pytest.raises(ValueError, match=message):
        processor(images=images, text=text)


def test_empty_image_list(processor):
    with pytest.raises(ValueError, match="empty image list"):
        processor.image_processor([])
    with pytest.raises(ValueError, match="empty image list"):
        processor(images=[], text="seven")


@pytest.mark.parametrize(
    "image",
    [PIL.Image.new("L", (0, 5)), np.zeros((0, 8), np.uint8), np.zeros((8, 0, 3), np.uint8), torch.zeros(1, 8, 0)],
    ids=["pil", "numpy-2d", "numpy-hwc", "torch-chw"],
)
def test_zero_size_image(processor, image):
    with pytest.raises(ValueError, match="zero-size"):
        processor(images=[image], text="<img>")


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros(8, np.uint8), "2 \\(HW\\), 3 \\(HWC / CHW\\) or 4"),
        (np.zeros((1, 1, 1, 8, 8), np.uint8), "2 \\(HW\\), 3 \\(HWC / CHW\\) or 4"),
        (np.zeros((5, 8, 8), np.uint8), "channel axis"),  # a stack of 5 gray digits without a channel axis
        (np.zeros((8, 8, 2), np.uint8), "channel axis"),
    ],
    ids=["1d", "5d", "ambiguous-stack", "2-channels"],
)
def test_wrong_dimensional_arrays(processor, image, message):
    with pytest.raises(ValueError, match=message):
        processor.image_processor(image)


@pytest.mark.parametrize(
    "image, message",
    [
        ({"pixels": DIGIT}, "Unsupported image type dict"),
        (7, "Unsupported image type int"),
        ([DIGIT, None], "Unsupported image type NoneType"),
        (np.full((8, 8), 16.0), r"Float images must be in \[0, 1\]"),  # raw sklearn digits (0..16) passed as floats
        (np.full((8, 8), -1.0), r"Float images must be in \[0, 1\]"),  # model-space pixel values passed back in
        (np.full((8, 8), np.nan), "finite"),
        (np.full((8, 8), 300, dtype=np.int32), "0..255"),
        (np.array([["a"] * 8] * 8), "dtype"),
    ],
    ids=["dict", "int", "none-in-list", "float-0-16", "float-negative", "nan", "int-300", "strings"],
)
def test_non_images(processor, image, message):
    with pytest.raises(ValueError, match=message):
        processor.image_processor(image)


def test_unreadable_and_corrupt_files(processor, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    truncated = tmp_path / "truncated.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    for path in (garbage, truncated, tmp_path / "missing.png", tmp_path):
        with pytest.raises(ValueError, match="Could not read the image file"):
            processor(images=[str(path)], text="<img>")


def test_truncation_never_cuts_an_image_span(processor):
    text = "<img>What digit is this? seven"
    full = processor(images=[DIGIT], text=text)["input_ids"].shape[1]  # 1 + 18 + 6
    span_end = 1 + processor.num_image_tokens + 2
    kept = processor(images=[DIGIT], text=text, truncation=True, max_length=span_end + 1)["input_ids"]
    assert kept.shape[1] == span_end + 1 < full  # text was cut, the span is whole
    assert processor.find_image_spans(kept[0]) == [(2, 2 + processor.num_image_tokens)]
    for max_length in (span_end - 1, 5):
        with pytest.raises(ValueError, match="truncation would cut an image"):
            processor(images=[DIGIT], text=text, truncation=True, max_length=max_length)
    with pytest.raises(ValueError, match="does not end with '<boi>'"):
        processor(text="a handwritten seven", generation_mode="image", truncation=True, max_length=3)


def test_generation_mode_misuse(processor):
    with pytest.raises(ValueError, match="text prompts only"):
        processor(images=[DIGIT], text="seven", generation_mode="image")
    with pytest.raises(ValueError, match="contains '<img>'"):
        processor(text="<img>seven", generation_mode="image")
    with pytest.raises(ValueError, match="needs text prompts"):
        processor(generation_mode="image")
    with pytest.raises(ValueError, match="generation_mode must be one of"):
        processor(text="seven", generation_mode="video")
    with pytest.raises(ValueError, match="generation_mode must be one of"):
        processor.apply_chat_template([{"role": "user", "content": "seven"}], generation_mode="video")


def test_bad_text_and_roles(processor):
    with pytest.raises(ValueError, match="text must be a string"):
        processor(text=[1, 2])
    with pytest.raises(ValueError, match="text must be a string"):
        processor(text=[])
    with pytest.raises(ValueError, match="needs text, images, or both"):
        processor()
    with pytest.raises(ValueError, match="roles 'system', 'user' and 'assistant', got 'tool'"):
        processor.apply_chat_template([{"role": "tool", "content": "42"}])


def test_processor_and_config_must_agree():
    tokenizer = build_tokenizer(CORPUS)
    with pytest.raises(ValueError, match="config.image_token_id=9 but the tokenizer gives 5"):
        MMARProcessor.from_model_config(tiny_config(image_token_id=9), tokenizer)
    small = tiny_config(text_config={**tiny_config().text_config.to_dict(), "vocab_size": 10})
    with pytest.raises(ValueError, match="resize the model's token embeddings"):
        MMARProcessor.from_model_config(small, tokenizer)
    with pytest.raises(ValueError, match="num_image_tokens must be a positive integer"):
        MMARProcessor(MMARImageProcessor(), tokenizer, num_image_tokens=0)


def test_bad_image_processor_settings():
    with pytest.raises(ValueError, match="num_channels must be 1"):
        MMARImageProcessor(num_channels=4)
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        MMARImageProcessor(image_size=0)
    with pytest.raises(ValueError, match="either image_size or size"):
        MMARImageProcessor(image_size=8, size={"height": 8, "width": 8})
    with pytest.raises(ValueError, match="fixed output size"):
        MMARImageProcessor(size={"shortest_edge": 8}, do_center_crop=False)  # outputs would differ in shape
    processor = MMARImageProcessor()
    with pytest.raises(ValueError, match="fixed output size"):
        processor(DIGIT, size={"shortest_edge": 8}, do_center_crop=False)
    with pytest.raises(ValueError, match="output_type must be one of"):
        processor.postprocess(torch.zeros(1, 1, 8, 8), output_type="latent")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        processor.postprocess(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="torch tensor or numpy array"):
        processor.postprocess([[0.0]])
