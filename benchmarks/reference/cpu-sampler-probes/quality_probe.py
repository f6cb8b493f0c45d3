"""Quality probe: digit-FD and judged accuracy of named configurations (probe_configs.C) on a trained model, the
naive loop's seeds for all (naive-other-seeds: seeds + 10,000). Its "seconds" are one unpaired call: not a timing.

    PYTHONPATH=.:benchmarks/reference/cpu-sampler-probes OMP_NUM_THREADS=1 python quality_probe.py MODEL SEEDS_PER_DIGIT "naive;dpm10"
"""
import json, sys, time, torch, numpy as np
torch.set_num_threads(1)
from benchmarks.acceleration_bench import Configuration, NAIVE, make_call, default_num_iter
from benchmarks.sampler_bench import quality
from benchmarks.subjects import load_subject, digit_prompts
model_dir, seeds_per_digit, names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(";")
s = load_subject(model_dir); m = s.model
K0 = default_num_iter(m)
from probe_configs import C  # noqa: E402
digits = np.repeat(np.arange(10), seeds_per_digit)
prompts = digit_prompts(s.processor, digits)
seeds = np.tile(np.arange(seeds_per_digit), 10).tolist()
sampling = {"guidance_scale": 3.0, "temperature": 1.0}
for name in names:
    sd = [x + 10000 for x in seeds] if name == "naive-other-seeds" else seeds
    call = make_call(m, C[name], prompts, sd, K0, sampling)
    t = time.perf_counter(); images = call(); dt = time.perf_counter() - t
    q = quality(images, digits)
    print(json.dumps({"model": model_dir, "config": name, "images": len(digits), "seconds": round(dt, 2),
                      "fd": round(q["digit_fd"], 3), "acc": round(q["generated_digit_accuracy"], 4)}), flush=True)
