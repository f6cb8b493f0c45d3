"""CPU thread policy for training on a shared machine.

torch starts one intra-op thread per core. When another CPU-heavy process runs, both oversubscribe the cores and
each slows far more than its share (the demo fell from ~6 to ~1 step/s on 2 cores). `CpuThreadsCallback` measures
how many cores the *other* processes keep busy (from /proc/stat, minus this process's own CPU time) and uses the
rest, re-checking as training goes, so a shared machine degrades gracefully. An explicit `OMP_NUM_THREADS` or
`MMAR_NUM_THREADS` always wins.
"""

from __future__ import annotations

import functools
import os
import time

import torch
from transformers import TrainerCallback

RECHECK_SECONDS = 20.0
MEASURE_SECONDS = 1.0  # the stretch of training over which the other processes' load is measured


@functools.lru_cache(maxsize=None)  # the CPU does not change while a run asks twice (arguments, then metrics)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags); None where
    /proc/cpuinfo cannot be read. Without it, torch emulates bf16 matmuls (~10x slower than fp32 here)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _total_busy_seconds() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None  # not Linux: no measurement, keep torch's choice
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cores_busy_elsewhere(window: float = 0.5) -> float | None:
    """Cores kept busy by other processes over `window` seconds (None where /proc/stat is unavailable)."""
    total, own, start = _total_busy_seconds(), _own_cpu_seconds(), time.monotonic()
    if total is None:
        return None
    time.sleep(window)
    total_after, own_after = _total_busy_seconds(), _own_cpu_seconds()
    elapsed = time.monotonic() - start
    return max(0.0, (total_after - total) - (own_after - own)) / elapsed


def threads_for(cores: int, busy_elsewhere: float) -> int:
    """The cores left over by other processes (at least one)."""
    return max(1, min(cores, round(cores - busy_elsewhere)))


def user_fixed_threads() -> bool:
    return any(os.environ.get(name) for name in ("OMP_NUM_THREADS", "MMAR_NUM_THREADS"))


class CpuThreadsCallback(TrainerCallback):
    """Sets torch's intra-op threads to the cores other processes leave free, at the start and every
    `recheck_seconds` of training (CPU runs only; a no-op when the user fixed the thread count)."""

    def __init__(self, recheck_seconds: float = RECHECK_SECONDS, verbose: bool = True):
        self.recheck_seconds = recheck_seconds
        self.verbose = verbose
        self.enabled = not user_fixed_threads()
        self.cores = usable_cores()
        self.history: list[tuple[int, int, float]] = []  # (step, threads, cores busy elsewhere)
        self._last_check = None
        self._window_start = None

    def on_train_begin(self, args, state, control, **kwargs):
        if os.environ.get("MMAR_NUM_THREADS"):
            torch.set_num_threads(int(os.environ["MMAR_NUM_THREADS"]))
        on_cpu = args.use_cpu or not torch.accelerator.is_available()
        self.enabled = self.enabled and on_cpu
        if self.enabled:
            self._apply(state.global_step, cores_busy_elsewhere())

    def on_step_end(self, args, state, control, **kwargs):
        if not self.enabled or time.monotonic() - self._last_check < self.recheck_seconds:
            return
        if self._window_start is None:  # measure over the last stretch of training, not with a pause
            self._window_start = (time.monotonic(), _total_busy_seconds(), _own_cpu_seconds())
            return
        start, total, own = self._window_start
        elapsed = time.monotonic() - start
        if elapsed < MEASURE_SECONDS:
            return
        total_after = _total_busy_seconds()
        if total is None or total_after is None or elapsed <= 0:
            return
        busy = max(0.0, (total_after - total) - (_own_cpu_seconds() - own)) / elapsed
        self._window_start = None
        self._apply(state.global_step, busy)

    def _apply(self, step: int, busy_elsewhere: float | None) -> None:
        self._last_check = time.monotonic()
        if busy_elsewhere is None:
            return
        threads = threads_for(self.cores, busy_elsewhere)
        changed = threads != torch.get_num_threads()
        self.history.append((step, threads, round(busy_elsewhere, 2)))
        if changed:
            torch.set_num_threads(threads)
            if self.verbose:
                print(f"[step {step}] {busy_elsewhere:.1f} of {self.cores} cores busy with other processes: "
                      f"training on {threads} thread(s)")


__all__ = ["CpuThreadsCallback", "cores_busy_elsewhere", "threads_for"]
