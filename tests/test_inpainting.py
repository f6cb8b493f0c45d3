"""Inpainting with masked autoregression: the given tokens stay exactly, only the masked ones are sampled
(`model.generate(generation_mode="image", image=..., mask_image=...)` and `MMARInpaintPipeline`), on real digits."""

import logging

import numpy as np
import pytest
import torch
from conftest import TINY_VAE, digits_to_pixel_values, tiny_config
from PIL import Image
from test_image_generation import randomize_head
from test_pipeline import CORPUS, build_pipeline, seeds

from modeling_mmar import MMARForConditionalGeneration, MMARInpaintPipeline
from modeling_mmar.inpainting_mmar import token_mask_from_mask_image

FAST = dict(num_iter=4, num_inference_steps=8, show_progress=False)


def lower_half(size=8):
    mask = np.zeros((size, size), dtype=np.float32)
    mask[size // 2:] = 1
    return mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_head(MMARForConditionalGeneration(tiny_config()).eval())


@pytest.fixture(scope="module")
def pipe():
    pipe = build_pipeline()
    pipe = MMARInpaintPipeline(**pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def four_digits(digits):
    images, labels = digits
    return digits_to_pixel_values(images[:4]), labels[:4]


def prompts(model, n=4):
    return torch.tensor([[model.config.text_config.bos_token_id, 10, 11, model.config.boi_token_id]] * n)


def test_the_mask_rule_any_masked_pixel_regenerates_its_token(config):
    mask = np.zeros((8, 8), dtype=np.float32)
    mask[0, 0] = 1.0  # one pixel of the top-left 2x2 cell
    mask[7, 7] = 0.4  # below the 0.5 threshold: kept
    tokens = token_mask_from_mask_image(mask, config, batch_size=2)
    assert tokens.shape == (2, 16) and tokens.dtype == torch.bool
    assert tokens[:, 0].all() and tokens.sum() == 2
    half = token_mask_from_mask_image(Image.fromarray((lower_half() * 255).astype(np.uint8)), config, batch_size=1)
    assert half[0].tolist() == [False] * 8 + [True] * 8  # rows 2-3 of the 4x4 token grid


def test_known_tokens_come_back_exactly_and_only_masked_ones_change(model, four_digits):
    pixel_values, _ = four_digits
    known = model.model.encode_images(pixel_values)
    out = model.generate(prompts(model), generation_mode="image", image=pixel_values, mask_image=lower_half(),
                         generator=seeds(0, 1, 2, 3), output_type="latent", **FAST)
    assert torch.equal(out[:, :8], known[:, :8])  # the upper half's tokens, bit for bit
    assert (out[:, 8:] - known[:, 8:]).abs().amax(dim=(1, 2)).min() > 0  # every image's lower half was sampled

    pixels = model.generate(prompts(model), generation_mode="image", image=pixel_values, mask_image=lower_half(),
                            generator=seeds(0, 1, 2, 3), output_type="pt", **FAST)
    assert torch.equal(pixels[:, :, :4], (pixel_values[:, :, :4] / 2 + 0.5).clamp(0, 1))  # pixel patches: exact


def test_with_a_vae_the_known_latent_tokens_stay_exactly(four_digits):
    torch.manual_seed(0)
    model = randomize_head(MMARForConditionalGeneration(tiny_config(vae_config=dict(TINY_VAE), patch_size=1)).eval())
    pixel_values, _ = four_digits
    known = model.model.encode_images(pixel_values)
    out = model.generate(prompts(model), generation_mode="image", image=pixel_values, mask_image=lower_half(),
                         generator=seeds(0, 1, 2, 3), output_type="latent", **FAST)
    kept = ~token_mask_from_mask_image(lower_half(), model.config, 4)
    assert kept.sum() == 4 * 8 and torch.equal(out[kept], known[kept])
    assert model.generate(prompts(model), generation_mode="image", image=pixel_values, mask_image=lower_half(),
                          output_type="pt", **FAST).shape == (4, 1, 8, 8)


def test_num_iter_runs_over_the_masked_tokens_only(model, four_digits):
    pixel_values, _ = four_digits
    seen = []
    model.generate(prompts(model, 1), generation_mode="image", image=pixel_values[:1], mask_image=lower_half(),
                   num_iter=4, num_inference_steps=4, show_progress=False,
                   callback_on_step_end=lambda step, tokens, masked: seen.append(int(masked.sum())))
    assert seen == [7, 5, 3, 0]  # cosine over the 8 masked tokens (16 known-free would be 15, 11, 6, 0)
    assert model.generate(prompts(model, 1), generation_mode="image", image=pixel_values[:1],
                          mask_image=lower_half(), output_type="latent", show_progress=False,
                          num_inference_steps=4, callback_on_step_end=lambda s, t, m: seen.append(s)) is not None
    assert seen[-1] == 7  # default num_iter = min(64, masked tokens) = 8 steps


def test_one_mask_per_image_and_one_shared(model, four_digits):
    pixel_values, _ = four_digits
    per_image = np.zeros((4, 8, 8), dtype=np.float32)
    per_image[0, 4:] = 1  # lower half
    per_image[1, :, :4] = 1  # left half
    per_image[2, 2:6, 2:6] = 1  # the centre
    per_image[3] = 1  # everything
    known = model.model.encode_images(pixel_values)
    out = model.generate(prompts(model), generation_mode="image", image=pixel_values, mask_image=per_image,
                         generator=seeds(0, 1, 2, 3), output_type="latent", **FAST)
    regenerate = token_mask_from_mask_image(per_image, model.config, 4)
    assert regenerate.sum(-1).tolist() == [8, 8, 4, 16]
    assert torch.equal(out[~regenerate], known[~regenerate])

    # Image i's result depends only on its own image, mask and generator, whatever else is in the batch.
    alone = model.generate(prompts(model, 1), generation_mode="image", image=pixel_values[2:3],
                           mask_image=per_image[2], generator=seeds(2), output_type="latent", **FAST)
    torch.testing.assert_close(alone[0], out[2], rtol=1e-5, atol=1e-5)
    shared = model.generate(prompts(model, 2), generation_mode="image", image=pixel_values[:1],
                            mask_image=per_image[:1], num_images_per_prompt=2, output_type="latent", **FAST)
    assert shared.shape == (4, 16, 4) and torch.equal(shared[:, :8], known[:1, :8].expand(4, -1, -1))


def test_outpainting_is_a_border_mask(model, four_digits):
    pixel_values, _ = four_digits
    border = np.ones((8, 8), dtype=np.float32)
    border[2:6, 2:6] = 0  # keep the centre 4x4 pixels (the middle 2x2 tokens), regenerate the frame around them
    known = model.model.encode_images(pixel_values)
    out = model.generate(prompts(model), generation_mode="image", image=pixel_values, mask_image=border,
                         generator=seeds(0, 1, 2, 3), output_type="latent", **FAST)
    frame = token_mask_from_mask_image(border, model.config, 4)
    assert frame.sum(-1).tolist() == [12] * 4  # the 12 tokens of the 4x4 grid's outer ring
    assert torch.equal(out[~frame], known[~frame])
    assert (out[frame] - known[frame]).abs().amax() > 0


def test_a_full_mask_is_plain_generation(model, four_digits):
    pixel_values, _ = four_digits
    full = model.generate(prompts(model, 2), generation_mode="image", image=pixel_values[:2],
                          mask_image=np.ones((8, 8)), generator=seeds(5, 6), output_type="latent", **FAST)
    plain = model.generate(prompts(model, 2), generation_mode="image", generator=seeds(5, 6), output_type="latent",
                           **FAST)
    assert torch.equal(full, plain)


def test_an_empty_mask_returns_the_image_unchanged_and_says_so(model, four_digits, caplog):
    pixel_values, _ = four_digits
    with caplog.at_level(logging.WARNING):
        out = model.generate(prompts(model, 2), generation_mode="image", image=pixel_values[:2],
                             mask_image=np.zeros((8, 8)), output_type="pt", **FAST)
    assert torch.equal(out, (pixel_values[:2] / 2 + 0.5).clamp(0, 1))
    assert "covers no token" in caplog.text


def test_the_pipeline_completes_pil_digits_with_and_without_a_caption(pipe, digits):
    images, _ = digits
    pictures = [Image.fromarray((images[i] / 16 * 255).astype(np.uint8)) for i in range(2)]
    mask = Image.fromarray((lower_half() * 255).astype(np.uint8))
    completed = pipe(CORPUS[:2], image=pictures, mask_image=mask, generator=seeds(0, 1), num_iter=4,
                     num_inference_steps=8).images
    assert [image.size for image in completed] == [(8, 8), (8, 8)]
    for picture, image in zip(pictures, completed):
        assert np.array_equal(np.asarray(image.convert("L"))[:4], np.asarray(picture)[:4])
    unconditional = pipe("", image=pictures[0], mask_image=mask, num_iter=4, num_inference_steps=8,
                         output_type="np").images
    assert unconditional.shape == (1, 8, 8, 1)


def test_the_inpaint_pipeline_saves_and_loads(pipe, tmp_path, digits):
    pipe.save_pretrained(tmp_path)
    loaded = MMARInpaintPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    picture = Image.fromarray((digits[0][0] / 16 * 255).astype(np.uint8))
    run = dict(image=picture, mask_image=lower_half(), num_iter=4, num_inference_steps=8, output_type="latent")
    torch.testing.assert_close(loaded(CORPUS[0], generator=seeds(3), **run).images,
                               pipe(CORPUS[0], generator=seeds(3), **run).images, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.ones((6, 6)), "image resolution"),
        (np.ones((3, 8, 8)), "3 masks for 4 images"),
        ("lower half", "mask_image must be a PIL image"),
        (np.full((8, 8), 2.0), r"in \[0, 1\]"),
        (np.full((8, 8), np.nan), "finite"),
        (np.ones((2, 3, 8, 8)), "image resolution"),
    ],
)
def test_bad_masks_are_refused_at_the_edge(model, four_digits, mask, message):
    pixel_values, _ = four_digits
    with pytest.raises(ValueError, match=message):
        model.generate(prompts(model), generation_mode="image", image=pixel_values, mask_image=mask, **FAST)


