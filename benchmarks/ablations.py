"""`python -m benchmarks ablations [--quick] [--config BASE]`: the paper's ablations, reproduced in direction.

Every variant is the base config (default: the digits demo, training/configs/digits.yaml; training/configs/mnist.yaml
trains MMAR over a VAE) with one change, trained on the same split with the same seeds (>= 2), and measured the same
way: held-out caption accuracy, generated-digit accuracy by the independent judge, digit-FD, held-out image loss, at
few masked-AR steps too, inpainting holes, the bf16-vs-float64 x0-estimate error, step time.

    prediction  v / epsilon / x0 prediction, each trained with bf16 autocast and in fp32 (sampled likewise)
    tokens      continuous tokens vs the same tokens quantised by a k-means codebook learnt on the training tokens
    masking     two stages (default) vs stage 1 only ([0.7, 1]) vs [0, 1] only
    cost        diffusion_batch_mul 1 vs 4, embedder_depth 0 vs 2

Writes results.json, results.md, one bar chart per metric (seeds' spread), the x0-error plot, one sample grid per
variant and every run's resolved config under benchmarks/results/ablations/ (or --output-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # prediction | tokens | masking | cost
    description: str
    overrides: tuple[str, ...] = ()
    bf16: bool = False
    codebook_size: int | None = None  # VQ: tokens snapped to a k-means codebook of this many codewords

    @property
    def prediction_type(self) -> str:
        for item in self.overrides:
            if item.startswith("model.prediction_type="):
                return item.split("=", 1)[1]
        return "v_prediction"


@dataclass
class RunSettings:
    """What every run of one suite shares."""

    steps: int
    evaluation: dict
    few_step_num_iters: tuple[int, ...] = (2, 4)
    inpainting_num_iter: int = 4
    inpainting_images: int | None = None  # None: every held-out image
    numerics_images: int = 200
    extra_overrides: tuple[str, ...] = field(default_factory=tuple)


RESULTS_DIR = Path(__file__).resolve().parent / "results" / "ablations"
BASELINE = "v-fp32"
VARIANTS = (
    Variant(BASELINE, "prediction", "v-prediction, fp32: the default (continuous tokens, two stages, mul 4, depth 0)"),
    Variant("v-bf16", "prediction", "v-prediction, bf16 autocast", bf16=True),
    Variant("eps-fp32", "prediction", "epsilon-prediction, fp32", ("model.prediction_type=epsilon",)),
    Variant("eps-bf16", "prediction", "epsilon-prediction, bf16 autocast", ("model.prediction_type=epsilon",),
            bf16=True),
    Variant("x0-fp32", "prediction", "x0-prediction, fp32", ("model.prediction_type=sample",)),
    Variant("x0-bf16", "prediction", "x0-prediction, bf16 autocast", ("model.prediction_type=sample",), bf16=True),
    Variant("vq-256", "tokens", "tokens quantised by a 256-codeword k-means codebook", codebook_size=256),
    Variant("stage1-only", "masking", "mask ratio in [0.7, 1] throughout (no stage 2)",
            ("mask_schedule.stage2_start_step=null",)),
    Variant("ratio-0-1-only", "masking", "mask ratio in [0, 1] throughout (no stage 1)",
            ("collator.mask_ratio_min=0.0", "mask_schedule.stage2_start_step=null")),
    Variant("batch-mul-1", "cost", "diffusion_batch_mul 1 (default 4)", ("model.diffusion_batch_mul=1",)),
    Variant("embedder-depth-2", "cost", "embedder_depth 2 (default 0: linear)", ("model.embedder_depth=2",)),
)
# Variants whose training step costs differently from the baseline's: timed side by side before the runs.
TIMED_VARIANTS = (BASELINE, "v-bf16", "batch-mul-1", "embedder-depth-2")
SUITES = {
    # steps None: the base config's training.max_steps (the digits demo: 1,000).
    "full": {"seeds": 2, "steps": None, "seeds_per_digit": 20, "inpainting_images": None, "numerics_images": 200,
             "target_seconds": 90 * 60},
    "quick": {"seeds": 2, "steps": 150, "seeds_per_digit": 5, "inpainting_images": 100, "numerics_images": 100,
              "target_seconds": 15 * 60},
}
# Where bf16 runs this many times slower than fp32 (no native bf16 on the CPU), every run's steps shrink so that the
# suite keeps its time; all variants keep the same steps, so the comparison stays fair.
BF16_SLOW_RATIO = 2.0


def variant_named(name: str) -> Variant:
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(v.name for v in VARIANTS)}")


def time_variants(base: dict, settings: RunSettings, names, repeats: int = 3, steps_per_round: int = 5) -> dict:
    """Training-step seconds of `names` side by side (same batch, rotating order, `repeats` rounds): the cost knobs'
    step time and the bf16 / fp32 ratio of this CPU."""
    import torch

    from training.train import build_run

    from .ablations_run import resolve_config
    from .timing import ratio, side_by_side
    from .training_bench import TrainStep

    steps = {}
    batch = None
    for name in names:
        variant = variant_named(name)
        config = resolve_config(base, variant, 0, settings)
        with tempfile.TemporaryDirectory() as workdir:
            run = build_run(config, output_dir=workdir)
        if batch is None:
            rows = run.train_dataset.select(range(config["training"]["per_device_train_batch_size"]))
            batch = run.collator([rows[i] for i in range(len(rows))])
        steps[name] = TrainStep(run.model, batch, steps_per_round, torch.bfloat16 if variant.bf16 else None)
    timings = side_by_side(steps, repeats)
    baseline = timings[names[0]]
    return {name: {**{k: v / steps_per_round for k, v in timing.summary().items() if k != "rounds"},
                   "seconds_per_step_rounds": [s / steps_per_round for s in timing.seconds],
                   "speed_vs_baseline": ratio(baseline, timing).summary()}
            for name, timing in timings.items()} | {"_settings": {"repeats": repeats, "steps_per_round": steps_per_round,
                                                                  "batch_size": len(batch["input_ids"]),
                                                                  "threads": torch.get_num_threads()}}


def choose_steps(requested: int, step_timing: dict, variants) -> tuple[int, str]:
    """Keep `requested` steps where bf16 is native; where it is BF16_SLOW_RATIO times slower or more, scale every
    run's steps so the suite costs what it would with native bf16."""
    if BASELINE not in step_timing or "v-bf16" not in step_timing:
        return requested, "no bf16 timing: steps as requested"
    slowdown = step_timing["v-bf16"]["median_s"] / step_timing[BASELINE]["median_s"]
    if slowdown < BF16_SLOW_RATIO:
        return requested, (f"bf16 step {slowdown:.2f}x the fp32 step on this CPU (native bf16): every run trains "
                           f"{requested} steps")
    runs = len(variants)
    bf16_runs = sum(v.bf16 for v in variants)
    scale = runs / (runs - bf16_runs + slowdown * bf16_runs)
    steps = max(20, int(requested * scale) // 10 * 10)
    return steps, (f"bf16 step {slowdown:.1f}x the fp32 step (no native bf16): every run trains {steps} steps "
                   f"instead of {requested} so that the suite keeps its time")


def prepare_base(config_path: str | Path, output: Path, vae: str | None, overrides) -> dict:
    """The base run config; for a config over a VAE, that VAE (given, or trained once into output/vae)."""
    from training.run_config import load_config

    base = load_config(config_path, list(overrides))
    model_section = base.setdefault("model", {})
    if vae is not None:
        model_section["vae"] = str(vae)
    if not model_section.get("vae") and base.get("vae_training"):
        from training.vae import load_vae_config, train_vae

        vae_dir = output / "vae"
        if not (vae_dir / "config.json").is_file():
            train_vae(load_vae_config(Path(config_path).parent / base["vae_training"]), vae_dir)
        model_section["vae"] = str(vae_dir)
    base.pop("vae_training", None)
    return base


def fit_suite_codebook(base: dict, settings: RunSettings, size: int):
    """The k-means codebook of the VQ variant, learnt once on the training images' clean tokens."""
    from training.train import build_run

    from .ablations_run import resolve_config
    from .ablations_vq import fit_codebook, training_tokens

    config = resolve_config(base, variant_named(BASELINE), 0, settings)
    with tempfile.TemporaryDirectory() as workdir:
        run = build_run(config, output_dir=workdir)
    tokens = training_tokens(run.model, run.processor, run.train_dataset)
    return fit_codebook(tokens, size=size, seed=0)


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return None


def run_ablations(output_dir: str | Path = RESULTS_DIR, config_path: str | Path | None = None, quick: bool = False,
                  seeds: int | None = None, steps: int | None = None, only=None, threads: int | None = None,
                  vae: str | None = None, overrides=(), evaluation_overrides: dict | None = None,
                  suite_overrides: dict | None = None, timing_repeats: int = 3) -> dict:
    """Train and measure every variant x seed, then write the report; returns the results dict.
    `evaluation_overrides` change how every run samples (e.g. fewer diffusion steps), `suite_overrides` the suite's
    sizes (seeds_per_digit, inpainting_images, numerics_images); both are for tests and exploration."""
    import torch
    from tqdm.auto import tqdm

    from training.cli import DEFAULT_RUN_CONFIG
    from training.demo import EVALUATION_DEFAULTS

    from training.judge import get_judge

    from .ablations_probes import fd_reference_points
    from .ablations_report import write_report
    from .ablations_run import resolve_config, train_and_evaluate

    started = time.monotonic()
    config_path = Path(config_path or DEFAULT_RUN_CONFIG)
    suite = {**SUITES["quick" if quick else "full"], **(suite_overrides or {})}
    seeds = suite["seeds"] if seeds is None else seeds
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    variants = [variant_named(n) for n in only] if only else list(VARIANTS)
    if BASELINE not in [v.name for v in variants]:
        variants.insert(0, variant_named(BASELINE))  # every claim is measured against it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads is not None:
        os.environ["MMAR_NUM_THREADS"] = str(threads)  # the Trainer's thread policy then keeps it fixed
        torch.set_num_threads(threads)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    base = prepare_base(config_path, output, vae, overrides)
    requested = int(steps or suite["steps"] or base["training"]["max_steps"])
    evaluation = {**EVALUATION_DEFAULTS, **(base.get("evaluation") or {}), "seeds_per_digit": suite["seeds_per_digit"],
                  **(evaluation_overrides or {})}
    settings = RunSettings(steps=requested, evaluation=evaluation, inpainting_images=suite["inpainting_images"],
                           numerics_images=suite["numerics_images"])
    timed = [n for n in TIMED_VARIANTS if n in [v.name for v in variants]]
    step_timing = time_variants(base, settings, timed, repeats=timing_repeats) if timing_repeats else {}
    if steps is None:
        settings.steps, steps_choice = choose_steps(requested, step_timing, variants)
    else:
        steps_choice = f"--steps {steps}: every run trains {steps} steps"
    print(f"[ablations] {steps_choice}")
    codebook = None
    if any(v.codebook_size for v in variants):
        codebook = fit_suite_codebook(base, settings, max(v.codebook_size or 0 for v in variants))

    dataset = (base.get("data") or {}).get("dataset", "digits")
    split_seed = int((base.get("data") or {}).get("split_seed", base.get("seed", 0)))
    judge = {"dataset": dataset, "split_seed": split_seed,
             "judge_heldout_accuracy": get_judge(split_seed, dataset).heldout_accuracy,
             **fd_reference_points(dataset, split_seed, 10 * evaluation["seeds_per_digit"])}
    results = {"suite": "quick" if quick else "full", "base_config": str(config_path), "seeds": list(range(seeds)),
               "steps": settings.steps, "steps_choice": steps_choice, "evaluation": evaluation, "judge": judge,
               "step_timing": step_timing, "variants": {}, "machine": _machine(load_before)}
    config_dir = output / "configs"
    config_dir.mkdir(exist_ok=True)
    plan = [(seed, variant) for seed in range(seeds) for variant in variants]  # seeds outer: load drift is shared
    samples = {}
    for seed, variant in tqdm(plan, desc="ablation runs"):
        config = resolve_config(base, variant, seed, settings)
        (config_dir / f"{variant.name}-seed{seed}.json").write_text(json.dumps(config, indent=2, default=str))
        print(f"[ablations] {variant.name} seed {seed}: {variant.description}")
        metrics, artefacts = train_and_evaluate(config, variant, settings, codebook)
        entry = results["variants"].setdefault(variant.name, {
            "family": variant.family, "description": variant.description, "overrides": list(variant.overrides),
            "bf16": variant.bf16, "prediction_type": variant.prediction_type,
            "codebook_size": variant.codebook_size, "runs": {}})
        entry["runs"][str(seed)] = {"config": f"configs/{variant.name}-seed{seed}.json", **metrics}
        if seed == 0 and "images" in artefacts:
            samples[variant.name] = artefacts
        print(f"[ablations] {variant.name} seed {seed} done in {metrics.get('train_seconds', 0):.0f} s of training, "
              f"caption {metrics.get('caption_accuracy', float('nan')):.3f}, generated "
              f"{metrics.get('generated_digit_accuracy', float('nan')):.3f}, FD {metrics.get('digit_fd', float('nan')):.2f}")
        (output / "results.json").write_text(json.dumps(results, indent=1, default=str))  # partial results survive
    results["machine"].update(load_average_1min_after=_load(), total_seconds=time.monotonic() - started,
                              target_seconds=suite["target_seconds"])
    written = write_report(output, results, samples)
    results["written"] = [str(p) for p in written]
    return results


def _machine(load_before) -> dict:
    import platform

    import torch

    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = f.read()
    except OSError:  # pragma: no cover
        pass
    return {"torch": torch.__version__, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags, "load_average_1min_before": load_before,
            "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="150 steps, fewer samples: <= 15 min on 2 CPU cores")
    parser.add_argument("--config", default=None, help="base run config (default: training/configs/digits.yaml)")
    parser.add_argument("--output-dir", default=None, help="default: benchmarks/results/ablations")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per variant (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="training steps of every run (default: the "
                        "config's, or 150 with --quick; scaled down where bf16 is not native)")
    parser.add_argument("--only", default=None, help=f"comma-separated variants (the baseline {BASELINE} always "
                        f"runs): {', '.join(v.name for v in VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the training "
                        "policy: the cores other processes leave free)")
    parser.add_argument("--vae", default=None, help="a trained VAE folder for a config over a VAE (default: train "
                        "its vae_training config once)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="base config overrides")


def run_command(args: argparse.Namespace) -> int:
    """The `ablations` sub-command; bad arguments are one line on stderr and exit status 2."""
    import sys

    try:
        for name in ("seeds", "steps", "threads"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        if args.config is not None and not Path(args.config).is_file():
            raise ValueError(f"--config {args.config!r} is not a file")
        only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
        for name in only or ():
            variant_named(name)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output = Path(args.output_dir) if args.output_dir else RESULTS_DIR
    results = run_ablations(output, args.config, args.quick, args.seeds, args.steps, only, args.threads, args.vae,
                            args.overrides)
    print((output / "results.md").read_text())
    print(f"Wrote {len(results['written'])} files to {output}")
    return 0


__all__ = ["BASELINE", "SUITES", "VARIANTS", "add_arguments", "choose_steps", "run_ablations", "run_command",
           "time_variants", "variant_named"]
