"""Sampling accelerations against the naive MAR loop, model by model: speed, quality and the Pareto front.

For each model (the trained digits demo, 16 tokens; a model with >= 64 tokens, training/configs/digits_64tokens.yaml)
every configuration generates the same prompts with the same seeds:
- speed: images/s of each configuration and its speed-up over the naive loop (benchmarks/naive_sampler.py: no prefix
  cache, separate conditional / unconditional passes, 100-step DDPM head) at the model's default `num_iter`, measured
  side by side (timing.side_by_side: every round runs every configuration, ratios are taken within a round);
- quality (trained models only): digit-FD and the judge's accuracy on 10 digits x `quality_seeds_per_digit`, and the
  naive loop again with other seeds, which shows how much the figures move by chance alone;
- "matched": FD within 10 % of the naive loop's and judged accuracy within 2 points (the issue's target: a matched
  configuration at >= 10x the naive loop);
- throughput at batch 1, 16 and 64 prompts and peak tensor memory per image of the naive loop, the defaults and the
  fastest matched configuration.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from .naive_sampler import naive_generate
from .sampler_bench import build_scheduler, quality
from .subjects import digit_prompts, load_subject
from .timing import ratio, side_by_side, time_call

FD_TOLERANCE = 0.10  # relative to the naive loop's digit-FD
ACCURACY_TOLERANCE = 0.02  # absolute (2 points)
SPEEDUP_TARGET = 10.0
NOISE_SEED_OFFSET = 10_000  # the naive loop's second run (quality noise) uses seeds from here


@dataclass(frozen=True)
class Configuration:
    """One way to sample. `scheduler`/`steps` None: generate()'s default head sampler (DPM-Solver++ 10);
    `num_iter_fraction` of the model's default num_iter; `options`: further generate() keywords (the accelerations)."""

    name: str
    scheduler: str | None = None  # "ddpm" (MMARScheduler) | "ddim" | "dpm++"
    steps: int | None = None
    num_iter_fraction: float = 1.0
    options: dict = field(default_factory=dict)
    naive: bool = False
    defaults: bool = False  # generate()'s own defaults; every other configuration runs exact full LLM steps unless
                            # its options set token_cache_interval (the default "auto" turns the token cache on)

    def num_iter(self, default: int) -> int:
        return max(1, round(default * self.num_iter_fraction))


NAIVE = Configuration("naive MAR loop (no cache, separate CFG, DDPM 100)", naive=True)
PREVIOUS_DEFAULT = Configuration("previous default (prefix cache, batched CFG, DDPM 100)", scheduler="ddpm", steps=100)
DEFAULTS = Configuration("defaults (generate() / pipeline: DPM-Solver++ 10, token cache 8)", defaults=True)


def default_configurations() -> tuple[Configuration, ...]:
    """naive, the previous and the new defaults, then each acceleration alone and combined (names say what). A
    suite may run a subset (settings["configurations"])."""
    return (
        NAIVE,
        PREVIOUS_DEFAULT,
        DEFAULTS,
        Configuration("DDPM 25", scheduler="ddpm", steps=25),
        Configuration("DPM-Solver++ 20", scheduler="dpm++", steps=20),
        Configuration("DPM-Solver++ 10", scheduler="dpm++", steps=10),
        Configuration("DPM-Solver++ 5", scheduler="dpm++", steps=5),
        Configuration("DiSA DDPM 50->5", scheduler="ddpm", steps=50, options={"final_num_inference_steps": 5}),
        Configuration("DiSA DPM-Solver++ 10->3", scheduler="dpm++", steps=10,
                      options={"final_num_inference_steps": 3}),
        Configuration("DPM-Solver++ 10 + condition cache 2", options={"guidance_cache_interval": 2}),
        Configuration("DPM-Solver++ 10 + condition cache 4", options={"guidance_cache_interval": 4}),
        Configuration("DPM-Solver++ 10 + token cache 4", options={"token_cache_interval": 4}),
        Configuration("DPM-Solver++ 10 + token cache 8", options={"token_cache_interval": 8}),
        Configuration("DPM-Solver++ 10 + both caches 4",
                      options={"token_cache_interval": 4, "guidance_cache_interval": 4}),
        Configuration("DPM-Solver++ 10 + token cache 8 + condition cache 4",
                      options={"token_cache_interval": 8, "guidance_cache_interval": 4}),
        Configuration("DPM-Solver++ 5 + token cache 8 + condition cache 4", scheduler="dpm++", steps=5,
                      options={"token_cache_interval": 8, "guidance_cache_interval": 4}),
        Configuration("DPM-Solver++ 10, num_iter / 2", num_iter_fraction=0.5),
        Configuration("DPM-Solver++ 10, num_iter / 2 + GtR 1", num_iter_fraction=0.5,
                      options={"reconstruction_steps": 1}),
        Configuration("DPM-Solver++ 10, num_iter / 2 + token cache 8", num_iter_fraction=0.5,
                      options={"token_cache_interval": 8}),
        Configuration("DPM-Solver++ 10, num_iter / 2 + GtR 1 + token cache 8", num_iter_fraction=0.5,
                      options={"reconstruction_steps": 1, "token_cache_interval": 8}),
        Configuration("DPM-Solver++ 10, num_iter / 4 + GtR 1", num_iter_fraction=0.25,
                      options={"reconstruction_steps": 1}),
        Configuration("DPM-Solver++ 10 + compiled head (static)", options={"compile_head": "static"}),
    )


