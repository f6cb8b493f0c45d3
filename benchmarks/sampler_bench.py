"""Text -> image: the optimised sampler against the naive MAR loop at the same `num_iter`, step by step.

Variants, each adding one optimisation to the previous one:
  naive             no prefix cache, separate cond/uncond LLM passes and head calls, 100-step DDPM head
  batched CFG       cond + uncond rows in one LLM pass and one head call, the head's condition embedding computed
                    once per masked-AR step and its timestep embedding once per head step (no cache, DDPM 100)
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
from .profiling import profile_call, sampler_regions
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


def default_variants(reference_steps: int = 100, ddim_steps=(50, 25), dpm_steps=(20,)) -> tuple[SamplerVariant, ...]:
    """naive, then one optimisation at a time (see the module docstring)."""
    n = reference_steps
    variants = [
        SamplerVariant(f"naive MAR loop (no cache, separate CFG, DDPM {n})", steps=n, naive=True),
        SamplerVariant(f"batched CFG (no cache, DDPM {n})", steps=n, use_cache=False),
        SamplerVariant(f"+ prefix KV cache (DDPM {n})", steps=n),
        *(SamplerVariant(f"+ DDIM {k}", scheduler="ddim", steps=k) for k in ddim_steps),
        *(SamplerVariant(f"+ DPM-Solver++ {k}", scheduler="dpm++", steps=k) for k in dpm_steps),
    ]
    return tuple(variants)


DEFAULT_VARIANTS = default_variants()


def build_scheduler(kind: str, config):
    """The head's diffusion process (cosine, v-prediction, trailing respacing) in the scheduler `kind`."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from modeling_mmar import MMARScheduler

    mmar = MMARScheduler.from_model_config(config)
    if kind == "ddpm":
        return mmar
    settings = {k: v for k, v in mmar.config.items() if k != "default_num_inference_steps"}  # MMAR-only key
    if kind == "ddim":
        return DDIMScheduler.from_config(settings)
    if kind == "dpm++":
        return DPMSolverMultistepScheduler.from_config(settings)
    raise ValueError(f"unknown scheduler kind {kind!r}: use 'ddpm', 'ddim' or 'dpm++'")


def make_runner(model, variant: SamplerVariant, prompts: dict, seeds: list[int], sampling: dict, output_type="pt",
                generator_device="cpu"):
    """A no-argument callable that generates one image per prompt row with `variant` (fresh generators each call,
    so every call makes the same images). On a GPU, `generator_device=device` keeps the per-image random draws
    on the device (CPU generators would copy every draw to it)."""
    def generators():
        return [torch.Generator(device=generator_device).manual_seed(int(s)) for s in seeds]

    if variant.naive:
        def run():
            return naive_generate(model, **prompts, num_inference_steps=variant.steps, generator=generators(),
                                  output_type=output_type, **sampling)
        return run
    scheduler = build_scheduler(variant.scheduler, model.config)

    def run():
        return model.generate(**prompts, generation_mode="image", scheduler=scheduler,
                              num_inference_steps=variant.steps, use_cache=variant.use_cache,
                              generator=generators(), output_type=output_type, show_progress=False, **sampling)
    run.scheduler = scheduler  # for profiling regions
    return run


def counted_run(model, runner) -> tuple[object, dict]:
    """Run once (this is also the warm-up of the timed rounds) counting LLM passes and diffusion-head evaluations
    (counted at the head's input projection, which every evaluation runs)."""
    with count_calls(backbone=model.model.language_model, head=model.diffusion_head.input_proj) as calls:
        output = runner()
    return output, {"backbone_passes": calls["backbone"], "head_calls": calls["head"]}


def same_samples_as_naive(variant: SamplerVariant, naive: SamplerVariant) -> bool:
    """Variants that differ from the naive loop only in how the work is batched and cached draw the same images."""
    return not variant.naive and variant.scheduler == "ddpm" and variant.steps == naive.steps


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


