"""Text -> image: the optimised sampler against the naive MAR loop at the same `num_iter`, step by step.

Variants, each adding one optimisation to the previous one:
  naive             no prefix cache, separate cond/uncond LLM passes and head calls, 100-step DDPM head
  batched CFG       cond + uncond rows in one LLM pass and one head call (still no cache, DDPM 100)
  + prefix cache    the prompt's KV cache reused at every masked-AR step (DDPM 100)
  + DDIM n / DPM-Solver++ n   fewer head steps with a diffusers scheduler built from the model's
Speed: images/s of each variant and its speed-up over naive, measured side by side (timing.side_by_side).
Quality (only with the trained demo model): generated-digit accuracy and digit-FD of the same prompts and seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .counters import count_calls
from .naive_sampler import naive_generate
from .subjects import digit_prompts
from .timing import ratio, side_by_side

QUALITY_TOLERANCE = 0.10  # "matched quality": within 10 % of the naive path's digit-FD and accuracy
SPEEDUP_TARGET = 5.0


@dataclass(frozen=True)
class SamplerVariant:
    name: str
    scheduler: str = "ddpm"  # "ddpm" (MMARScheduler) | "ddim" | "dpm++"
    steps: int = 100
    use_cache: bool = True
    naive: bool = False


DEFAULT_VARIANTS = (
    SamplerVariant("naive MAR loop (no cache, separate CFG, DDPM 100)", naive=True),
    SamplerVariant("batched CFG (no cache, DDPM 100)", use_cache=False),
    SamplerVariant("+ prefix KV cache (DDPM 100)"),
    SamplerVariant("+ DDIM 50", scheduler="ddim", steps=50),
    SamplerVariant("+ DDIM 25", scheduler="ddim", steps=25),
    SamplerVariant("+ DPM-Solver++ 20", scheduler="dpm++", steps=20),
)


def build_scheduler(kind: str, config):
    """The head's diffusion process (cosine, v-prediction, trailing respacing) in the scheduler `kind`."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from modeling_mmar.sampling_mmar import default_scheduler

    mmar = default_scheduler(config)
    if kind == "ddpm":
        return mmar
    settings = {k: v for k, v in mmar.config.items() if k != "default_num_inference_steps"}  # MMAR-only key
    if kind == "ddim":
        return DDIMScheduler.from_config(settings)
    if kind == "dpm++":
        return DPMSolverMultistepScheduler.from_config(settings)
    raise ValueError(f"unknown scheduler kind {kind!r}: use 'ddpm', 'ddim' or 'dpm++'")


def make_runner(model, variant: SamplerVariant, prompts: dict, seeds: list[int], sampling: dict, output_type="pt"):
    """A no-argument callable that generates one image per prompt row with `variant` (fresh generators each call,
    so every call makes the same images)."""
    def generators():
        return [torch.Generator().manual_seed(int(s)) for s in seeds]

    if variant.naive:
        def run():
            return naive_generate(model, **prompts, num_inference_steps=variant.steps, generator=generators(),
                                  output_type=output_type, **sampling)
        return run
    scheduler = build_scheduler(variant.scheduler, model.config)

    def run():
        return model.generate(**prompts, generation_mode="image", scheduler=scheduler,
                              num_inference_steps=variant.steps, use_cache=variant.use_cache, generator=generators(),
                              output_type=output_type, show_progress=False, **sampling)
    return run


def sequential_calls(model, runner) -> dict:
    """LLM passes and diffusion-head calls of one run (one batch: every image shares them)."""
    with count_calls(backbone=model.model.language_model, head=model.diffusion_head) as calls:
        runner()
    return {"backbone_passes": calls["backbone"], "head_calls": calls["head"]}


def quality(images: torch.Tensor, digits: np.ndarray, judge_seed: int = 0) -> dict:
    """Generated-digit accuracy and digit-FD (vs the real held-out digits) from the project's metrics."""
    from training.demo import load_metric

    gray = images.float().mean(dim=1).numpy()  # [N, H, W] in [0, 1]
    accuracy = load_metric("generated_digit_accuracy").compute(predictions=gray, references=digits.tolist(),
                                                               judge_seed=judge_seed)
    fd = load_metric("digit_fd").compute(predictions=gray, judge_seed=judge_seed)
    return {"generated_digit_accuracy": accuracy["generated_digit_accuracy"], "digit_fd": fd["digit_fd"]}


