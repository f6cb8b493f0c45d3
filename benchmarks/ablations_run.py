"""One ablation run: a variant of the base config trained with one seed, then measured like every other variant.

The run config is the base config with the harness' settings (steps, seed, the fixed split, no mid-run evaluation)
and the variant's overrides; it is saved beside the results. Evaluation reuses the demo's (`training.demo`) and
runs in the variant's training precision (bf16 variants sample under bf16 autocast).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
import time

import numpy as np
import torch
from transformers import TrainerCallback

from training.run_config import apply_overrides, validate_config


class StepTimer(TrainerCallback):
    """Wall seconds of every optimizer step (evaluation and logging excluded)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)

    def median(self, skip: int = 3) -> float | None:
        values = self.seconds[skip:] or self.seconds
        return statistics.median(values) if values else None


def resolve_config(base: dict, variant, seed: int, settings) -> dict:
    """The run config of `variant` with `seed`: steps and the stage-2 start scaled together, the base config's split
    kept whatever the seed, training-time evaluation and checkpoints off (the harness evaluates once at the end)."""
    base = apply_overrides(base, list(settings.extra_overrides))
    base_steps = int((base.get("training") or {}).get("max_steps") or settings.steps)
    stage2 = (base.get("mask_schedule") or {}).get("stage2_start_step")
    harness = [
        f"seed={seed}",
        f"data.split_seed={int((base.get('data') or {}).get('split_seed', base.get('seed', 0)))}",
        f"training.seed={seed}",
        f"training.data_seed={seed}",
        f"training.max_steps={settings.steps}",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        f"training.logging_steps={max(1, settings.steps // 20)}",
        "training.disable_tqdm=true",
        "training.report_to=none",
        f"training.bf16={'true' if variant.bf16 else 'false'}",
        "time_budget=null",
    ]
    if stage2 is not None:  # the two-stage default keeps its place in the (possibly shorter) run
        harness.append(f"mask_schedule.stage2_start_step={round(stage2 * settings.steps / base_steps)}")
    config = apply_overrides(base, harness + list(variant.overrides))
    config.pop("vae_training", None)  # the VAE (if any) is trained once for the whole suite
    config["evaluation"] = dict(settings.evaluation)
    validate_config(config, source=f"ablation variant {variant.name}")
    return config


def precision(bf16: bool):
    """The context a variant is evaluated and sampled in: its training precision."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _finite_losses(log_history: list[dict]) -> bool:
    return all(math.isfinite(entry["loss"]) for entry in log_history if "loss" in entry)


def train_and_evaluate(config: dict, variant, settings, codebook=None) -> tuple[dict, dict]:
    """(metrics, artefacts) of one run. A run whose loss turned non-finite is reported as diverged, not evaluated."""
    from training.demo import generate_digits
    from training.train import build_run

    from .ablations_numerics import default_timesteps, heldout_conditions, x0_estimate_error
    from .ablations_probes import caption_accuracy, few_step_generation, inpainting_holes, judge_generated
    from .ablations_vq import quantize_cached_tokens, quantize_model

    started = time.monotonic()
    dataset = (config.get("data") or {}).get("dataset", "digits")
    split_seed = int(config["data"]["split_seed"])
    with tempfile.TemporaryDirectory(prefix="mmar-ablation-") as workdir:
        run = build_run(config, output_dir=workdir)
        if variant.codebook_size:
            if codebook is None:
                raise ValueError(f"variant {variant.name} needs a codebook")
            quantize_model(run.model, codebook)
            run.trainer.train_dataset = quantize_cached_tokens(run.trainer.train_dataset, codebook)
        timer = StepTimer()
        run.trainer.add_callback(timer)
        run.trainer.train()
        train_seconds = time.monotonic() - started
        history = run.trainer.state.log_history
        metrics = {"train_steps": run.trainer.state.global_step, "train_seconds": train_seconds,
                   "median_step_seconds_in_training": timer.median(), "torch_threads": torch.get_num_threads(),
                   "final_train_loss": next((e["loss"] for e in reversed(history) if "loss" in e), None)}
        if not _finite_losses(history):
            metrics["diverged"] = True
            return metrics, {"log_history": history}
        model, processor, heldout = run.model.eval(), run.processor, run.eval_dataset
        torch.manual_seed(split_seed)  # the held-out loss draws timesteps and noise from the global generator
        losses = run.trainer.evaluate(heldout)
        metrics.update(heldout_image_loss=losses.get("eval_image_loss"), heldout_text_loss=losses.get("eval_text_loss"))

        with precision(variant.bf16):
            metrics["caption_accuracy"] = caption_accuracy(model, processor, heldout, config["evaluation"])
            images, digits = generate_digits(model, processor, config["evaluation"])
            metrics.update(judge_generated(images, digits, dataset, split_seed))
            few_steps = few_step_generation(model, processor, config["evaluation"], settings.few_step_num_iters,
                                            dataset, split_seed)
            holes, inpainting = inpainting_holes(
                model, processor, heldout, {**config["evaluation"], "num_iter": settings.inpainting_num_iter},
                dataset, split_seed, max_images=settings.inpainting_images)
        metrics.update(num_generated_images=len(images), num_heldout_images=len(heldout))
        for num_iter, values in few_steps.items():
            metrics[f"generated_digit_accuracy_num_iter_{num_iter}"] = values["generated_digit_accuracy"]
            metrics[f"digit_fd_num_iter_{num_iter}"] = values["digit_fd"]
        metrics.update({f"inpainting_{k}": v for k, v in holes.items()})
        metrics["inpainting_num_iter"] = settings.inpainting_num_iter

        conditions, clean = heldout_conditions(model, processor, heldout, settings.numerics_images, seed=split_seed)
        scheduler = model.noise_scheduler
        prediction_type = model.config.prediction_type
        error = x0_estimate_error(model.diffusion_head, conditions, clean, scheduler.alphas_cumprod, prediction_type,
                                  default_timesteps(scheduler.config.num_train_timesteps), seed=split_seed)
        uniform = x0_estimate_error(model.diffusion_head, conditions, clean, scheduler.alphas_cumprod, prediction_type,
                                    list(range(0, scheduler.config.num_train_timesteps, 50)), seed=split_seed)
        metrics["heldout_x0_rmse"] = float(np.mean(uniform["rms_denoising_error"]))
        metrics["bf16_x0_error_max"] = float(max(error["rms_error"]))
        metrics["bf16_x0_error_curve"] = error
        if variant.codebook_size:
            metrics.update(vq_reconstruction_metrics(model, processor, heldout, dataset, split_seed, codebook))
        metrics["seconds"] = time.monotonic() - started
        return metrics, {"images": images, "digits": digits, "inpainting": inpainting,
                         "log_history": history}


def vq_reconstruction_metrics(model, processor, heldout, dataset: str, judge_seed: int, codebook) -> dict:
    """How much of a digit survives quantisation, in the judge's terms: its accuracy on the quantised held-out
    images (decoded from their codewords) beside its accuracy on the originals."""
    from training.judge import get_judge

    from .ablations_vq import quantised_reconstructions

    labels = np.asarray(heldout["label"])
    images, token_rmse = quantised_reconstructions(model, processor, heldout["image"])
    judge = get_judge(judge_seed, dataset)
    return {"codebook_size": codebook.size, "codebook_dim": codebook.dim, "vq_token_rmse": token_rmse,
            "judge_accuracy_on_quantised_heldout": float(np.mean(judge.predict(images.mean(dim=1).numpy()) == labels))}


__all__ = ["StepTimer", "precision", "resolve_config", "train_and_evaluate"]
