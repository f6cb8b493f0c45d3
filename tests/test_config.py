"""MMARConfig: defaults, derived geometry, strict validation naming the field, save/load."""

import pytest
from conftest import TINY_LLAMA, TINY_VAE, tiny_config
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, LlamaConfig, Qwen2Config

from modeling_mmar import MMARConfig


def test_default_is_the_embedded_tiny_digits_model():
    config = MMARConfig()
    assert isinstance(config.text_config, Qwen2Config)
    assert config.get_text_config() is config.text_config
    assert (config.image_size, config.num_channels, config.patch_size, config.vae_config) == (8, 1, 2, None)
    assert (config.tokens_per_side, config.tokens_per_image, config.token_dim) == (4, 16, 4)
    assert (config.boi_token_id, config.image_token_id, config.eoi_token_id) == (4, 5, 6)
    assert config.prediction_type == "v_prediction" and config.noise_schedule == "squaredcos_cap_v2"
    assert config.diffusion_batch_mul == 4 and config.num_train_timesteps == 1000


def test_derived_geometry_with_a_vae():
    # TINY_VAE: 2 block levels -> 2x down-sampling, 4 latent channels.
    config = tiny_config(vae_config=dict(TINY_VAE), patch_size=1)
    assert (config.vae_downsample_factor, config.latent_channels, config.latent_size) == (2, 4, 4)
    assert (config.tokens_per_image, config.token_dim) == (16, 4)
    config = tiny_config(vae_config=dict(TINY_VAE), patch_size=2)
    assert (config.tokens_per_image, config.token_dim) == (4, 16)
    config = tiny_config(image_size=16, patch_size=4)  # pixel patches: 4x4 patches of 1 channel
    assert (config.tokens_per_image, config.token_dim) == (16, 16)


def test_any_causal_lm_text_config():
    config = tiny_config(text_config=dict(TINY_LLAMA))
    assert isinstance(config.text_config, LlamaConfig) and config.text_config.hidden_size == 64
    config = MMARConfig(text_config=Qwen2Config(**{k: v for k, v in TINY_LLAMA.items() if k != "model_type"}))
    assert isinstance(config.text_config, Qwen2Config)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"patch_size": 3}, "MMARConfig.patch_size"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": 10, "vae_config": dict(TINY_VAE, block_out_channels=[8, 16, 16],
                                                down_block_types=["DownEncoderBlock2D"] * 3,
                                                up_block_types=["UpDecoderBlock2D"] * 3)}, "MMARConfig.image_size"),
        ({"num_channels": 2}, "num_channels"),
        ({"num_channels": 3, "vae_config": dict(TINY_VAE)}, "num_channels"),
        ({"vae_config": dict(TINY_VAE, out_channels=3)}, "out_channels"),
        ({"vae_config": dict(TINY_VAE, latent_chanels=4)}, "latent_chanels"),
        ({"vae_config": dict(TINY_VAE, down_block_types=["DownEncoderBlock2D"])}, "down_block_types"),
        ({"prediction_type": "flow"}, "prediction_type"),
        ({"noise_schedule": "cosine"}, "noise_schedule"),
        ({"head_width": 0}, "head_width"),
        ({"head_depth": 0}, "head_depth"),
        ({"diffusion_batch_mul": 0}, "diffusion_batch_mul"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"embedder_depth": -1}, "embedder_depth"),
        ({"embedder_depth": 1, "embedder_num_heads": 5}, "embedder_num_heads"),
        ({"vae_scaling_factor": 0.0}, "vae_scaling_factor"),
        ({"image_loss_weight": -1.0}, "image_loss_weight"),
        ({"image_token_id": 96}, "image_token_id"),  # the tiny vocabulary has 96 ids
        ({"boi_token_id": 5}, "image special-token ids must be distinct"),
        ({"eoi_token_id": 0}, "eoi_token_id=0 collides with text_config.pad_token_id"),
        ({"text_config": {"model_type": "clip_vision_model"}}, "text_config"),
    ],
)
def test_impossible_or_unknown_values_raise_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    "overrides, field",
    [({"image_size": "8"}, "image_size"), ({"patch_size": 2.0}, "patch_size"), ({"prediction_type": 1}, "prediction_type"),
     ({"vae_config": ["in_channels", 1]}, "vae_config")],
)
def test_wrong_types_are_rejected_naming_the_field(overrides, field):
    with pytest.raises(StrictDataclassError, match=field):
        tiny_config(**overrides)
    config = tiny_config()
    with pytest.raises(StrictDataclassError, match=field):
        setattr(config, field, next(iter(overrides.values())))


def test_floats_accept_integers():
    config = tiny_config(vae_scaling_factor=1, image_loss_weight=2)
    assert config.vae_scaling_factor == 1.0 and isinstance(config.vae_scaling_factor, float)
    assert isinstance(config.image_loss_weight, float)


def test_save_and_load(tmp_path):
    config = tiny_config(vae_config=dict(TINY_VAE), patch_size=1, vae_scaling_factor=0.5, embedder_depth=2,
                         prediction_type="epsilon", image_loss_weight=0.5, tie_word_embeddings=True)
    config.save_pretrained(tmp_path)
    for loaded in (MMARConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert isinstance(loaded, MMARConfig)
        assert isinstance(loaded.text_config, Qwen2Config)
        assert loaded.text_config.to_dict() == config.text_config.to_dict()
        for name in ("vae_config", "vae_scaling_factor", "embedder_depth", "prediction_type", "image_loss_weight",
                     "tie_word_embeddings", "image_token_id", "tokens_per_image", "token_dim"):
            assert getattr(loaded, name) == getattr(config, name), name
    # A config that became invalid after construction cannot be saved.
    config.patch_size = 3
    with pytest.raises(StrictDataclassError, match="patch_size"):
        config.save_pretrained(tmp_path / "bad")
