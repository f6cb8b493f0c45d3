"""Compile probe: the first call with `compile_head` (compiles the head) against a warm one, then the defaults and the
compiled head side by side (10 images, 3 rounds), one JSON line per model.

    PYTHONPATH=. OMP_NUM_THREADS=1 python compile_probe.py MODEL static
"""
import json
import statistics
import sys
import time

import numpy as np
import torch

from benchmarks.acceleration_bench import DEFAULTS, Configuration, default_num_iter, make_call
from benchmarks.subjects import digit_prompts, load_subject

torch.set_num_threads(1)
model_dir, mode = sys.argv[1], sys.argv[2]
subject = load_subject(model_dir)
prompts = digit_prompts(subject.processor, np.arange(10))
sampling = {"guidance_scale": 3.0, "temperature": 1.0}
num_iter = default_num_iter(subject.model)
eager = make_call(subject.model, DEFAULTS, prompts, list(range(10)), num_iter, sampling)
compiled = make_call(subject.model, Configuration("compiled", options={"compile_head": mode}), prompts,
                     list(range(10)), num_iter, sampling)
eager()
t0 = time.perf_counter(); first = compiled(); cold = time.perf_counter() - t0
ratios, seconds = [], {"eager": [], "compiled": []}
for _ in range(3):
    for name, call in (("eager", eager), ("compiled", compiled)):
        t0 = time.perf_counter(); out = call(); seconds[name].append(time.perf_counter() - t0)
    ratios.append(seconds["eager"][-1] / seconds["compiled"][-1])
print(json.dumps({"model": model_dir, "mode": mode, "first_compiled_call_s": cold,
                  "warm_compiled_s_median": statistics.median(seconds["compiled"]),
                  "eager_s_median": statistics.median(seconds["eager"]), "speedup_rounds": ratios,
                  "max_abs_difference": float((eager() - compiled()).abs().max())}), flush=True)
