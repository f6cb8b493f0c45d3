"""save_pretrained / from_pretrained (safetensors) and the Auto classes."""

import pytest
import torch
from conftest import TINY_VAE, digits_to_pixel_values, generation_batch, tiny_config
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
)

from modeling_mmar import MMARConfig, MMARForConditionalGeneration, MMARModel


def assert_same_state(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert state_a[name].dtype == state_b[name].dtype, name
        assert torch.equal(state_a[name], state_b[name]), name


def comparable(config) -> dict:
    """The config minus what loading legitimately fills in (where it came from, the dtype it was loaded in)."""
    values = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "dtype")}
    values["text_config"] = {k: v for k, v in values["text_config"].items() if k not in ("_name_or_path", "dtype")}
    return values


@pytest.fixture(scope="module")
def pixels():
    from sklearn.datasets import load_digits

    return digits_to_pixel_values(load_digits().images[:2].astype("float32"))


@pytest.mark.parametrize("with_vae", [False, True], ids=["pixel-patches", "tiny-vae"])
def test_round_trip_is_bit_exact_in_safetensors(tmp_path, pixels, with_vae):
    torch.manual_seed(0)
    overrides = {"vae_config": dict(TINY_VAE), "patch_size": 1} if with_vae else {}
    model = MMARForConditionalGeneration(tiny_config(embedder_depth=1, **overrides)).eval()
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    stored = load_file(tmp_path / "model.safetensors")
    assert any(k.startswith("model.vae.") for k in stored) == with_vae

    loaded = MMARForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert comparable(loaded.config) == comparable(model.config)
    assert_same_state(model, loaded)
    if with_vae:
        assert not any(p.requires_grad for p in loaded.model.vae.parameters())  # still the frozen tokenizer
    batch = generation_batch(model.config, pixels)
    mask = torch.zeros(2, model.config.tokens_per_image, dtype=torch.bool)
    mask[:, ::2] = True
    with torch.no_grad():
        expected = model(**batch, pixel_values=pixels, image_mask=mask)
        actual = loaded(**batch, pixel_values=pixels, image_mask=mask)
    assert torch.equal(expected.logits, actual.logits)


def test_auto_classes_round_trip(tmp_path, pixels):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config())
    model.save_pretrained(tmp_path / "full")

    config = AutoConfig.from_pretrained(tmp_path / "full")
    assert isinstance(config, MMARConfig) and comparable(config) == comparable(model.config)
    for auto_class in (AutoModelForImageTextToText, AutoModelForCausalLM):
        loaded = auto_class.from_pretrained(tmp_path / "full")
        assert type(loaded) is MMARForConditionalGeneration
        assert_same_state(model, loaded)

    # AutoModel gives the backbone (LLM + tokenizer + embedder), from the full checkpoint or its own.
    base = AutoModel.from_pretrained(tmp_path / "full")
    assert type(base) is MMARModel
    assert_same_state(model.model, base)
    base.save_pretrained(tmp_path / "base")
    reloaded = AutoModel.from_pretrained(tmp_path / "base")
    assert type(reloaded) is MMARModel
    assert_same_state(base, reloaded)
    ids = generation_batch(model.config, pixels)["input_ids"]
    with torch.no_grad():
        assert torch.equal(base(input_ids=ids, pixel_values=pixels).last_hidden_state,
                           model.model(input_ids=ids, pixel_values=pixels).last_hidden_state)


def test_tied_word_embeddings_follow_the_root_config(tmp_path):
    tied = MMARForConditionalGeneration(tiny_config(tie_word_embeddings=True))
    assert tied.lm_head.weight is tied.model.language_model.embed_tokens.weight
    tied.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")  # stored once
    loaded = MMARForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.language_model.embed_tokens.weight
    assert_same_state(tied, loaded)

    untied = MMARForConditionalGeneration(tiny_config(tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.model.language_model.embed_tokens.weight


def test_loading_in_bf16_keeps_the_vae_in_fp32(tmp_path):
    MMARForConditionalGeneration(tiny_config(vae_config=dict(TINY_VAE), patch_size=1)).save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.model.vae.parameters()} == {torch.float32}
    assert {p.dtype for p in model.model.language_model.parameters()} == {torch.bfloat16}
    assert model.diffusion_head.input_proj.weight.dtype == torch.bfloat16


def test_the_base_model_loads_quietly_from_a_full_checkpoint(tmp_path):
    import io
    import logging

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    torch.manual_seed(0)
    full = MMARForConditionalGeneration(tiny_config())
    full.save_pretrained(tmp_path)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    hf_logging.add_handler(handler)
    try:
        base, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    finally:
        hf_logging.remove_handler(handler)
    assert "UNEXPECTED" not in log.getvalue() and not info["unexpected_keys"], log.getvalue()
    assert not info["missing_keys"]
    for name, tensor in base.state_dict().items():  # every weight is the full model's backbone weight
        torch.testing.assert_close(tensor, full.model.state_dict()[name], rtol=0, atol=0)
