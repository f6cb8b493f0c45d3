"""Image experts (`MMARConfig.image_expert`) and a frozen text model, on tiny pretrained-looking Qwen2 and Llama.

With `freeze_text_model=True` and an image expert, MMAR keeps the LLM's text behaviour exactly: text-only inputs
give the original LLM's last hidden states bit for bit, before and after MMAR training.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_QWEN2, tiny_config
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from test_remote_code import REMOTE_SCRIPT, assert_the_installed_code_gives_the_same, isolated_python_env
from tiny_backbones import build_bpe_tokenizer, save_backbone
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from modeling_mmar import MMARConfig, MMARForConditionalGeneration
from modeling_mmar.image_experts_mmar import ImageExpertRouter, image_expert_routers
from modeling_mmar.image_span_runner_mmar import ImageSpanRunner
from modeling_mmar.sampling_mmar import build_prompt_rows
from processors import MMARProcessor
from training.cli import main as mmar
from training.collator import MMARDataCollator
from training.data import load_digit_dataset
from training.lora import check_targets, lora_config

STYLES = ("qwen2", "llama")
KINDS = ("ffn", "attention")
TEXTS = ["The quick brown fox jumps over the lazy dog.", "What digit is this? seven"]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """A saved tiny Qwen2 and a saved tiny Llama (model + tokenizer), like Hub checkpoints."""
    folder = tmp_path_factory.mktemp("backbones")
    return {style: save_backbone(style, folder / style) for style in STYLES}


@pytest.fixture(scope="module")
def digit_rows():
    """32 real training digits (scikit-learn) with captions, questions and answers."""
    return load_digit_dataset("digits", image_size=8, seed=0)["train"].select(range(32))


def expert_model(path, kind="ffn", freeze=True, **kwargs):
    model = MMARForConditionalGeneration.from_text_model(
        path, image_expert=kind, freeze_text_model=freeze, image_size=8, patch_size=2, num_channels=1,
        head_width=32, head_depth=1, **kwargs)
    return model, MMARProcessor.from_text_model(path, model.config)


def perturb_experts(model, seed=0, scale=0.05):
    """Image copies that differ from the text weights (as after training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for router in image_expert_routers(model):
            for parameter in router.image.parameters():
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def perturb_head(model, scale=0.02):
    with torch.no_grad():
        for parameter in model.diffusion_head.parameters():
            parameter.add_(scale * torch.randn_like(parameter))


def train_steps(model, processor, rows, steps=3, **collator_kwargs):
    """A few AdamW steps (with weight decay) on real digits, both tasks in every batch."""
    collator = MMARDataCollator(processor, model.config.tokens_per_image, understanding_ratio=0.5, task_mix="batch",
                                mask_ratio_min=0.5, **collator_kwargs)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(steps):
        batch = collator([rows[i] for i in range(8 * step, 8 * step + 8)])
        out = model(**batch)
        assert out.text_loss is not None and out.image_loss is not None
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("style", STYLES)
def test_text_only_inputs_keep_the_original_llm_bit_for_bit_before_and_after_training(style, kind, backbones,
                                                                                      digit_rows):
    text_model = AutoModelForCausalLM.from_pretrained(backbones[style]).eval()
    model, processor = expert_model(backbones[style], kind)
    text = processor.tokenizer(TEXTS, return_tensors="pt", padding=True)
    vocab = text_model.config.vocab_size

    def check_text_unchanged():
        with torch.no_grad():
            expected = text_model.model(**text).last_hidden_state
            assert torch.equal(model.model(**text).last_hidden_state, expected)
            logits = model(**text).logits[..., :vocab]
            torch.testing.assert_close(logits, text_model(**text).logits, rtol=0, atol=1e-5)

    # Only MMAR's own parts train: the image copies, the image embedder and the diffusion head.
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".image." in name or name.startswith(("model.image_embedder.", "diffusion_head."))
                             for name in trainable)
    routers = image_expert_routers(model)
    assert len(routers) == text_model.config.num_hidden_layers * (1 if kind == "ffn" else 5)
    check_text_unchanged()

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_steps(model, processor, digit_rows)
    after = dict(model.named_parameters())
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert any(".mlp.image." in name for name in changed)  # the experts did learn
    assert all(name in trainable for name in changed)  # weight decay touched no frozen weight
    check_text_unchanged()


