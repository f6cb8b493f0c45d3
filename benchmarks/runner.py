"""Runs a suite's sections and writes the report. A failing section is recorded and the others still run."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import torch

from .report import write_report
from .suites import Suite
from .timing import machine_state, under_load

SECTION_ORDER = ("sampler", "acceleration", "janus", "num_iter_scaling", "training", "training_scaling",
                 "paper_training", "gpu")


class CudaUnavailable(RuntimeError):
    """The suite needs a CUDA device and there is none."""


def run_section(name: str, suite: Suite, out_dir: Path, model_dir: str | None, repeats: int) -> dict:
    settings = getattr(suite, name)
    if name == "sampler":
        from .sampler_bench import run_sampler_benchmark
        from .subjects import load_subject

        return run_sampler_benchmark(load_subject(model_dir), settings, repeats, out_dir=out_dir)
    if name == "acceleration":  # --model may name several folders, comma-separated
        from .acceleration_bench import run_acceleration_benchmark

        return run_acceleration_benchmark(settings, repeats, model_dir)
    if name in ("janus", "num_iter_scaling"):
        from .janus_bench import run_janus_benchmark

        section = run_janus_benchmark(settings, repeats, name=name)
        if name == "num_iter_scaling":
            section["title"] = f"Time per image vs num_iter ({settings['tokens'][0]} image tokens), MMAR and Janus"
        return section
    if name in ("training", "training_scaling"):
        from .training_bench import run_training_benchmark

        section = run_training_benchmark(settings, repeats, out_dir=out_dir)
        section["name"] = name
        if name == "training_scaling":
            section["title"] = "Training step vs sequence length: MMAR vs the bare backbone LM"
            section.pop("targets", None)
        return section
    if name == "paper_training":
        from .gpu_bench import load_config, run_gpu_training
        from .training_bench import overhead_targets

        training = run_gpu_training(load_config(settings["config"]), settings, repeats, torch.device("cpu"),
                                    torch.float32, "cpu")
        return {"name": name, "settings": settings, "training": training, "targets": overhead_targets(training),
                "targets_cached_image_tokens": overhead_targets(training, cached_image_tokens=True),
                "title": f"Training step at the paper geometry ({settings['config']}) on CPU, fp32: MMAR vs the "
                         "bare backbone LM"}
    if name == "gpu":
        from .gpu_bench import run_gpu_benchmark

        return run_gpu_benchmark(settings, repeats, out_dir)
    raise ValueError(f"unknown section {name!r}")


def run_suite(suite: Suite, out_dir: Path, model_dir: str | None = None, only: list[str] | None = None,
              repeats: int | None = None, threads: int = 1, log=print) -> dict:
    """Run `suite` (optionally `only` some sections) and write results.json / results.md / plots to `out_dir`.
    Returns {"written": {kind: path}, "sections": {...}, "errors": {section: traceback}}."""
    if suite.needs_cuda and not torch.cuda.is_available():
        raise CudaUnavailable(
            f"The {suite.name!r} suite needs a CUDA GPU and torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}). Run it on a GPU machine, or run `python -m benchmarks run --suite "
            "cpu-small` here.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(threads)
    repeats = suite.repeats if repeats is None else repeats
    names = [n for n in SECTION_ORDER if getattr(suite, n) is not None and (not only or n in only)]
    if only and set(only) - set(names):
        raise ValueError(f"suite {suite.name!r} has no section(s) {sorted(set(only) - set(names))}; it has "
                         f"{[n for n in SECTION_ORDER if getattr(suite, n) is not None]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_state()
    loads = [machine.get("load_average_1min")]
    sections, errors = {}, {}
    for name in names:
        start = time.monotonic()
        log(f"[benchmarks] {suite.name}: {name} ...")
        try:
            sections[name] = run_section(name, suite, out_dir, model_dir, repeats)
            sections[name]["seconds"] = time.monotonic() - start
        except Exception:  # noqa: BLE001 - recorded in the report, the other sections still run
            errors[name] = traceback.format_exc()
            log(f"[benchmarks] {name} FAILED:\n{errors[name]}")
        loads.append(machine_state().get("load_average_1min"))
        log(f"[benchmarks] {name} done in {time.monotonic() - start:.0f} s")
    machine["load_average_1min"] = max((x for x in loads if x is not None), default=None)
    machine["errors"] = errors
    written = write_report(out_dir, suite.name, machine, sections, loaded=under_load(machine))
    return {"written": written, "sections": sections, "errors": errors}


__all__ = ["CudaUnavailable", "SECTION_ORDER", "run_suite"]
