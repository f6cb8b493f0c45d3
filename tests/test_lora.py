"""LoRA with peft: targets on Qwen2 and Llama backbones, adapters that know their base, merging, `mmar finetune`."""

import json

import pytest
import torch
from conftest import TINY_LLAMA, TINY_QWEN2, digits_to_pixel_values, generation_batch, tiny_config
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from transformers import AutoModelForImageTextToText, AutoProcessor

from modeling_mmar import MMARForConditionalGeneration
from processors import MMARProcessor, build_tokenizer
from training.cli import main as mmar
from training.collator import MMARDataCollator
from training.data import digits_corpus
from training.finetune import CAPTION_STYLES, MMARTrainer, build_trainer, load_finetune_config, styled_digits
from training.lora import (
    add_words,
    check_targets,
    load_adapter_model,
    lora_config,
    merge_adapter,
    save_adapter,
    trainable_share,
)

GERMAN = CAPTION_STYLES["german"]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def save_base(folder, seed: int = 0, hidden_size: int = 64):
    """A base model folder like `mmar demo`'s model/: model + processor (word-level digits tokenizer)."""
    tokenizer = build_tokenizer(digits_corpus())
    config = tiny_config(text_config={**TINY_QWEN2, "hidden_size": hidden_size, "vocab_size": len(tokenizer),
                                      "intermediate_size": 2 * hidden_size})
    torch.manual_seed(seed)
    MMARForConditionalGeneration(config).save_pretrained(folder)
    MMARProcessor.from_model_config(config, tokenizer).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("text_config", [TINY_QWEN2, TINY_LLAMA], ids=["qwen2", "llama"])
def test_lora_targets_every_backbone_projection_only(text_config):
    model = MMARForConditionalGeneration(tiny_config(text_config=dict(text_config), vae_config=None))
    config = lora_config(r=4)
    layers = model.config.text_config.num_hidden_layers
    targets = check_targets(model, config)
    assert sorted(targets) == sorted(
        f"model.language_model.layers.{i}.{'self_attn' if p.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{p}"
        for i in range(layers) for p in PROJECTIONS)

    peft_model = get_peft_model(model, config)
    lora_layers = [n for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    assert len(lora_layers) == 7 * layers and all(".language_model.layers." in n for n in lora_layers)
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules()
               if isinstance(m, ModulesToSaveWrapper)}
    assert wrapped == {"diffusion_head", "model.image_embedder"}
    trainable, total, share = trainable_share(peft_model)
    assert 0 < share < 1 and trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    mask_embedding = [n for n, p in peft_model.named_parameters() if n.endswith("mask_embedding") and p.requires_grad]
    assert mask_embedding  # the learned mask embedding trains with the embedder


def test_a_wrong_target_is_refused():
    model = MMARForConditionalGeneration(tiny_config())
    with pytest.raises(ValueError, match="match no module"):
        check_targets(model, lora_config(target_modules=r"model\.layers\.\d+\.attn\.c_attn"))


def test_adapter_save_load_merge(tmp_path, digits):
    base_dir = save_base(tmp_path / "base")
    model = AutoModelForImageTextToText.from_pretrained(base_dir)
    processor = AutoProcessor.from_pretrained(base_dir)
    base_vocab = model.config.text_config.vocab_size
    new_ids = add_words(processor, model, GERMAN.corpus())  # the word-level tokenizer knows no German
    assert len(new_ids) == 18 and processor.tokenizer.unk_token_id not in processor.tokenizer(
        "eine handgeschriebene sieben", add_special_tokens=False)["input_ids"]
    initial_rows = model.lm_head.weight[new_ids].detach().clone()
    peft_model = get_peft_model(model, lora_config(r=4, new_token_ids=new_ids))

    # A few steps with transformers' Trainer (the `trainer=trainer` path of `mmar finetune`).
    data = styled_digits(GERMAN, 8, seed=0)["train"].select(range(64))
    batches = MMARDataCollator(processor, model.config.tokens_per_image, mask_ratio_min=0.0)
    trainer = build_trainer("trainer", peft_model, processor, data, batches,
                            {"per_device_train_batch_size": 16, "learning_rate": 1e-2}, str(tmp_path / "run"), 4, 0)
    assert type(trainer) is MMARTrainer
    trainer.train()
    save_adapter(peft_model, processor, base_dir, tmp_path / "adapter", base_vocab)

    # Reloaded on its base it computes what the trained model computes.
    pixel_values = digits_to_pixel_values(digits[0][:2])
    batch = generation_batch(model.config, pixel_values, prompt_ids=new_ids[:3])
    image_mask = torch.zeros(2, model.config.tokens_per_image, dtype=torch.bool)
    image_mask[:, :5] = True
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch, pixel_values=pixel_values)
        conditions = torch.randn(3, model.config.text_config.hidden_size)
        expected_head = peft_model.diffusion_head(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
                                                  torch.tensor([10, 500, 900]), conditions)
    # The flow the adapter's card documents: peft's own loading, after growing the base to the adapter's vocabulary.
    assert "base.resize_token_embeddings(len(processor.tokenizer))" in (tmp_path / "adapter" / "README.md").read_text()
    adapter_processor = AutoProcessor.from_pretrained(tmp_path / "adapter")
    base = AutoModelForImageTextToText.from_pretrained(base_dir)
    base.resize_token_embeddings(len(adapter_processor.tokenizer))
    documented = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload().eval()
    with torch.no_grad():
        torch.testing.assert_close(documented(**batch, pixel_values=pixel_values).logits, expected.logits,
                                   rtol=1e-4, atol=1e-4)

    loaded, loaded_processor = load_adapter_model(base_dir, tmp_path / "adapter")
    assert isinstance(loaded, PeftModel) and len(loaded_processor.tokenizer) == len(processor.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch, pixel_values=pixel_values).logits, expected.logits)

    # Merged: a plain MMAR model that AutoModel loads, matching the adapter model within float tolerance.
    merge_adapter(base_dir, tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert type(merged) is MMARForConditionalGeneration
    assert not any(isinstance(m, (LoraLayer, ModulesToSaveWrapper)) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch, pixel_values=pixel_values).logits, expected.logits,
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            merged.diffusion_head(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
                                  torch.tensor([10, 500, 900]), conditions), expected_head, rtol=1e-5, atol=1e-5)
        # The trained German rows were merged into embeddings and LM head (they moved away from their start).
        assert (merged.lm_head.weight[new_ids] - initial_rows).abs().max() > 1e-3
    assert AutoProcessor.from_pretrained(tmp_path / "merged").tokenizer.convert_tokens_to_ids("sieben") in new_ids


