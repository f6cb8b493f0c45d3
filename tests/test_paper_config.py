"""The paper's geometry (Qwen2-0.5B + KL-16 VAE, 256x256 images) instantiates on the meta device and is counted."""

from pathlib import Path

import pytest
import torch

from modeling_mmar.image_tokens_mmar import patchify
from training.model_size import build_on_meta, load_config, main, parameter_counts

PAPER_CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "model" / "paper-0.5b.json"


@pytest.fixture(scope="module")
def config():
    return load_config(str(PAPER_CONFIG))


@pytest.fixture(scope="module")
def model(config):
    return build_on_meta(config)


def test_paper_geometry(config):
    text = config.text_config
    assert text.model_type == "qwen2"
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        896, 24, 14, 2)
    assert (text.intermediate_size, text.vocab_size, text.max_position_embeddings) == (4864, 151936, 32768)
    assert text.rope_parameters["rope_theta"] == 1e6
    assert config.tie_word_embeddings
    # KL-16: 16x down-sampling, 16 latent channels; 256x256 images with patch 1 -> 256 tokens of dimension 16.
    assert (config.vae_downsample_factor, config.latent_channels, config.latent_size) == (16, 16, 16)
    assert (config.image_size, config.num_channels, config.patch_size) == (256, 3, 1)
    assert (config.tokens_per_image, config.token_dim) == (256, 16)
    assert config.vae_scaling_factor == 0.2325
    assert (config.head_width, config.head_depth, config.prediction_type) == (1024, 6, "v_prediction")
    ids = {config.boi_token_id, config.image_token_id, config.eoi_token_id}
    assert len(ids) == 3 and all(151643 < i < text.vocab_size for i in ids)  # after Qwen2's <|endoftext|>


def test_instantiates_on_meta_with_the_right_shapes(config, model):
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied, as in Qwen2-0.5B
    pixels = torch.empty(2, 3, 256, 256, device="meta")
    latents = model.model.vae.encode(pixels).latent_dist.mode()
    assert latents.shape == (2, 16, 16, 16)
    tokens = patchify(latents, config.patch_size)
    assert tokens.shape == (2, 256, 16)
    assert model.model.vae.decode(latents).sample.shape == (2, 3, 256, 256)
    embeds = model.model.image_embedder(tokens, torch.zeros(2, 256, dtype=torch.bool, device="meta"))
    assert embeds.shape == (2, 256, 896)
    prediction = model.diffusion_head(tokens.reshape(-1, 16), torch.zeros(512, dtype=torch.long, device="meta"),
                                      embeds.reshape(-1, 896))
    assert prediction.shape == (512, 16)


def test_parameter_counts_per_component(config, model):
    counts = parameter_counts(model)
    text = config.text_config
    hidden = text.hidden_size
    kv = text.num_key_value_heads * (hidden // text.num_attention_heads)
    per_layer = (hidden * hidden + hidden) + 2 * (hidden * kv + kv) + hidden * hidden  # q, k, v (biased), o
    per_layer += 3 * hidden * text.intermediate_size + 2 * hidden  # SwiGLU MLP, two RMSNorms
    qwen2 = text.vocab_size * hidden + text.num_hidden_layers * per_layer + hidden
    assert counts["language_model"] == qwen2 == 494_032_768  # Qwen2-0.5B's published size
    assert counts["lm_head"] == 0  # tied to the input embedding
    assert 60e6 < counts["vae"] < 80e6  # LDM's KL-16 autoencoder
    assert counts["diffusion_head"] > 6 * 2 * 1024 * 1024  # at least the six blocks' MLPs
    assert counts["total"] == sum(counts[k] for k in ("language_model", "lm_head", "vae", "image_embedder",
                                                      "diffusion_head"))
    assert counts["trainable"] == counts["total"] - counts["vae"]  # the VAE is frozen


def test_cli_prints_the_counts(capsys):
    assert main([str(PAPER_CONFIG)]) == 0
    printed = capsys.readouterr().out
    assert "256 tokens of dim 16" in printed
    for name in ("language_model", "vae", "image_embedder", "diffusion_head", "total"):
        assert name in printed
    assert "494,032,768" in printed
