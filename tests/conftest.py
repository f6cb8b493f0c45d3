"""Shared fixtures: tiny random MMAR configs and real handwritten digits from scikit-learn."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import modeling_mmar  # noqa: E402,F401  (registers the Auto classes)
from modeling_mmar import MMARConfig  # noqa: E402

torch.set_num_threads(1)

TINY_QWEN2 = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 96,
    "max_position_embeddings": 256,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

TINY_LLAMA = {**TINY_QWEN2, "model_type": "llama"}

# A 2-level AutoencoderKL (down-sampling x2) small enough for CPU tests, on 1-channel 8x8 digits.
TINY_VAE = {
    "in_channels": 1,
    "out_channels": 1,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 8,
}


def tiny_config(**overrides) -> MMARConfig:
    """Tiny random MMAR on 8x8 grayscale images: 16 tokens per image (patch 2) of dimension 4."""
    kwargs = dict(
        text_config=dict(TINY_QWEN2),
        image_size=8,
        num_channels=1,
        patch_size=2,
        head_width=64,
        head_depth=2,
        diffusion_batch_mul=2,
    )
    kwargs.update(overrides)
    return MMARConfig(**kwargs)


def digit_word_processor():
    """An MMARProcessor over a word-level tokenizer of the digit captions, for a 1-layer tiny Qwen2 of its vocabulary."""
    from processors import MMARProcessor, build_tokenizer
    from training.data import digits_corpus

    tokenizer = build_tokenizer(digits_corpus())
    config = tiny_config(text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": 32,
                                      "num_attention_heads": 2, "num_key_value_heads": 1,
                                      "intermediate_size": 64, "num_hidden_layers": 1})
    return MMARProcessor.from_model_config(config, tokenizer)


@pytest.fixture
def config() -> MMARConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's real handwritten digits: images [1797, 8, 8] in [0, 16] and integer labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


def digits_to_pixel_values(images: np.ndarray) -> torch.Tensor:
    """[N, 8, 8] digits in [0, 16] -> pixel_values [N, 1, 8, 8] in [-1, 1] (16 = ink = white)."""
    return torch.from_numpy(images / 8.0 - 1.0).float().unsqueeze(1)


def generation_batch(config: MMARConfig, pixel_values: torch.Tensor, prompt_ids=(10, 11, 12)):
    """`prompt <boi> <img>*L <eoi>` rows (no processor needed): input_ids, attention_mask, labels."""
    n = pixel_values.shape[0]
    L = config.tokens_per_image
    row = [config.text_config.bos_token_id, *prompt_ids, config.boi_token_id]
    row += [config.image_token_id] * L + [config.eoi_token_id, config.text_config.eos_token_id]
    input_ids = torch.tensor([row] * n)
    labels = input_ids.clone()
    labels[input_ids == config.image_token_id] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def pretend_logged_in_to_the_hub(monkeypatch, export_module, calls: list) -> None:
    """Online, logged in as "someone", with `create_repo` recorded in `calls` (uploads are patched by the test)."""
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(export_module, "get_token", lambda: "hf_token")
    monkeypatch.setattr(HfApi, "whoami", lambda self, *a, **k: {"name": "someone"})
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **k: calls.append(("create", repo_id, k)))