def default_num_iter(model) -> int:
    from modeling_mmar.sampling_mmar import DEFAULT_NUM_ITER

    return min(DEFAULT_NUM_ITER, model.config.tokens_per_image)


def make_call(model, configuration: Configuration, prompts: dict, seeds: list[int], num_iter: int, sampling: dict):
    """A no-argument callable generating one image per prompt row (fresh generators: every call makes the same
    images). The naive loop runs at `num_iter`, a configuration at its fraction of it."""
    def generators():
        return [torch.Generator().manual_seed(int(s)) for s in seeds]

    if configuration.naive:
        return lambda: naive_generate(model, **prompts, num_iter=num_iter, num_inference_steps=100,
                                      generator=generators(), output_type="pt", **sampling)
    kwargs = dict(configuration.options) if configuration.defaults else {"token_cache_interval": None,
                                                                         **configuration.options}
    if configuration.scheduler is not None:
        kwargs["scheduler"] = build_scheduler(configuration.scheduler, model.config)
    if configuration.steps is not None:
        kwargs["num_inference_steps"] = configuration.steps
    return lambda: model.generate(**prompts, generation_mode="image", num_iter=configuration.num_iter(num_iter),
                                  generator=generators(), output_type="pt", show_progress=False, **sampling,
                                  **kwargs)


def is_matched(candidate: dict, reference: dict) -> bool:
    return bool(candidate["digit_fd"] <= reference["digit_fd"] * (1 + FD_TOLERANCE)
                and candidate["generated_digit_accuracy"] >= reference["generated_digit_accuracy"]
                - ACCURACY_TOLERANCE)


