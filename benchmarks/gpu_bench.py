"""GPU suite: the paper-0.5b geometry (Qwen2-0.5B + KL-16 VAE, 256x256 -> 256 tokens of dim 16) in bf16.

Random weights (speed does not depend on them; nothing is downloaded). Figures:
- sampling images/s at several batch sizes with the optimised sampler (prefix cache, batched CFG, few head steps);
- the optimised sampler's speed-up over the naive MAR loop, and over Janus (same Qwen2-0.5B backbone, same
  number of image tokens, Janus-Pro's 16,384-entry codebook), side by side;
- training: MMAR vs the bare Qwen2-0.5B causal LM on the same tokens (fp32 weights, bf16 autocast, AdamW):
  ms/step, tokens/s, MFU (model FLOPs / s over the device's dense bf16 peak) and peak memory.
`settings["device"]` (default "cuda") lets the harness' own test run this code on CPU at a tiny size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, JanusForConditionalGeneration

from modeling_mmar import MMARConfig, MMARForConditionalGeneration

from .janus_bench import JanusRunner, janus_config
from .profiling import profile_call, sampler_regions
from .sampler_bench import SamplerVariant, make_runner
from .timing import ratio, side_by_side
from .training_bench import TrainStep, consistent_peaks, lm_batch

ROOT = Path(__file__).resolve().parent.parent
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                    "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def load_config(spec) -> MMARConfig:
    """An MMARConfig from a JSON path (relative to the repository) or a dict of fields."""
    if isinstance(spec, (str, Path)):
        path = Path(spec) if Path(spec).is_absolute() else ROOT / spec
        spec = json.loads(path.read_text())
    return MMARConfig(**spec)


def geometry_name(spec) -> str:
    return Path(spec).stem if isinstance(spec, (str, Path)) else "custom"


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def synthetic_prompts(config: MMARConfig, batch_size: int, prompt_tokens: int, device) -> dict:
    """`<bos> t1..tk <boi>` rows of ordinary text ids (no tokenizer is needed for speed)."""
    text = config.text_config
    first = 16  # clear of the special tokens the small vocabularies put first
    body = torch.arange(first, first + prompt_tokens) % text.vocab_size
    row = torch.cat([torch.tensor([text.bos_token_id or 1]), body, torch.tensor([config.boi_token_id])])
    ids = row.unsqueeze(0).repeat(batch_size, 1).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def synthetic_training_batch(config: MMARConfig, batch_size: int, prompt_tokens: int, mask_ratio: float = 0.85,
                             seed: int = 0) -> dict:
    """Half generation rows (`<bos> text <boi> img*L <eoi> <eos>`, `mask_ratio` of the tokens masked, no text
    labels), half understanding rows (`<bos> <boi> img*L <eoi> text <eos>`, answer labelled), random pixels."""
    generator = torch.Generator().manual_seed(seed)
    text, num_tokens = config.text_config, config.tokens_per_image
    words = (torch.arange(prompt_tokens) + 16) % text.vocab_size
    bos, eos = text.bos_token_id or 1, text.eos_token_id or 2
    span = [config.boi_token_id] + [config.image_token_id] * num_tokens + [config.eoi_token_id]
    rows, labels, masks = [], [], []
    for index in range(batch_size):
        if index % 2 == 0:
            row = [bos, *words.tolist(), *span, eos]
            label = [-100] * len(row)
            mask = torch.zeros(num_tokens, dtype=torch.bool)
            mask[torch.randperm(num_tokens, generator=generator)[: round(mask_ratio * num_tokens)]] = True
        else:
            row = [bos, *span, *words.tolist(), eos]
            label = [-100] * (len(span) + 1) + row[len(span) + 1:]
            mask = torch.zeros(num_tokens, dtype=torch.bool)
        rows.append(row)
        labels.append(label)
        masks.append(mask)
    size = config.image_size
    pixels = torch.rand(batch_size, config.num_channels, size, size, generator=generator) * 2 - 1
    ids = torch.tensor(rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
            "image_mask": torch.stack(masks), "labels": torch.tensor(labels)}


def training_flops(model: MMARForConditionalGeneration, batch: dict, with_image_parts: bool) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward; 2 FLOPs per multiply-add): dense
    layers, attention scores, and for MMAR the diffusion head x diffusion_batch_mul and the image embedder. The
    frozen VAE's encoder is not counted (it runs forward only, outside the model FLOPs convention)."""
    cfg = model.config
    text = cfg.text_config
    language_model = model.model.language_model
    dense = sum(p.numel() for p in language_model.parameters()) - language_model.get_input_embeddings().weight.numel()
    dense += model.lm_head.weight.numel()
    rows, seq = batch["input_ids"].shape
    tokens = rows * seq
    flops = 6 * dense * tokens + 6 * 2 * text.num_hidden_layers * text.hidden_size * seq * tokens
    if with_image_parts:
        masked = int(batch["image_mask"].sum())
        flops += 6 * sum(p.numel() for p in model.diffusion_head.parameters()) * cfg.diffusion_batch_mul * masked
        flops += 6 * sum(p.numel() for p in model.model.image_embedder.parameters()) * rows * cfg.tokens_per_image
    return float(flops)