def test_experts_run_on_image_positions_only_and_get_gradients_from_them_only(backbones, digit_rows):
    model, processor = expert_model(backbones["qwen2"], "ffn", freeze=False)
    collator = MMARDataCollator(processor, model.config.tokens_per_image, understanding_ratio=0.5, task_mix="batch")
    batch = collator([digit_rows[i] for i in range(4)])
    num_image_positions = int((batch["input_ids"] == model.config.image_token_id).sum())
    rows_seen = []
    hooks = [router.image.register_forward_hook(lambda m, args, out: rows_seen.append(args[0].shape[0]))
             for router in image_expert_routers(model)]
    last_layer = model.model.language_model.layers[-1].mlp
    assert isinstance(last_layer, ImageExpertRouter)

    # Each expert computes exactly the image positions of the batch, nothing else.
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         pixel_values=batch["pixel_values"]).last_hidden_state
    assert rows_seen == [num_image_positions] * len(image_expert_routers(model))
    # A loss on the image positions of the last layer reaches its expert, not its original MLP (overwritten there).
    is_image = batch["input_ids"] == model.config.image_token_id
    hidden[is_image].square().sum().backward(retain_graph=True)
    assert last_layer.image.down_proj.weight.grad.abs().sum() > 0
    assert last_layer.text.down_proj.weight.grad is None or not last_layer.text.down_proj.weight.grad.any()
    model.zero_grad(set_to_none=True)
    # A loss on the text before the first image never reaches an expert.
    first_image = int(is_image.float().argmax(-1).min())
    hidden[:, :first_image].square().sum().backward()
    assert all(p.grad is None or not p.grad.any() for r in image_expert_routers(model) for p in r.image.parameters())

    # Text only: no expert runs at all.
    rows_seen.clear()
    model.model(**processor.tokenizer(TEXTS, return_tensors="pt", padding=True))
    assert rows_seen == []
    # <img> tokens without images are ordinary text tokens (as in transformers' VLMs): the text weights run them.
    model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert rows_seen == []
    for hook in hooks:
        hook.remove()

    # Frozen: the training loss leaves the original weights without gradients; the experts get theirs.
    frozen, processor = expert_model(backbones["qwen2"], "ffn", freeze=True)
    perturb_head(frozen)  # a zero-initialised head passes no gradient back to the LLM states yet
    frozen.train()
    frozen(**collator([digit_rows[i] for i in range(4)])).loss.backward()
    language_model = frozen.model.language_model
    assert all(p.grad is None for name, p in language_model.named_parameters() if ".image." not in name)
    assert all(p.grad is not None and p.grad.any() for r in image_expert_routers(frozen) for p in r.image.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_recomputes_with_the_same_image_positions(kind, backbones, digit_rows):
    model, processor = expert_model(backbones["llama"], kind)
    perturb_experts(model)
    batch = MMARDataCollator(processor, model.config.tokens_per_image, understanding_ratio=0.5, task_mix="batch",
                             mask_ratio_min=0.5)([digit_rows[i] for i in range(4)])
    model.train()

    def gradients():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same diffusion noise in both runs
        model(**batch).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and any(".image." in name for name in plain)
    for name in plain:  # recomputed under the image positions of the call (a stale or missing mask would differ)
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_generation_routes_image_positions_with_and_without_the_kv_cache(kind, backbones, digit_rows):
    model, processor = expert_model(backbones["qwen2"], kind)
    model.eval()
    image = digit_rows[0]["image"]
    caption = processor(text=[f"{processor.image_token}What digit is this?"], images=[image], return_tensors="pt")
    prompt = processor(text=["a handwritten seven"], generation_mode="image", return_tensors="pt")
    text = processor.tokenizer(["The quick brown fox"], return_tensors="pt")
    perturb_head(model, 0.05)  # a non-zero head: images depend on the states

    def outputs():
        with torch.no_grad():
            result = {"logits": model(**caption).logits}
            for use_cache in (True, False):
                result[f"answer_{use_cache}"] = model.generate(**caption, max_new_tokens=4, do_sample=False,
                                                               use_cache=use_cache)
                result[f"image_{use_cache}"] = model.generate(
                    **prompt, generation_mode="image", num_iter=3, num_inference_steps=4, use_cache=use_cache,
                    token_cache_interval=None,  # the prefix cache alone, exact
                    generator=torch.Generator().manual_seed(0), output_type="pt", show_progress=False)
            result["text"] = model.generate(**text, max_new_tokens=6, do_sample=False)
        return result

    untouched = outputs()
    perturb_experts(model, scale=0.2)
    perturbed = outputs()
    for result in (untouched, perturbed):  # the cache changes nothing, in both generation modes
        assert torch.equal(result["answer_True"], result["answer_False"])
        torch.testing.assert_close(result["image_True"], result["image_False"], rtol=0, atol=1e-5)
    # The experts are used where images are (prefill of an image prompt, every masked-AR step) ...
    assert not torch.allclose(untouched["logits"], perturbed["logits"])
    assert not torch.allclose(untouched["image_True"], perturbed["image_True"])
    # ... and nowhere else.
    assert torch.equal(untouched["text"], perturbed["text"])


@pytest.mark.parametrize("kind", KINDS)
def test_token_cache_partial_steps_run_the_image_experts(kind, backbones):
    """The token cache's partial step (only some span tokens through the LLM) routes them to the experts as a full
    step does: with current keys and values both give the same states."""
    model, processor = expert_model(backbones["qwen2"], kind)
    perturb_experts(model, scale=0.2)
    model.eval()
    prompt = processor(text=["a handwritten seven"], generation_mode="image", return_tensors="pt")
    prefix_ids, prefix_mask = build_prompt_rows(prompt["input_ids"], prompt["attention_mask"], None, None,
                                                model.config, 1, with_uncond=False)
    L, D = model.config.tokens_per_image, model.config.token_dim
    tokens = torch.randn(1, L, D, generator=torch.Generator().manual_seed(0))
    still_masked = torch.rand(1, L, generator=torch.Generator().manual_seed(1)) > 0.5
    runner = ImageSpanRunner(model, prefix_ids, prefix_mask, True, 1, token_cache_interval=4)
    sampled = torch.zeros(1, L, dtype=torch.bool)
    sampled[0, [1, 5]] = True
    with torch.no_grad():
        full, _ = runner.hidden_states(0, tokens, still_masked)
        partial, _ = runner.hidden_states(1, tokens, still_masked, sampled)
    torch.testing.assert_close(partial, full, rtol=1e-5, atol=1e-5)


def test_save_load_and_remote_code_keep_experts_and_freezing(backbones, digit_rows, tmp_path):
    model, processor = expert_model(backbones["qwen2"], "attention")
    perturb_experts(model)
    perturb_head(model)
    model.eval()
    folder = tmp_path / "mmar"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert (folder / "image_experts_mmar.py").is_file()
    saved = load_file(folder / "model.safetensors")
    assert "model.language_model.layers.0.self_attn.q_proj.image.weight" in saved
    assert "model.language_model.layers.0.mlp.text.gate_proj.weight" in saved

    reloaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert {n for n, p in reloaded.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad}
    image = torch.from_numpy(np.asarray(digit_rows[3]["image"], dtype=np.float32) / 255.0).reshape(1, 8, 8)
    local = processor(text=["<img>What digit is this?"], images=[image], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reloaded(**local).logits, model(**local).logits)

    # Where the package is not installed: the folder's own code (image_experts_mmar.py included) loads it.
    save_file({"image": image.contiguous()}, tmp_path / "inputs.safetensors")
    script = tmp_path / "script" / "remote_check.py"
    script.parent.mkdir()
    script.write_text(REMOTE_SCRIPT)
    result = subprocess.run([sys.executable, "-S", str(script), str(folder), str(tmp_path / "inputs.safetensors"),
                             str(tmp_path / "outputs.safetensors")], cwd=tmp_path, env=isolated_python_env(tmp_path),
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    assert report["modeling_mmar"] is False and report["classes"]["model"].startswith("transformers_modules.")
    assert_the_installed_code_gives_the_same(load_file(tmp_path / "outputs.safetensors"), model, processor, local)

    # `mmar export` ships the experts' code too.
    assert mmar(["export", str(folder), str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "image_experts_mmar.py").is_file()


def test_lora_on_top_adapts_the_experts_and_keeps_frozen_text_exact(backbones, digit_rows):
    text_model = AutoModelForCausalLM.from_pretrained(backbones["llama"]).eval()
    model, processor = expert_model(backbones["llama"], "ffn")
    config = lora_config(r=4, model_config=model.config)
    targets = check_targets(model, config)
    assert targets and all(".mlp.image." in name for name in targets)  # the frozen text keeps its weights
    peft_model = get_peft_model(model, config)
    assert any(isinstance(m, LoraLayer) for m in peft_model.modules())
    train_steps(peft_model, processor, digit_rows, steps=2)
    text = processor.tokenizer(TEXTS, return_tensors="pt", padding=True)
    merged = peft_model.merge_and_unload().eval()
    with torch.no_grad():
        assert torch.equal(merged.model(**text).last_hidden_state, text_model.model(**text).last_hidden_state)

    # Not frozen, attention experts: adapters on both branches of every routed projection.
    shared, _ = expert_model(backbones["llama"], "attention", freeze=False)
    targets = check_targets(shared, lora_config(model_config=shared.config))
    for branch in ("text", "image"):
        assert sum(name.endswith(f"self_attn.q_proj.{branch}") for name in targets) == 2  # one per layer
        assert sum(f".mlp.{branch}.down_proj" in name for name in targets) == 2
    get_peft_model(shared, lora_config(model_config=shared.config))  # every target is a Linear peft can wrap


def test_mmar_finetune_runs_on_a_frozen_expert_model(tmp_path):
    from processors import build_tokenizer
    from training.data import digits_corpus

    tokenizer = build_tokenizer(digits_corpus())
    config = tiny_config(text_config={**TINY_QWEN2, "vocab_size": len(tokenizer)}, image_expert="ffn",
                         freeze_text_model=True)
    torch.manual_seed(0)
    MMARForConditionalGeneration(config).save_pretrained(tmp_path / "base")
    MMARProcessor.from_model_config(config, tokenizer).save_pretrained(tmp_path / "base")
    out = tmp_path / "lora"
    assert mmar(["finetune", f"base_model={tmp_path / 'base'}", f"output_dir={out}", "max_steps=3",
                 "training.per_device_train_batch_size=16", "evaluation.seeds_per_digit=1", "evaluation.num_iter=2",
                 "evaluation.num_inference_steps=2", "evaluation.batch_size=400", "evaluation.english=false"]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(out / "merged")
    assert merged.config.image_expert == "ffn" and image_expert_routers(merged)


def test_bad_image_expert_inputs_are_named(backbones, tmp_path):
    with pytest.raises(ValueError, match=r"image_expert must be one of \(None, 'ffn', 'attention'\)"):
        tiny_config(image_expert="moe")
    with pytest.raises(ValueError, match="unknown argument.*image_experts"):
        tiny_config(image_experts="ffn")
    # Only direct construction refuses: a config.json keeps attributes set after construction and loads again.
    config = tiny_config()
    config.rms_norm_eps = 1.0
    config.save_pretrained(tmp_path)
    assert MMARConfig.from_pretrained(tmp_path).rms_norm_eps == 1.0
    with pytest.raises(ValueError, match="unknown keyword argument.*image_experts"):
        MMARForConditionalGeneration.from_text_model(backbones["qwen2"], image_experts="ffn")
    with pytest.raises(ValueError, match=r"image_expert must be one of \(None, 'ffn', 'attention'\)"):
        MMARForConditionalGeneration.from_text_model(backbones["qwen2"], image_expert="moe")
    # A backbone whose layers have no `.mlp` (OPT: fc1/fc2) is named, from a config and from a text model.
    opt = {"model_type": "opt", "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "vocab_size": 96, "word_embed_proj_dim": 32, "max_position_embeddings": 64, "pad_token_id": 0,
           "bos_token_id": 1, "eos_token_id": 2}
    with pytest.raises(ValueError, match="OPTDecoderLayer has none"):
        MMARForConditionalGeneration(tiny_config(text_config=opt, image_expert="ffn"))
    opt_model = AutoModelForCausalLM.from_config(MMARConfig(text_config=opt).text_config)
    with pytest.raises(ValueError, match="OPTDecoderLayer has none"):
        MMARForConditionalGeneration.from_text_model(opt_model, tokenizer=build_bpe_tokenizer("qwen2"),
                                                     image_expert="ffn")
