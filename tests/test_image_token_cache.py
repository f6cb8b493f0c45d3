"""`data.cache_image_tokens`: the frozen VAE runs once per image instead of at every step, with the same losses."""

import math

import pytest
import torch
from conftest import TINY_QWEN2, TINY_VAE

from modeling_mmar import MMARForConditionalGeneration
from processors import MMARProcessor
from training.collator import MMARDataCollator
from training.data import digits_corpus, load_digits_dataset
from training.image_token_cache import IMAGE_TOKENS_COLUMN, add_image_tokens
from training.run_config import CONFIG_DIR, load_config
from training.train import build_model_config, build_tokenizer_for, train


@pytest.fixture(scope="module")
def vae_model_and_processor():
    tokenizer = build_tokenizer_for({}, digits_corpus())
    # a real (tiny, random) AutoencoderKL tokenizer: 8x8 digits -> 4x4x4 latents -> 16 tokens of dim 4
    section = {"text_config": {k: v for k, v in TINY_QWEN2.items() if not k.endswith("token_id")},
               "image_size": 8, "num_channels": 1, "vae_config": dict(TINY_VAE), "patch_size": 1,
               "head_width": 64, "head_depth": 2, "diffusion_batch_mul": 2}
    config = build_model_config(section, tokenizer)
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(config).train()
    with torch.no_grad():  # a head that is not zero-initialised, so that the image loss depends on the tokens
        for parameter in model.diffusion_head.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model, MMARProcessor.from_model_config(config, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def digits_rows():
    return load_digits_dataset(seed=0)["train"].select(range(12))


def test_cached_tokens_are_the_tokens_a_training_step_computes(vae_model_and_processor, digits_rows):
    model, processor = vae_model_and_processor
    cached = add_image_tokens(digits_rows, model, processor, batch_size=5)
    tokens = cached.with_format("torch")[:][IMAGE_TOKENS_COLUMN]
    assert tokens.shape == (12, model.config.tokens_per_image, model.config.token_dim)
    pixel_values = processor.image_processor(digits_rows["image"], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(tokens, model.model.encode_images(pixel_values))
    assert cached.column_names == [*digits_rows.column_names, IMAGE_TOKENS_COLUMN]


def test_batches_with_cached_tokens_give_the_same_losses_and_gradients(vae_model_and_processor, digits_rows):
    model, processor = vae_model_and_processor
    cached = add_image_tokens(digits_rows, model, processor)
    rows = list(range(8))  # both collators have the same seed: the same tasks, masks and caption dropout
    from_pixels = MMARDataCollator(processor, model.config.tokens_per_image, seed=0)([digits_rows[i] for i in rows])
    from_cache = MMARDataCollator(processor, model.config.tokens_per_image, seed=0)([cached[i] for i in rows])
    assert "pixel_values" in from_pixels and "image_tokens" in from_cache and "pixel_values" not in from_cache
    assert from_cache["image_mask"].any()  # generation rows, so the image loss is in play

    def loss_and_head_grad(batch):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same diffusion timesteps and noise
        out = model(**batch)
        out.loss.backward()
        return out, model.diffusion_head.input_proj.weight.grad.clone()

    expected, expected_grad = loss_and_head_grad(from_pixels)
    got, got_grad = loss_and_head_grad(from_cache)
    torch.testing.assert_close(got.image_loss, expected.image_loss)
    torch.testing.assert_close(got.text_loss, expected.text_loss)
    torch.testing.assert_close(got_grad, expected_grad)


def test_bad_datasets_are_named(vae_model_and_processor, digits_rows):
    model, processor = vae_model_and_processor
    with pytest.raises(ValueError, match="no 'picture' column"):
        add_image_tokens(digits_rows, model, processor, image_column="picture")
    with pytest.raises(ValueError, match="needs a map-style datasets.Dataset, got IterableDataset"):
        add_image_tokens(digits_rows.to_iterable_dataset(), model, processor)


def test_the_cache_is_keyed_by_the_vae_weights(vae_model_and_processor, digits_rows):
    model, processor = vae_model_and_processor
    before = add_image_tokens(digits_rows, model, processor)._fingerprint
    assert add_image_tokens(digits_rows, model, processor)._fingerprint == before  # reused, not recomputed
    vae_weight = next(model.model.vae.parameters())
    with torch.no_grad():
        vae_weight.add_(1e-3)
    try:
        assert add_image_tokens(digits_rows, model, processor)._fingerprint != before
    finally:
        with torch.no_grad():
            vae_weight.sub_(1e-3)


def test_training_with_the_cache_option(tmp_path):
    config = load_config(CONFIG_DIR / "digits_tiny.yaml", ["data.cache_image_tokens=true", "training.max_steps=3"])
    run = train(config, output_dir=str(tmp_path / "out"))
    assert IMAGE_TOKENS_COLUMN in run.train_dataset.column_names
    assert IMAGE_TOKENS_COLUMN in run.eval_dataset.column_names
    losses = [e for e in run.trainer.state.log_history if "image_loss" in e and "eval_loss" not in e]
    assert losses and all(math.isfinite(e["image_loss"]) for e in losses)
