"""Side-by-side timing: every candidate runs once per round, rounds repeat, ratios are taken within a round.

Shared CPUs drift (other processes start and stop), so a figure is never one candidate's time alone: each round runs
all candidates back to back (in a rotating order, so none always runs first or last), and a speed-up is the median
over rounds of the ratio measured inside each round. The spread is the min and max over rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Timing:
    """Seconds of one candidate over the rounds (one value per round)."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def low(self) -> float:
        return min(self.seconds)

    @property
    def high(self) -> float:
        return max(self.seconds)

    def summary(self) -> dict:
        return {"median_s": self.median, "min_s": self.low, "max_s": self.high, "rounds": list(self.seconds)}


@dataclass
class Ratio:
    """baseline_seconds / candidate_seconds in each round: > 1 means the candidate is faster."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def summary(self) -> dict:
        return {"median": self.median, "min": min(self.values), "max": max(self.values), "rounds": list(self.values)}

    def __str__(self) -> str:
        return f"{self.median:.2f}x ({min(self.values):.2f}-{max(self.values):.2f})"


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object]) -> float:
    """Wall seconds of one call (CUDA work included: the device is synchronised before and after)."""
    _synchronize()
    start = time.perf_counter()
    fn()
    _synchronize()
    return time.perf_counter() - start


def side_by_side(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Time every candidate once per round for `repeats` rounds, after `warmup` untimed rounds.

    Round r runs the candidates starting at index r (rotation), so a slow start or end of round is shared.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    timings = {name: Timing() for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            timings[name].seconds.append(time_call(candidates[name]))
    return timings


def ratio(baseline: Timing, candidate: Timing) -> Ratio:
    """Per-round speed-up of `candidate` over `baseline` (same rounds, so the same machine state)."""
    if len(baseline.seconds) != len(candidate.seconds):
        raise ValueError("ratio needs two timings from the same side_by_side run")
    return Ratio([b / c for b, c in zip(baseline.seconds, candidate.seconds)])


def machine_state() -> dict:
    """What the numbers were measured on, for the report: threads, load average, torch and device."""
    import os
    import platform

    state = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        state["load_average_1min"] = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every OS
        state["load_average_1min"] = None
    if torch.cuda.is_available():
        state["cuda_device"] = torch.cuda.get_device_name()
    return state


def under_load(state: dict) -> bool:
    """True when other processes kept the CPUs busy: the 1-minute load average exceeds the torch thread count."""
    load = state.get("load_average_1min")
    return load is not None and load > max(1, state.get("cpu_count") or 1) * 0.75


__all__ = ["Ratio", "Timing", "machine_state", "ratio", "side_by_side", "time_call", "under_load"]