def test_adapter_for_another_base_is_refused(tmp_path):
    base_dir = save_base(tmp_path / "base")
    model = AutoModelForImageTextToText.from_pretrained(base_dir)
    processor = AutoProcessor.from_pretrained(base_dir)
    save_adapter(get_peft_model(model, lora_config(r=4)), processor, base_dir, tmp_path / "adapter",
                 model.config.text_config.vocab_size)

    same_shape = save_base(tmp_path / "other", seed=1)  # same architecture, other weights
    with pytest.raises(ValueError, match="trained for another base model.*weights differ"):
        load_adapter_model(same_shape, tmp_path / "adapter")
    smaller = save_base(tmp_path / "smaller", hidden_size=32)
    with pytest.raises(ValueError, match="another base model.*hidden_size 64 \\(adapter\\) vs 32"):
        load_adapter_model(smaller, tmp_path / "adapter")
    with pytest.raises(ValueError, match="no peft adapter"):
        load_adapter_model(base_dir, tmp_path / "other")
    assert load_adapter_model(base_dir, tmp_path / "adapter")[0] is not None


def test_finetune_config_errors(tmp_path, capsys):
    config = load_finetune_config(overrides=["max_steps=7", f"output_dir={tmp_path}", "lora.r=4"])
    assert config["max_steps"] == 7 and config["lora"]["r"] == 4 and config["trainer"] == "sft"
    assert config["base_model"] == "./mmar-demo/model"
    with pytest.raises(ValueError, match="lora.rank"):
        load_finetune_config(overrides=["lora.rank=4"])
    with pytest.raises(ValueError, match="top level"):
        load_finetune_config(overrides=["training.max_steps=4"])
    with pytest.raises(ValueError, match="trainer must be one of"):
        load_finetune_config(overrides=["trainer=accelerate"])
    assert mmar(["finetune", f"base_model={tmp_path / 'no-demo' / 'model'}", f"output_dir={tmp_path / 'out'}"]) == 2
    assert "run `mmar demo` first" in capsys.readouterr().err


def test_finetune_command_teaches_the_new_caption_style(tmp_path):
    base_dir = save_base(tmp_path / "base")
    out = tmp_path / "lora"
    assert mmar(["finetune", f"base_model={base_dir}", f"output_dir={out}", "max_steps=40",
                 "training.per_device_train_batch_size=32", "training.logging_steps=10",
                 "evaluation.seeds_per_digit=1", "evaluation.num_iter=2", "evaluation.num_inference_steps=2",
                 "evaluation.batch_size=400", "evaluation.english=false"]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    names_a_german_digit = [GERMAN.read_digit(answer) is not None for answer in metrics["example_answers"]]
    assert all(names_a_german_digit)  # after: answers in German
    assert not any(GERMAN.read_digit(a) is not None for a in metrics["before"]["example_answers"])  # before: never
    assert metrics["train_steps"] == 40 and metrics["new_tokens"] == 18 and 0 < metrics["trainable_share"] < 1
    for name in ("adapter/adapter_model.safetensors", "adapter/mmar_adapter.json", "merged/model.safetensors",
                 "samples.png", "loss.png"):
        assert (out / name).is_file(), name
    # The merged model is export-ready: `mmar export` picks up the run's metrics and German examples.
    assert mmar(["export", str(out / "merged"), str(tmp_path / "export")]) == 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert "eine handgeschriebene sieben" in card and "(before fine-tuning)" in card
