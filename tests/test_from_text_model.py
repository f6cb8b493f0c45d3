"""`MMARForConditionalGeneration.from_text_model`: any pretrained causal LM becomes an MMAR model, weights kept exactly."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY_VAE, digits_to_pixel_values
from diffusers import AutoencoderKL
from tiny_backbones import build_bpe_tokenizer, build_text_model, save_backbone
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from modeling_mmar import MMARForConditionalGeneration
from processors import MMARProcessor, build_tokenizer

IMAGE_TOKENS = ("<boi>", "<img>", "<eoi>")


def backbone_key(key: str) -> str:
    """Name of a causal-LM weight inside MMAR: the base model moves under model.language_model."""
    return "model.language_model." + key[len("model."):] if key.startswith("model.") else key


@pytest.mark.parametrize("style", ["qwen2", "llama"])
def test_wraps_a_saved_backbone_with_its_weights_kept_exactly(style, tmp_path, digits):
    path = save_backbone(style, tmp_path / style)
    text_model = AutoModelForCausalLM.from_pretrained(path)
    original_tokenizer = AutoTokenizer.from_pretrained(path)

    model = MMARForConditionalGeneration.from_text_model(path, image_size=8, patch_size=2, num_channels=1)
    processor = MMARProcessor.from_text_model(path, model.config)

    # The tokenizer grew by the three image tokens; the embeddings were resized to it; the config holds their ids.
    tokenizer = processor.tokenizer
    assert len(tokenizer) == len(original_tokenizer) + 3 == model.config.text_config.vocab_size
    ids = tokenizer.convert_tokens_to_ids(list(IMAGE_TOKENS))
    assert ids == list(range(len(original_tokenizer), len(original_tokenizer) + 3))
    assert (model.config.boi_token_id, model.config.image_token_id, model.config.eoi_token_id) == tuple(ids)
    assert processor.image_token == "<img>" and processor.image_token_id == model.config.image_token_id
    assert all(token in tokenizer.all_special_tokens for token in IMAGE_TOKENS)
    assert tokenizer.pad_token is not None  # Llama has none: eos stands in

    # Every backbone weight is bit-identical (the old rows of resized embeddings included).
    mmar_state = model.state_dict()
    for key, value in text_model.state_dict().items():
        moved = mmar_state[backbone_key(key)]
        assert torch.equal(moved[: value.shape[0]], value), key
    assert model.config.tie_word_embeddings == text_model.config.tie_word_embeddings
    tied = model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert tied == text_model.config.tie_word_embeddings

    # On plain text MMAR computes exactly what the backbone computes.
    text = tokenizer(["a handwritten seven", "the quick brown fox"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = text_model(**text).logits
        actual = model(**text).logits[..., : expected.shape[-1]]
    assert torch.equal(actual, expected)

    # The processor builds MMAR sequences with the new tokens, and the model trains on them: both losses.
    images, _ = digits
    pixel_values = digits_to_pixel_values(images[:2])
    image = processor.image_token
    batch = processor(text=[f"{image}What digit is this? zero", f"a handwritten one{image}"],
                      images=list(pixel_values.add(1).div(2)), return_tensors="pt", padding=True)
    assert (batch["input_ids"] == model.config.image_token_id).sum() == 2 * model.config.tokens_per_image
    image_mask = torch.zeros(2, model.config.tokens_per_image, dtype=torch.bool)
    image_mask[1, ::2] = True
    out = model(**batch, image_mask=image_mask, labels=batch["input_ids"].masked_fill(
        batch["input_ids"] == model.config.image_token_id, -100))
    assert torch.isfinite(out.text_loss) and torch.isfinite(out.image_loss)


def test_model_object_with_pretrained_vae_and_config_overrides():
    tokenizer = build_bpe_tokenizer("llama")
    text_model = build_text_model("llama", tokenizer)
    torch.manual_seed(1)
    vae = AutoencoderKL(**TINY_VAE, scaling_factor=0.5, shift_factor=0.1)

    model = MMARForConditionalGeneration.from_text_model(
        text_model, vae=vae, tokenizer=tokenizer, head_width=32, embedder_depth=1, dtype=torch.float32)
    processor = MMARProcessor.from_text_model(tokenizer, model.config)

    # Geometry and latent statistics come from the VAE; its weights are kept; other fields pass through.
    config = model.config
    assert (config.image_size, config.num_channels, config.latent_channels) == (8, 1, 4)
    assert (config.vae_scaling_factor, config.vae_shift_factor) == (0.5, 0.1)
    assert (config.head_width, config.embedder_depth) == (32, 1)
    for key, value in vae.state_dict().items():
        assert torch.equal(model.model.vae.state_dict()[key], value), key
    assert not any(p.requires_grad for p in model.model.vae.parameters())
    # The caller's tokenizer is left untouched by both (the processor holds an extended copy).
    assert "<img>" not in tokenizer.get_vocab() and "<img>" in processor.tokenizer.get_vocab()
    assert processor.num_image_tokens == config.tokens_per_image == 4


def test_saved_model_reloads_through_auto_classes(tmp_path):
    path = save_backbone("qwen2", tmp_path / "qwen2")
    model = MMARForConditionalGeneration.from_text_model(path)
    processor = MMARProcessor.from_text_model(path, model.config)
    model.save_pretrained(tmp_path / "mmar")
    processor.save_pretrained(tmp_path / "mmar")

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "mmar")
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path / "mmar")
    batch = reloaded_processor(text=["a handwritten seven"], return_tensors="pt")
    assert batch["input_ids"].tolist() == processor(text=["a handwritten seven"], return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
    assert "AutoModel" in reloaded.config.auto_map and "AutoModelForCausalLM" in reloaded.config.auto_map


def test_bad_inputs_are_named(tmp_path):
    tokenizer = build_bpe_tokenizer("qwen2")
    text_model = build_text_model("qwen2", tokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        MMARForConditionalGeneration.from_text_model(text_model)
    with pytest.raises(ValueError, match="image_token_id"):
        MMARForConditionalGeneration.from_text_model(text_model, tokenizer=tokenizer, image_token_id=3)
    with pytest.raises(ValueError, match="vae"):
        MMARForConditionalGeneration.from_text_model(text_model, tokenizer=tokenizer, vae=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="causal LM"):
        MMARForConditionalGeneration.from_text_model(text_model.model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="patch_size"):
        MMARForConditionalGeneration.from_text_model(text_model, tokenizer=tokenizer, image_size=8, patch_size=3)


def test_the_model_side_needs_nothing_outside_its_remote_code_folder(tmp_path):
    """modeling_mmar (the remote-code folder) converts a text model without the processors package."""
    path = save_backbone("qwen2", tmp_path / "qwen2")
    code = ("import sys, modeling_mmar\n"
            f"model = modeling_mmar.MMARForConditionalGeneration.from_text_model({str(path)!r})\n"
            "assert not any(name.startswith('processors') for name in sys.modules), 'imported processors'\n"
            "print(model.config.image_token_id)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_processor_for_a_different_tokenizer_is_refused(tmp_path):
    model = MMARForConditionalGeneration.from_text_model(save_backbone("qwen2", tmp_path / "qwen2"))
    with pytest.raises(ValueError, match="boi_token_id|image_token_id|vocab_size"):
        MMARProcessor.from_text_model(build_tokenizer(["a handwritten seven"]), model.config)  # ids 4..6
    with pytest.raises(ValueError, match="tokenizer must be"):
        MMARProcessor.from_text_model(42, model.config)
