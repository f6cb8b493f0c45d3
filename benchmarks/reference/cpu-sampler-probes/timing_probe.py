"""Timing probe: the naive loop and named configurations side by side (every round runs each once, the order rotating;
speed-ups are per-round ratios), 10 images per call.

    PYTHONPATH=.:benchmarks/reference/cpu-sampler-probes OMP_NUM_THREADS=1 python timing_probe.py MODEL 10 ROUNDS "dpm10;dpm10-tok8"
"""
import json, sys, time, torch, numpy as np
torch.set_num_threads(1)
from benchmarks.acceleration_bench import Configuration, NAIVE, make_call, default_num_iter
from benchmarks.subjects import load_subject, digit_prompts
model_dir, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = load_subject(model_dir); m = s.model; K0 = default_num_iter(m)
from probe_configs import C as PROBE_CONFIGS  # noqa: E402
C = [NAIVE] + [PROBE_CONFIGS[name] for name in sys.argv[4].split(";")]
C = [Configuration(name, c.scheduler, c.steps, c.num_iter_fraction, c.options) if c is not NAIVE else c
     for name, c in zip(["naive"] + sys.argv[4].split(";"), C)]
digits = np.arange(n) % 10
p = digit_prompts(s.processor, digits)
calls = {c.name: make_call(m, c, p, list(range(n)), K0, {"guidance_scale": 3.0, "temperature": 1.0}) for c in C}
for r in range(rounds):
    order = list(calls)[r % len(calls):] + list(calls)[:r % len(calls)]
    t = {}
    for name in order:
        t0 = time.perf_counter(); calls[name](); t[name] = time.perf_counter() - t0
    print(json.dumps({"model": model_dir, "round": r, "images": n, "seconds": {k: round(v, 3) for k, v in t.items()},
                      "speedup": {k: round(t[C[0].name] / v, 2) for k, v in t.items()}}), flush=True)
