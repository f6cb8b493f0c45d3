"""Throughput probe: images/s (side by side, median of rounds) and peak tensor memory per image (LiveTensorMemory) of
the defaults and of `defaults, num_iter / 2 + token cache 8` at the given batch sizes, one JSON line per row.

    PYTHONPATH=. OMP_NUM_THREADS=1 python throughput_probe.py MODEL ROUNDS 1,16
"""
import json
import sys

import torch

from benchmarks.acceleration_bench import DEFAULTS, Configuration, default_num_iter, throughput
from benchmarks.subjects import load_subject

torch.set_num_threads(1)
model_dir, rounds, batch_sizes = sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3].split(",")]
subject = load_subject(model_dir)
configurations = [DEFAULTS, Configuration("defaults, num_iter / 2 + token cache 8", num_iter_fraction=0.5,
                                          options={"token_cache_interval": 8})]
for batch_size in batch_sizes:
    for row in throughput(subject.model, configurations, subject.processor, default_num_iter(subject.model),
                          {"guidance_scale": 3.0, "temperature": 1.0}, [batch_size], rounds, memory=True):
        print(json.dumps({"model": model_dir, **row}), flush=True)