class LiveTensorMemory(TorchDispatchMode):
    """Follows every tensor storage that an op creates while it is active (freed when its last Python tensor goes):
    `peak` is the largest total of live bytes, i.e. the memory a call needs beyond what existed before it (the
    weights). It agrees with torch.profiler's memory timeline (within allocator rounding) and is ~50x faster."""

    def __init__(self):
        super().__init__()
        self.storages, self.live, self.peak = {}, 0, 0

    def _release(self, key) -> None:
        entry = self.storages.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.live -= entry[1]
                del self.storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                continue
            entry = self.storages.get(key)
            if entry is None:
                self.storages[key] = [1, storage.nbytes()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            else:
                entry[0] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def peak_memory_bytes(fn) -> int:
    """Peak bytes of the tensors one call of `fn` creates (LiveTensorMemory)."""
    tracker = LiveTensorMemory()
    with tracker:
        fn()
    return tracker.peak


def throughput(model, configurations, processor, num_iter: int, sampling: dict, batch_sizes, repeats: int,
               memory: bool) -> list[dict]:
    """images/s of `configurations` side by side at each batch size (prompts cycle through the 10 digits), and
    peak tensor memory per image."""
    rows = []
    for batch_size in batch_sizes:
        digits = np.arange(batch_size) % 10
        prompts = digit_prompts(processor, digits)
        calls = {c.name: make_call(model, c, prompts, list(range(batch_size)), num_iter, sampling)
                 for c in configurations}
        timings = side_by_side(calls, repeats=repeats, warmup=1)
        for configuration in configurations:
            timing = timings[configuration.name]
            row = {"configuration": configuration.name, "batch_size": batch_size,
                   "images_per_s": batch_size / timing.median, "timing": timing.summary()}
            if memory:
                row["peak_memory_per_image_mb"] = peak_memory_bytes(calls[configuration.name]) / batch_size / 2**20
            rows.append(row)
    return rows


def benchmark_model(subject, settings: dict, repeats: int, configurations) -> dict:
    model = subject.model
    num_iter = settings.get("num_iter") or default_num_iter(model)
    sampling = {"guidance_scale": settings.get("guidance_scale", 3.0), "temperature": settings.get("temperature", 1.0)}
    digits = np.arange(settings["images"]) % 10
    prompts = digit_prompts(subject.processor, digits)
    seeds = list(range(len(digits)))
    calls = {c.name: make_call(model, c, prompts, seeds, num_iter, sampling) for c in configurations}
    compile_cost = {}
    for c in configurations:  # the first call of a compiled head compiles it: that call minus a warm one
        if c.options.get("compile_head"):
            model.diffusion_head.__dict__.pop("_compiled_forward", None)
            cold, warm = time_call(calls[c.name]), time_call(calls[c.name])
            compile_cost[c.name] = {"first_call_s": cold, "warm_call_s": warm, "compile_s": cold - warm}
    timings = side_by_side(calls, repeats=repeats, warmup=1)
    naive = configurations[0]
    rows = [{"configuration": c.name, "num_iter": num_iter if c.naive else c.num_iter(num_iter),
             "options": {**c.options, **({"scheduler": c.scheduler} if c.scheduler else {}),
                         **({"num_inference_steps": c.steps} if c.steps else {})},
             "images_per_s": len(digits) / timings[c.name].median,
             "speedup_vs_naive": ratio(timings[naive.name], timings[c.name]).summary(),
             "timing": timings[c.name].summary()} for c in configurations]
    result = {"model": subject.source, "tokens_per_image": model.config.tokens_per_image, "num_iter": num_iter,
              "images_per_batch": len(digits), "rows": rows, "quality_measured": False, "compile_cost": compile_cost}
    seeds_per_digit = settings.get("quality_seeds_per_digit")
    if subject.trained and seeds_per_digit:
        add_quality(result, model, subject.processor, configurations, num_iter, sampling, seeds_per_digit)
    matched = [r for r in rows[1:] if r.get("matched", not result["quality_measured"])]
    best = max(matched, key=lambda r: r["speedup_vs_naive"]["median"], default=None)
    result["headline"] = {
        "configuration": best["configuration"] if best else None,
        "speedup": best["speedup_vs_naive"] if best else None,
        "met": bool(best and best["speedup_vs_naive"]["median"] >= SPEEDUP_TARGET and result["quality_measured"]),
        "target": f">= {SPEEDUP_TARGET:g}x the naive loop, FD within {FD_TOLERANCE:.0%}, accuracy within "
                  f"{ACCURACY_TOLERANCE * 100:g} points",
    }
    if settings.get("batch_sizes"):
        chosen = [naive] if settings.get("throughput_with_naive", True) else []
        chosen.append(next(c for c in configurations if c.name == DEFAULTS.name))
        if best and best["configuration"] not in {c.name for c in chosen}:
            chosen.append(next(c for c in configurations if c.name == best["configuration"]))
        result["throughput"] = throughput(model, chosen, subject.processor, num_iter, sampling,
                                          settings["batch_sizes"], repeats, settings.get("memory", True))
    return result


def add_quality(result: dict, model, processor, configurations, num_iter: int, sampling: dict,
                seeds_per_digit: int) -> None:
    """digit-FD and judged accuracy of every configuration on 10 digits x `seeds_per_digit` (same seeds), and of the
    naive loop with other seeds (the chance spread of the figures)."""
    digits = np.repeat(np.arange(10), seeds_per_digit)
    prompts = digit_prompts(processor, digits)
    seeds = np.tile(np.arange(seeds_per_digit), 10).tolist()
    figures = {c.name: quality(make_call(model, c, prompts, seeds, num_iter, sampling)(), digits)
               for c in configurations}
    reference = figures[configurations[0].name]
    for row in result["rows"]:
        row["quality"] = figures[row["configuration"]]
        row["matched"] = is_matched(row["quality"], reference) if row is not result["rows"][0] else True
    other_seeds = [s + NOISE_SEED_OFFSET for s in seeds]
    result["naive_other_seeds"] = quality(make_call(model, configurations[0], prompts, other_seeds, num_iter,
                                                    sampling)(), digits)
    result["quality_measured"] = True
    result["quality_images"] = len(digits)


def run_acceleration_benchmark(settings: dict, repeats: int, model_dirs: str | None = None) -> dict:
    """settings: images (timed batch), quality_seeds_per_digit, batch_sizes, memory, throughput_with_naive (default
    True), guidance_scale, temperature, optionally num_iter, configurations (names of `default_configurations()` to run; the naive loop always runs
    first) and random_model (MMARConfig overrides of the random model used without folders). `model_dirs`:
    comma-separated trained model folders (default: a random demo-geometry model, speed only)."""
    configurations = default_configurations()
    if settings.get("configurations"):
        wanted = set(settings["configurations"])
        configurations = (NAIVE, *(c for c in configurations[1:] if c.name in wanted or c is DEFAULTS))
    folders = [d.strip() for d in model_dirs.split(",") if d.strip()] if model_dirs else [None]
    models = []
    for folder in folders:
        if folder is None:
            from .subjects import random_subject, randomize_head

            subject = random_subject(**settings.get("random_model", {}))
            randomize_head(subject.model)  # a zero head would make every configuration draw the same zeros
        else:
            subject = load_subject(folder)
        models.append(benchmark_model(subject, settings, repeats, configurations))
    return {"name": "acceleration", "title": "Sampling accelerations vs the naive MAR loop (speed, quality, Pareto)",
            "settings": {**settings, "repeats": repeats}, "models": models,
            "rows": [row for m in models for row in m["rows"]]}


__all__ = ["Configuration", "default_configurations", "is_matched", "make_call", "peak_memory_bytes",
           "run_acceleration_benchmark"]
