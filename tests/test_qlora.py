"""QLoRA: a 4-bit NF4 backbone on CPU, MMAR's own parts in full precision, LoRA on top; a few steps lower the loss."""

import bitsandbytes as bnb
import pytest
import torch
from conftest import TINY_QWEN2, TINY_VAE, tiny_config

from modeling_mmar import MMARForConditionalGeneration
from processors import MMARProcessor, build_tokenizer
from training.collator import MMARDataCollator
from training.data import digits_corpus, load_digits_dataset
from training.qlora import (
    FULL_PRECISION_MODULES,
    keep_4bit_weights_trainable,
    load_4bit,
    memory_report,
    probe_loss,
    qlora_model,
    quantized_module_names,
)

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved MMAR with a (tiny) KL-VAE, whose attention Linears must stay unquantized too."""
    folder = tmp_path_factory.mktemp("qlora") / "model"
    tokenizer = build_tokenizer(digits_corpus())
    config = tiny_config(text_config={**TINY_QWEN2, "vocab_size": len(tokenizer), "hidden_size": 128,
                                      "intermediate_size": 512}, vae_config=dict(TINY_VAE))
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(config)
    model.save_pretrained(folder)
    MMARProcessor.from_model_config(config, tokenizer).save_pretrained(folder)
    return folder


def test_only_the_backbone_is_quantized(model_dir):
    full = MMARForConditionalGeneration.from_pretrained(model_dir)
    model = qlora_model(model_dir, r=4)
    base = model.get_base_model()
    layers = base.config.text_config.num_hidden_layers

    quantized = [name.removesuffix(".base_layer") for name in quantized_module_names(model)]  # LoRA wraps them
    assert len(quantized) == 7 * layers
    assert all(name.startswith("base_model.model.model.language_model.layers.") and name.endswith(PROJECTIONS)
               for name in quantized)
    for path in FULL_PRECISION_MODULES:  # VAE (with attention Linears), embedder, head, lm_head: full precision
        module = base.get_submodule(path)
        assert not any(isinstance(m, bnb.nn.Linear4bit) for m in module.modules()), path
        assert all(p.dtype == torch.float32 for p in module.parameters()), path
    assert any(isinstance(m, torch.nn.Linear) for m in base.model.vae.modules())  # there was something to skip
    assert base.model.vae.decoder.conv_out.weight.dtype == torch.float32

    before, after = memory_report(full), memory_report(model)
    assert after["backbone_mib"] < 0.6 * before["backbone_mib"]
    linear_4bit = sum(m.weight.numel() * m.weight.element_size() for m in base.modules()
                      if isinstance(m, bnb.nn.Linear4bit))
    linear_full = sum(m.weight.numel() * 4 for n, m in full.named_modules()
                      if n.startswith("model.language_model.layers.") and isinstance(m, torch.nn.Linear))
    assert linear_4bit == linear_full // 8  # NF4: 4 bits per weight instead of 32


def test_qlora_steps_on_cpu_lower_the_loss(model_dir):
    """Evaluates first, then trains: on AVX512-BF16 CPUs bitsandbytes would repack the 4-bit weights for inference
    in eval mode, after which a training step failed."""
    model = qlora_model(model_dir, r=8)
    base = model.get_base_model()
    tokenizer_processor = MMARProcessor.from_pretrained(model_dir)
    rows = load_digits_dataset()["train"]
    collator = MMARDataCollator(tokenizer_processor, base.config.tokens_per_image, mask_ratio_min=0.0)
    probe = collator([rows[i] for i in range(32)])

    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=2e-3)
    before = probe_loss(model, probe)
    for step in range(8):
        loss = model(**collator([rows[32 + step * 16 + i] for i in range(16)])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert probe_loss(model, probe) < 0.9 * before
    loss = model(**collator([rows[i] for i in range(16)])).loss  # and training goes on after that evaluation
    loss.backward()
    optimizer.step()
    # The 4-bit weights themselves never change (LoRA learns beside them).
    assert all(not p.requires_grad for n, p in model.named_parameters() if "language_model.layers" in n
               and "lora_" not in n)


def test_weights_repacked_by_an_inference_pass_are_restored_for_training(model_dir):
    model = load_4bit(model_dir).eval()
    processor = MMARProcessor.from_pretrained(model_dir)
    batch = MMARDataCollator(processor, model.config.tokens_per_image, mask_ratio_min=0.0)(
        [load_digits_dataset()["train"][i] for i in range(4)])
    with torch.no_grad():
        expected = model(**batch, use_cache=False).logits  # on AVX512-BF16 CPUs this pass repacks the weights
    layers = keep_4bit_weights_trainable(model)
    assert layers == len(quantized_module_names(model))
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                   for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    with torch.no_grad():  # the same function (the repacked kernel computes in bf16: up to ~4e-3 apart here)
        torch.testing.assert_close(model(**batch, use_cache=False).logits, expected, rtol=0, atol=2e-2)