def matched_quality(candidate: dict, reference: dict, tolerance: float = QUALITY_TOLERANCE) -> bool:
    """Within `tolerance` (relative) of the reference: digit-FD not higher, accuracy not lower by more."""
    fd_ok = candidate["digit_fd"] <= reference["digit_fd"] * (1 + tolerance)
    accuracy_ok = candidate["generated_digit_accuracy"] >= reference["generated_digit_accuracy"] * (1 - tolerance)
    return bool(fd_ok and accuracy_ok)


def run_sampler_benchmark(subject, settings: dict, repeats: int, variants=DEFAULT_VARIANTS) -> dict:
    """settings: images (batch size timed), num_iter, guidance_scale, temperature, quality_seeds_per_digit."""
    model = subject.model
    sampling = {"num_iter": settings["num_iter"], "guidance_scale": settings["guidance_scale"],
                "temperature": settings.get("temperature", 1.0)}
    digits = np.arange(settings["images"]) % 10
    prompts = digit_prompts(subject.processor, digits)
    seeds = list(range(len(digits)))
    runners = {v.name: make_runner(model, v, prompts, seeds, sampling) for v in variants}
    calls = {v.name: sequential_calls(model, runners[v.name]) for v in variants}
    timings = side_by_side(runners, repeats=repeats, warmup=1)
    naive = variants[0].name
    rows = []
    for variant in variants:
        timing = timings[variant.name]
        rows.append({
            "variant": variant.name,
            "images_per_s": len(digits) / timing.median,
            "seconds_per_image": timing.median / len(digits),
            "speedup_vs_naive": ratio(timings[naive], timing).summary(),
            "backbone_passes": calls[variant.name]["backbone_passes"],
            "head_calls": calls[variant.name]["head_calls"],
            "timing": timing.summary(),
        })

    quality_rows = {}
    if subject.trained and settings.get("quality_seeds_per_digit"):
        per_digit = settings["quality_seeds_per_digit"]
        quality_digits = np.repeat(np.arange(10), per_digit)
        quality_prompts = digit_prompts(subject.processor, quality_digits)
        quality_seeds = np.tile(np.arange(per_digit), 10).tolist()
        for variant in variants:
            images = make_runner(model, variant, quality_prompts, quality_seeds, sampling)()
            quality_rows[variant.name] = quality(images, quality_digits)
        for row in rows:
            row["quality"] = quality_rows[row["variant"]]
            row["quality_matched"] = matched_quality(quality_rows[row["variant"]], quality_rows[naive])

    headline = pick_headline(rows, subject.trained)
    return {
        "name": "sampler",
        "title": "Text -> image sampler: optimised vs naive MAR loop",
        "model": subject.source,
        "quality_measured": bool(quality_rows),
        "settings": {**sampling, "images_per_batch": len(digits), "repeats": repeats,
                     "quality_images": 10 * settings.get("quality_seeds_per_digit", 0) if quality_rows else 0},
        "rows": rows,
        "headline": headline,
    }


def pick_headline(rows: list[dict], quality_measured: bool) -> dict:
    """The fastest optimised variant whose quality matches the naive path's (any variant when quality is not
    measurable), with its speed-up and whether the >= 5x target is met."""
    candidates = [r for r in rows[1:] if not quality_measured or r.get("quality_matched")]
    if not candidates:
        return {"variant": None, "speedup": None, "target": f">= {SPEEDUP_TARGET:g}x", "met": False,
                "note": "no optimised variant matched the naive path's quality"}
    best = max(candidates, key=lambda r: r["speedup_vs_naive"]["median"])
    return {"variant": best["variant"], "speedup": best["speedup_vs_naive"], "target": f">= {SPEEDUP_TARGET:g}x",
            "met": best["speedup_vs_naive"]["median"] >= SPEEDUP_TARGET,
            "quality": "matched within 10 %" if quality_measured else "not applicable (random model)"}


__all__ = ["DEFAULT_VARIANTS", "SamplerVariant", "build_scheduler", "make_runner", "matched_quality",
           "run_sampler_benchmark"]
