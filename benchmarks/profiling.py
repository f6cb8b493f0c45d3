"""Where the time goes: torch.profiler around one call, with named regions around the parts of a model.

Regions are `record_function` ranges opened by forward hooks (modules) or by wrapping bound methods for the
duration of the profile (e.g. a scheduler's `step`); nothing in the model's code changes. A region's time is its
inclusive CPU time (on CUDA add the device columns of the saved table); backward passes are not inside any region
(autograd runs them after the forward hooks closed), the table lists them by autograd node.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function


@contextlib.contextmanager
def regions(modules: dict | None = None, methods: dict | None = None):
    """modules: {region name: nn.Module}; methods: {region name: (object, attribute name)}."""
    handles, patched = [], []
    for name, module in (modules or {}).items():
        ranges = []

        def enter(_module, _args, name=name, ranges=ranges):
            ranges.append(record_function(name))
            ranges[-1].__enter__()

        def leave(_module, _args, _output, ranges=ranges):
            ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    for name, (owner, attribute) in (methods or {}).items():
        original = getattr(owner, attribute)

        @functools.wraps(original)  # keeps the signature: callers inspect it (e.g. which kwargs `step` takes)
        def traced(*args, _original=original, _name=name, **kwargs):
            with record_function(_name):
                return _original(*args, **kwargs)

        own = vars(owner).get(attribute)  # a class's function, or an instance attribute; None: inherited method
        setattr(owner, attribute, traced)
        patched.append((owner, attribute, own))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for owner, attribute, original in patched:
            if original is None:
                delattr(owner, attribute)  # back to the class's method
            else:
                setattr(owner, attribute, original)


def profile_call(fn, table_path: Path | None = None, modules: dict | None = None, methods: dict | None = None,
                 row_limit: int = 30) -> dict:
    """Profile one call of `fn` (already warmed up by the caller). Returns {"total_ms" (all traced CPU time),
    "regions_ms": {name: ms}, "regions_share": {name: fraction of total}}; writes the top-ops table to
    `table_path` when given."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with regions(modules, methods), profile(activities=activities) as prof:
        fn()
    averages = prof.key_averages()
    total_ms = averages.self_cpu_time_total / 1e3
    if table_path is not None:
        sort_by = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        table_path.write_text(averages.table(sort_by=sort_by, row_limit=row_limit))
    names = set(modules or {}) | set(methods or {})
    region_ms = {e.key: e.cpu_time_total / 1e3 for e in averages if e.key in names}
    return {"total_ms": total_ms, "regions_ms": region_ms,
            "regions_share": {k: v / total_ms for k, v in region_ms.items()}}


def sampler_regions(model, scheduler=None) -> dict:
    """Regions of `model.generate(generation_mode="image")`: LLM passes, diffusion head, scheduler steps, noise."""
    from modeling_mmar.sampling_mmar import PerImageRandomness

    methods = {"noise draws": (PerImageRandomness, "normal")}
    if scheduler is not None:
        methods["scheduler step"] = (scheduler, "step")
    return {"modules": {"LLM": model.model.language_model, "diffusion head": model.diffusion_head},
            "methods": methods}


__all__ = ["profile_call", "regions", "sampler_regions"]
