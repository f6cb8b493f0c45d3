"""Benchmark suites: which sections run, at which sizes, with how many side-by-side rounds.

cpu-small  the default: the demo geometry (or the trained demo model) on CPU, every section; < 8 min on a quiet
           2-core machine.
cpu-paper  the training step at the paper-0.5b geometry (Qwen2-0.5B, real vocabulary, + KL-16 VAE, 256x256) on
           CPU in fp32 against the bare Qwen2-0.5B: the geometry the overhead targets are about; ~20 GB RAM, ~15 min.
cpu-sampler  the sampling accelerations (acceleration_bench) against the naive MAR loop on trained models:
           `--suite cpu-sampler --model mmar-demo/model,mmar-demo-64tokens/model`; ~30 min on 2 cores.
smoke      the same mechanics at the smallest sizes with 1 round (the harness' own test; numbers mean nothing).
gpu        the paper-0.5b geometry (Qwen2-0.5B + KL-16 VAE, 256x256) in bf16 on a CUDA device.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    repeats: int = 3
    needs_cuda: bool = False
    sampler: dict | None = None  # sampler_bench: optimised vs naive
    acceleration: dict | None = None  # acceleration_bench: every acceleration vs naive, per model, + Pareto plot
    janus: dict | None = None  # janus_bench over image tokens (also the time-vs-tokens scaling plot)
    num_iter_scaling: dict | None = None  # janus_bench at one L over num_iter
    training: dict | None = None  # training_bench headline (+ profile)
    training_scaling: dict | None = None  # training_bench over sequence length
    paper_training: dict | None = None  # training step at the paper-0.5b geometry (gpu_bench.run_gpu_training)
    gpu: dict | None = None  # gpu_bench
    extra: dict = field(default_factory=dict)


SUITES = {
    "cpu-small": Suite(
        name="cpu-small",
        description="demo geometry (Qwen2 128x4 layers, 8x8 digits, 16 tokens of dim 4) on CPU, 1 thread",
        repeats=3,
        sampler={"images": 10, "num_iter": 16, "guidance_scale": 3.0, "temperature": 1.0,
                 "quality_seeds_per_digit": 10},
        janus={"tokens": [16, 64, 256, 1024], "images": 1, "num_iter": [4, 16], "guidance_scale": 3.0,
               "scheduler": "ddim", "steps": 25},
        num_iter_scaling={"tokens": [64], "images": 1, "num_iter": [4, 8, 16, 32, 64], "guidance_scale": 3.0,
                          "scheduler": "ddim", "steps": 25},
        training={"batch_size": 64, "steps_per_round": 4, "image_tokens": [16], "profile": True,
                  "variants": ["head_checkpointing"]},
        training_scaling={"batch_size": 8, "steps_per_round": 1, "image_tokens": [16, 64, 256, 1024],
                          "profile": False},
    ),
    "cpu-sampler": Suite(
        name="cpu-sampler",
        description="sampling accelerations vs the naive loop, per trained model (--model A,B): speed, quality, "
                    "Pareto plot, batch 1/16/64, memory; 1 thread",
        repeats=3,
        # A subset of acceleration_bench.default_configurations() (each alone, then combined) and 200 images per
        # configuration for quality, so that both models fit in ~30 min; throughput without the naive loop (its
        # batch-64 call on the 64-token model alone would take minutes).
        acceleration={"images": 10, "guidance_scale": 3.0, "temperature": 1.0, "quality_seeds_per_digit": 20,
                      "batch_sizes": [1, 16, 64], "memory": True, "throughput_with_naive": False,
                      "configurations": ["DPM-Solver++ 5", "DiSA DPM-Solver++ 10->3", "DPM-Solver++ 10 + condition cache 4",
                                         "DPM-Solver++ 10 + token cache 8", "DPM-Solver++ 10 + token cache 8 + condition cache 4",
                                         "DPM-Solver++ 5 + token cache 8 + condition cache 4",
                                         "DPM-Solver++ 10, num_iter / 2", "DPM-Solver++ 10, num_iter / 2 + GtR 1",
                                         "DPM-Solver++ 10, num_iter / 2 + token cache 8",
                                         "DPM-Solver++ 10, num_iter / 2 + GtR 1 + token cache 8"]},
    ),
    "smoke": Suite(
        name="smoke",
        description="harness self-test: smallest sizes, 1 round (the numbers mean nothing)",
        repeats=1,
        sampler={"images": 2, "num_iter": 4, "guidance_scale": 3.0, "temperature": 1.0,
                 "quality_seeds_per_digit": 1, "reference_steps": 4, "ddim_steps": [2], "dpm_steps": [2]},
        janus={"tokens": [16], "images": 1, "num_iter": [4], "guidance_scale": 3.0, "scheduler": "ddim",
               "steps": 2},
        num_iter_scaling={"tokens": [16], "images": 1, "num_iter": [2, 4], "guidance_scale": 3.0,
                          "scheduler": "ddim", "steps": 2},
        training={"batch_size": 4, "steps_per_round": 1, "image_tokens": [16], "profile": True,
                  "variants": ["head_checkpointing"]},
        training_scaling={"batch_size": 2, "steps_per_round": 1, "image_tokens": [16, 64], "profile": False},
    ),
    "cpu-paper": Suite(
        name="cpu-paper",
        description="training step, paper-0.5b geometry (Qwen2-0.5B + KL-16 VAE, 256x256) on CPU, fp32, vs Qwen2-0.5B",
        repeats=3,
        paper_training={"config": "training/configs/model/paper-0.5b.json", "train_batch_size": 2,
                        "prompt_tokens": 8},
    ),
    "gpu": Suite(
        name="gpu",
        description="paper-0.5b geometry (Qwen2-0.5B + KL-16 VAE, 256x256, 256 tokens) in bf16 on CUDA",
        repeats=3,
        needs_cuda=True,
        gpu={"config": "training/configs/model/paper-0.5b.json", "batch_sizes": [1, 16, 64], "num_iter": 64,
             "guidance_scale": 3.0, "scheduler": "ddim", "steps": 25, "naive_batch_size": 16,
             "janus_batch_size": 16, "train_batch_size": 16, "prompt_tokens": 8},
    ),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {sorted(SUITES)}")
    return SUITES[name]


__all__ = ["SUITES", "Suite", "get_suite"]