def run_gpu_benchmark(settings: dict, repeats: int, out_dir: Path | None = None) -> dict:
    device = torch.device(settings.get("device", "cuda"))
    dtype = getattr(torch, settings.get("dtype", "bfloat16"))
    config = load_config(settings["config"])
    torch.manual_seed(0)
    with device:
        model = MMARForConditionalGeneration(config)
    model = model.to(dtype).eval()
    if model.model.vae is not None:
        model.model.vae.float()  # the frozen tokenizer stays in fp32, as from_pretrained keeps it
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    sampling = {"num_iter": min(settings["num_iter"], config.tokens_per_image),
                "guidance_scale": settings["guidance_scale"]}
    fast = SamplerVariant(f"optimised ({settings['scheduler']} {settings['steps']})",
                          scheduler=settings["scheduler"], steps=settings["steps"])

    def runner(variant, batch_size):
        prompts = synthetic_prompts(config, batch_size, settings["prompt_tokens"], device)
        return make_runner(model, variant, prompts, list(range(batch_size)), sampling, generator_device=device)

    sampling_rows = []
    for batch_size in settings["batch_sizes"]:
        timing = side_by_side({"fast": runner(fast, batch_size)}, repeats=repeats, warmup=1)["fast"]
        sampling_rows.append({"batch_size": batch_size, "images_per_s": batch_size / timing.median,
                              "seconds_per_image": timing.median / batch_size, "timing": timing.summary()})

    batch_size = settings["naive_batch_size"]
    fast_runner = runner(fast, batch_size)
    profile = {"variant": fast.name, "batch_size": batch_size, **profile_call(
        fast_runner, out_dir / "gpu_sampler_profile.txt" if out_dir is not None else None,
        **sampler_regions(model, fast_runner.scheduler))}
    naive = SamplerVariant("naive", steps=100, naive=True)
    timings = side_by_side({"naive": runner(naive, batch_size), "fast": fast_runner},
                           repeats=repeats, warmup=1)
    naive_speedup = ratio(timings["naive"], timings["fast"]).summary()

    janus_batch = settings["janus_batch_size"]
    janus_cfg = janus_config(config.text_config.to_dict(), config.tokens_per_image, config.boi_token_id,
                             config.image_token_id)
    janus_cfg.vq_config.num_embeddings = settings.get("janus_codebook", 16384)
    with device:
        janus = JanusForConditionalGeneration(janus_cfg)
    janus = janus.to(dtype).eval()
    janus_prompts = synthetic_prompts(config, janus_batch, settings["prompt_tokens"], device)
    timings = side_by_side({"janus": JanusRunner(janus, janus_prompts, settings["guidance_scale"],
                                                 config.boi_token_id),
                            "fast": runner(fast, janus_batch)}, repeats=repeats, warmup=1)
    janus_speedup = ratio(timings["janus"], timings["fast"]).summary()
    del janus

    training = run_gpu_training(config, settings, repeats, device, dtype, device_name)
    return {
        "name": "gpu",
        "title": f"GPU: {geometry_name(settings['config'])} geometry, {settings.get('dtype', 'bfloat16')}",
        "device": device_name,
        "settings": {**settings, "repeats": repeats},
        "rows": sampling_rows,
        "sampling": sampling_rows,
        "sampler_profile": profile,
        "naive_speedup": naive_speedup,
        "janus_speedup": janus_speedup,
        "training": training,
    }


def run_gpu_training(config, settings: dict, repeats: int, device, dtype, device_name: str) -> dict:
    """MMAR vs the bare backbone LM: fp32 weights + autocast(dtype), AdamW, same tokens."""
    batch = synthetic_training_batch(config, settings["train_batch_size"], settings["prompt_tokens"],
                                     mask_ratio=settings.get("mask_ratio", 0.85))
    torch.manual_seed(0)
    with device:
        mmar = MMARForConditionalGeneration(config)
        backbone = AutoModelForCausalLM.from_config(config.text_config)
    autocast = dtype if dtype != torch.float32 else None
    # `data.cache_image_tokens`: the frozen VAE ran once over the dataset, the batch carries its tokens.
    cached = {k: v for k, v in batch.items() if k != "pixel_values"}
    cached["image_tokens"] = mmar.model.encode_images(batch["pixel_values"].to(device))
    steps = {"mmar": TrainStep(mmar, batch, 1, autocast), "lm": TrainStep(backbone, lm_batch(batch), 1, autocast)}
    steps["mmar_cached_image_tokens"] = TrainStep(mmar, cached, 1, autocast, optimizer=steps["mmar"].optimizer)
    timings = side_by_side(steps, repeats=repeats, warmup=1)
    peak = peak_tflops(device_name)
    memory = consistent_peaks(steps)
    result = {}
    for name, step in steps.items():
        seconds = timings[name].median
        flops = training_flops(mmar, batch, with_image_parts=name != "lm")
        result[name] = {"seconds_per_step": seconds, "tokens_per_s": batch["input_ids"].numel() / seconds,
                        "model_tflops_per_s": flops / seconds / 1e12,
                        "mfu": None if peak is None else flops / seconds / (peak * 1e12),
                        "peak_memory_gb": memory[name]["peak_bytes"] / 2**30, "memory_source": memory[name]["source"]}
    result["time_ratio"] = ratio(timings["mmar"], timings["lm"]).summary()
    result["time_ratio_cached_image_tokens"] = ratio(timings["mmar_cached_image_tokens"], timings["lm"]).summary()
    result["peak_tflops_assumed"] = peak
    return result


__all__ = ["run_gpu_benchmark", "synthetic_training_batch", "training_flops"]