def run_sampler_benchmark(subject, settings: dict, repeats: int, variants=None, out_dir=None) -> dict:
    """settings: images (batch size timed), num_iter, guidance_scale, temperature, quality_seeds_per_digit, and
    optionally reference_steps / ddim_steps / dpm_steps (the variants). The first variant is the naive baseline."""
    if variants is None:
        variants = default_variants(**{k: settings[k] for k in ("reference_steps", "ddim_steps", "dpm_steps")
                                               if k in settings})
    model = subject.model
    sampling = {"num_iter": settings["num_iter"], "guidance_scale": settings["guidance_scale"],
                "temperature": settings.get("temperature", 1.0)}
    digits = np.arange(settings["images"]) % 10
    prompts = digit_prompts(subject.processor, digits)
    seeds = list(range(len(digits)))
    naive = variants[0]
    runners = {v.name: make_runner(model, v, prompts, seeds, sampling) for v in variants}
    outputs, calls = {}, {}
    for variant in variants:
        outputs[variant.name], calls[variant.name] = counted_run(model, runners[variant.name])
    timings = side_by_side(runners, repeats=repeats, warmup=0)
    rows = []
    for variant in variants:
        timing = timings[variant.name]
        row = {
            "variant": variant.name,
            "images_per_s": len(digits) / timing.median,
            "seconds_per_image": timing.median / len(digits),
            "speedup_vs_naive": ratio(timings[naive.name], timing).summary(),
            "backbone_passes": calls[variant.name]["backbone_passes"],
            "head_calls": calls[variant.name]["head_calls"],
            "timing": timing.summary(),
        }
        if same_samples_as_naive(variant, naive):  # the optimisation must not change a single image
            row["max_abs_diff_vs_naive"] = float((outputs[variant.name] - outputs[naive.name]).abs().max())
        rows.append(row)

    if subject.trained and settings.get("quality_seeds_per_digit"):
        add_quality(rows, model, subject.processor, variants, sampling, settings["quality_seeds_per_digit"])
    headline = pick_headline(rows, any("quality" in row for row in rows))
    profiled = next((v for v in variants if v.name == headline["variant"]), None)
    profile = None
    if profiled is not None:  # where the optimised sampler spends its time
        runner = runners[profiled.name]
        profile = {"variant": profiled.name, **profile_call(
            runner, out_dir / "sampler_profile.txt" if out_dir is not None else None,
            **sampler_regions(model, getattr(runner, "scheduler", None)))}
    return {
        "name": "sampler",
        "title": "Text -> image sampler: optimised vs naive MAR loop",
        "model": subject.source,
        "quality_measured": any("quality" in row for row in rows),
        "settings": {**sampling, "images_per_batch": len(digits), "repeats": repeats,
                     "quality_images": 10 * settings.get("quality_seeds_per_digit", 0) if subject.trained else 0},
        "rows": rows,
        "headline": headline,
        "profile": profile,
    }


def add_quality(rows: list[dict], model, processor, variants, sampling: dict, seeds_per_digit: int) -> None:
    """Digit-FD and generated-digit accuracy of every variant on the same prompts and seeds (10 digits x seeds).
    Variants that draw the naive loop's exact samples (checked in the timed runs) share its figures."""
    digits = np.repeat(np.arange(10), seeds_per_digit)
    prompts = digit_prompts(processor, digits)
    seeds = np.tile(np.arange(seeds_per_digit), 10).tolist()
    naive = variants[0]
    reference = quality(make_runner(model, naive, prompts, seeds, sampling)(), digits)
    for variant, row in zip(variants, rows):
        if variant is naive:
            row["quality"] = reference
        elif same_samples_as_naive(variant, naive) and row.get("max_abs_diff_vs_naive", 1.0) < 1e-4:
            row["quality"] = {**reference, "note": "same samples as the naive loop"}
        else:
            row["quality"] = quality(make_runner(model, variant, prompts, seeds, sampling)(), digits)
        row["quality_matched"] = matched_quality(row["quality"], reference)


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


__all__ = ["DEFAULT_VARIANTS", "SamplerVariant", "build_scheduler", "counted_run", "default_variants", "make_runner",
           "matched_quality", "quality", "run_sampler_benchmark"]