def test_bad_images_are_refused_at_the_edge(model, pipe, four_digits):
    pixel_values, _ = four_digits
    run = dict(generation_mode="image", **FAST)
    with pytest.raises(ValueError, match="needs both `image`"):
        model.generate(prompts(model), image=pixel_values, **run)
    with pytest.raises(ValueError, match="without the `image`"):
        model.generate(prompts(model), mask_image=lower_half(), **run)
    with pytest.raises(ValueError, match="image_size=8"):
        model.generate(prompts(model), image=torch.zeros(4, 1, 16, 16), mask_image=lower_half(), **run)
    with pytest.raises(ValueError, match="3 images for 4 prompts"):
        model.generate(prompts(model), image=pixel_values[:3], mask_image=lower_half(), **run)
    with pytest.raises(ValueError, match="image must be the processor's pixel_values"):
        model.generate(prompts(model), image=np.zeros((4, 1, 8, 8)), mask_image=lower_half(), **run)
    with pytest.raises(ValueError, match="image 0 is 16x16"):
        pipe("a handwritten seven", image=Image.new("L", (16, 16)), mask_image=np.ones((16, 16)))
    with pytest.raises(ValueError, match="needs `mask_image`"):
        pipe("a handwritten seven", image=Image.new("L", (8, 8)))
