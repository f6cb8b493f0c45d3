"""Counts sequential module calls (LLM passes, diffusion-head calls) during one run, with forward pre-hooks."""

from __future__ import annotations

import contextlib
from collections import Counter

from torch import nn


@contextlib.contextmanager
def count_calls(**modules: nn.Module):
    """`with count_calls(backbone=m.model.language_model, head=m.diffusion_head) as calls: ...`; afterwards
    `calls["backbone"]` is how many times that module's forward ran (nested calls of the same module included)."""
    calls: Counter = Counter()
    handles = []
    for name, module in modules.items():
        def hook(_module, _args, name=name):
            calls[name] += 1

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["count_calls"]
