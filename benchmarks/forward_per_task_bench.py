"""A training step with `forward_per_task` on and off, side by side, on a run config's own batches.

    python -m benchmarks.forward_per_task_bench --config training/configs/smollm2-digits.yaml --repeats 3

One step = the trainer's loss (one forward over the batch, or one per task) and its backward, on each of `--batches`
batches from the config's collator; no optimizer step, so every round sees the same weights. Writes
benchmarks/results/forward-per-task/<config>.json (seconds per round, the speed-up's median and spread, the padding
each way, the machine's load).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .timing import machine_state, ratio, side_by_side

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "forward-per-task"


def padding_fraction(batches, per_task: bool, config) -> float:
    """Share of the token slots the forwards run over that are padding."""
    from training.task_forwards import task_groups

    slots = real = 0
    for batch in batches:
        groups = task_groups(batch, config.image_token_id, config.tokens_per_image) if per_task else [batch]
        slots += sum(g["attention_mask"].numel() for g in groups)
        real += int(batch["attention_mask"].sum())
    return 1.0 - real / slots


def main(argv=None) -> int:
    from training.row_noise import RowSeedCollator
    from training.run_config import load_config
    from training.threads import cpu_has_native_bf16
    from training.train import build_run

    parser = argparse.ArgumentParser(prog="python -m benchmarks.forward_per_task_bench", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    state_before = machine_state()
    run = build_run(load_config(args.config, ["training.output_dir=/tmp/forward-per-task-bench"]))
    trainer, model = run.trainer, run.model.train()
    loader = iter(trainer.get_train_dataloader())
    batches = [next(loader) for _ in range(args.batches)]
    bf16 = bool(trainer.args.bf16)

    def step(per_task: bool):
        def call():
            trainer.forward_per_task = per_task
            for batch in batches:
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    loss = trainer.compute_loss(model, dict(batch))
                loss.backward()
                model.zero_grad(set_to_none=True)
        return call

    timings = side_by_side({"one forward": step(False), "forward per task": step(True)}, repeats=args.repeats)
    speedup = ratio(timings["one forward"], timings["forward per task"])
    collated = [{k: v for k, v in b.items() if k != "diffusion_seeds"} for b in batches]
    result = {
        "config": str(args.config),
        "batches_per_round": args.batches,
        "batch_size": int(batches[0]["input_ids"].shape[0]),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "cpu_has_native_bf16": cpu_has_native_bf16(),
        "seconds_per_round": {name: t.summary() for name, t in timings.items()},
        "speedup": speedup.summary(),
        "padding_fraction": {"one forward": padding_fraction(collated, False, model.config),
                             "forward per task": padding_fraction(collated, True, model.config)},
        "machine_before": state_before,
        "machine_after": machine_state(),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{Path(args.config).stem}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"forward per task: {speedup} faster per step (median, min-max over {args.repeats} rounds); padding "
          f"{result['padding_fraction']['one forward']:.0%} -> {result['padding_fraction']['forward per task']:.0%}; "
          f"load {state_before['load_average_1min']:.2f} -> {result['machine_after']['load_average_1min']:.2f}; {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
