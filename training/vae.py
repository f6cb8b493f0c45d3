"""`mmar train-vae`: train a diffusers `AutoencoderKL` on an embedded real digit dataset, as MMAR's image tokenizer.

The objective is the usual KL-VAE one: per-pixel MSE of the reconstruction (pixels in [-1, 1]) plus
`kl_weight` times the per-element KL of the posterior to N(0, I); the loop runs on accelerate. After training,
the latents of the training images (the posterior modes, which is what `MMARModel.encode_images` uses) give
`shift_factor` = their mean and `scaling_factor` = 1 / their std, recorded in the VAE's config as LDM and SD3 do,
so that MMAR's diffusion head sees zero-mean unit-variance tokens.

The output folder is a diffusers model folder (config.json + safetensors) that `AutoencoderKL.from_pretrained`
loads, with `metrics.json` (held-out PSNR and the independent judge's readings of the reconstructions),
`loss.png` and `reconstructions.png` (held-out originals above their reconstructions) beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_mmar.input_checks_mmar import shareable_permissions

from .cli import DEFAULT_VAE_CONFIG
from .data import DIGIT_DATASETS, digit_dataset_arrays
from .run_config import read_config_file

VAE_TRAINING_DEFAULTS = {
    "output_dir": None,
    "max_steps": 800,
    "batch_size": 64,
    "learning_rate": 2e-3,
    "warmup_steps": 50,
    "kl_weight": 1e-3,
    "logging_steps": 20,
}
RECONSTRUCTION_FIGURE_IMAGES = 20


# ------------------------------------------------------------------------------------------------ config
def load_vae_config(path: str | Path = DEFAULT_VAE_CONFIG, overrides: list[str] | None = None) -> dict:
    """Read a VAE run config (`seed`, `data.dataset`, `vae`: AutoencoderKL kwargs, `training`), apply `a.b=value`
    overrides and check every key."""
    config = read_config_file(path, overrides)
    unknown = sorted(set(config) - {"seed", "data", "vae", "training"})
    if unknown:
        raise ValueError(f"Unknown section(s) {unknown} in {path}; known sections: seed, data, vae, training")
    dataset = (config.get("data") or {}).get("dataset", "mnist")
    if dataset not in DIGIT_DATASETS or set(config.get("data") or {}) - {"dataset"}:
        raise ValueError(f"the VAE config's data section takes only dataset: one of {DIGIT_DATASETS}, got "
                         f"{config.get('data')!r}")
    training = config.get("training") or {}
    unknown = sorted(set(training) - set(VAE_TRAINING_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown key(s) {', '.join('training.' + k for k in unknown)} in {path}; known training "
                         f"keys: {', '.join(VAE_TRAINING_DEFAULTS)}")
    training = {**VAE_TRAINING_DEFAULTS, **training}
    for key in ("max_steps", "batch_size", "logging_steps"):
        if not isinstance(training[key], int) or isinstance(training[key], bool) or training[key] < 1:
            raise ValueError(f"training.{key} must be an integer >= 1, got {training[key]!r}")
    if not isinstance(training["warmup_steps"], int) or training["warmup_steps"] < 0:
        raise ValueError(f"training.warmup_steps must be an integer >= 0, got {training['warmup_steps']!r}")
    for key in ("learning_rate", "kl_weight"):
        value = training[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0 \
                or (key == "learning_rate" and value == 0):
            raise ValueError(f"training.{key} must be a finite number {'> 0' if key == 'learning_rate' else '>= 0'}, "
                             f"got {value!r}")
    config["training"] = training
    config["data"] = {"dataset": dataset}
    return config


def build_vae(architecture: dict):
    """A randomly initialised `AutoencoderKL(**architecture)`; unknown keys are named."""
    import inspect

    from diffusers import AutoencoderKL

    known = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
    unknown = sorted(set(architecture) - known)
    if unknown:
        raise ValueError(f"vae has keys that AutoencoderKL does not take: {unknown}")
    return AutoencoderKL(**architecture)


# ------------------------------------------------------------------------------------------------ pieces
def to_vae_pixels(images: np.ndarray) -> torch.Tensor:
    """[N, H, W] grayscale in [0, 1] -> [N, 1, H, W] float32 in [-1, 1] (what MMAR's image processor gives a VAE)."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32)).mul(2.0).sub(1.0).unsqueeze(1)


def vae_loss(vae, pixels: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None):
    """(total, reconstruction MSE, KL per latent element) of one batch of pixels in [-1, 1]."""
    posterior = vae.encode(pixels).latent_dist
    reconstruction = vae.decode(posterior.sample(generator=generator)).sample
    mse = (reconstruction.float() - pixels.float()).pow(2).mean()
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return mse + kl_weight * kl, mse, kl


@torch.no_grad()
def encode_modes(vae, pixels: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Posterior modes (unscaled latents) of `pixels`, batch by batch."""
    return torch.cat([vae.encode(pixels[i : i + batch_size]).latent_dist.mode() for i in range(0, len(pixels),
                                                                                                batch_size)])


@torch.no_grad()
def reconstruct(vae, pixels: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Decode(encode-mode(pixels)), clamped to [-1, 1]."""
    modes = encode_modes(vae, pixels, batch_size)
    return torch.cat([vae.decode(modes[i : i + batch_size]).sample.clamp(-1, 1) for i in range(0, len(modes),
                                                                                              batch_size)])


def latent_normalisation(latents: torch.Tensor) -> tuple[float, float]:
    """(shift_factor, scaling_factor) = (mean, 1 / std) of the latents: scaled latents are zero-mean, unit-variance."""
    std = float(latents.float().std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the VAE's latents have std {std}: the VAE collapsed, train it with a smaller kl_weight")
    return float(latents.float().mean()), 1.0 / std


def psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2, i.e. 1 on the [0, 1] scale)."""
    mse = ((reconstruction.float() - original.float()) / 2).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))


def evaluate_reconstructions(vae, dataset: str, seed: int = 0) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(metrics, originals, reconstructions) on the dataset's held-out rows: PSNR, and the independent judge's
    accuracy on the reconstructions beside its accuracy on the originals and its agreement between the two."""
    from .judge import get_judge

    images, labels, _, heldout = digit_dataset_arrays(dataset, seed)
    originals = to_vae_pixels(images[heldout])
    reconstructions = reconstruct(vae, originals)
    judge = get_judge(seed, dataset=dataset)
    read_originals = judge.predict(images[heldout])
    read_reconstructions = judge.predict(((reconstructions[:, 0] + 1) / 2).numpy())
    values = psnr(reconstructions, originals)
    metrics = {
        "heldout_psnr_db": float(values.mean()),
        "heldout_psnr_db_min": float(values.min()),
        "judge_accuracy_on_reconstructions": float((read_reconstructions == labels[heldout]).mean()),
        "judge_accuracy_on_originals": float((read_originals == labels[heldout]).mean()),
        "judge_agreement_original_vs_reconstruction": float((read_reconstructions == read_originals).mean()),
        "num_heldout_images": int(len(heldout)),
    }
    return metrics, originals, reconstructions


# ------------------------------------------------------------------------------------------------ training
def train_vae(config: dict, output_dir: str | Path | None = None, show_progress: bool = True) -> dict:
    """Train the VAE of a `load_vae_config` config and write the folder described in the module docstring.

    The folder is assembled next to `output_dir` and moved into place at the end; returns the metrics."""
    from accelerate import Accelerator
    from transformers import get_cosine_schedule_with_warmup

    from .plots import plot_reconstructions, plot_vae_loss

    training = config["training"]
    output = Path(output_dir or training.get("output_dir") or "")
    if not str(output) or str(output) == ".":
        raise ValueError("training.output_dir is not set (where the trained VAE goes)")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and \
            not (output / "config.json").is_file():
        raise ValueError(f"output folder {str(output)!r} exists and is not an earlier VAE folder; choose another")
    start = time.monotonic()
    seed = int(config.get("seed", 0))
    dataset = config["data"]["dataset"]
    torch.manual_seed(seed)
    vae = build_vae(dict(config.get("vae") or {}))
    if vae.config.in_channels != 1 or vae.config.out_channels != 1:
        raise ValueError(f"the digit datasets are grayscale: vae.in_channels and vae.out_channels must be 1, got "
                         f"{vae.config.in_channels} and {vae.config.out_channels}")
    images, _, train_idx, _ = digit_dataset_arrays(dataset, seed)
    pixels = to_vae_pixels(images[train_idx])
    if isinstance(vae.config.sample_size, int) and vae.config.sample_size != pixels.shape[-1]:
        raise ValueError(f"vae.sample_size is {vae.config.sample_size} but the {dataset} images are "
                         f"{pixels.shape[-1]}x{pixels.shape[-1]}")

    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=training["learning_rate"], weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, training["warmup_steps"], training["max_steps"])
    vae, optimizer, schedule = accelerator.prepare(vae, optimizer, schedule)
    generator = torch.Generator().manual_seed(seed)  # batches and posterior samples: the run is reproducible
    history = []
    vae.train()
    progress = tqdm(range(1, training["max_steps"] + 1), desc="training the VAE", disable=not show_progress)
    for step in progress:
        rows = torch.randint(len(pixels), (training["batch_size"],), generator=generator)
        batch = pixels[rows].to(accelerator.device)
        loss, mse, kl = vae_loss(vae, batch, training["kl_weight"], generator=generator)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"the VAE's loss is {loss.item()} at step {step}: lower training.learning_rate")
        if step % training["logging_steps"] == 0 or step == training["max_steps"]:
            history.append({"step": step, "loss": loss.item(), "reconstruction_mse": mse.item(), "kl": kl.item()})
            progress.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.2f}")
    vae = accelerator.unwrap_model(vae).eval().to("cpu")
    train_seconds = time.monotonic() - start

    shift, scale = latent_normalisation(encode_modes(vae, pixels))
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    metrics, originals, reconstructions = evaluate_reconstructions(vae, dataset, seed)
    metrics.update(dataset=dataset, train_steps=training["max_steps"], train_seconds=train_seconds,
                   shift_factor=shift, scaling_factor=scale, total_seconds=time.monotonic() - start,
                   threads=torch.get_num_threads())

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        vae.save_pretrained(partial, safe_serialization=True)
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (partial / "log_history.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_vae_loss(history, str(partial / "loss.png"))
        count = min(RECONSTRUCTION_FIGURE_IMAGES, len(originals))
        # Evenly spaced held-out rows: with MNIST's class-sorted rows that is two of every digit.
        shown = np.linspace(0, len(originals) - 1, count).round().astype(int)
        plot_reconstructions((originals[shown] + 1) / 2, (reconstructions[shown] + 1) / 2,
                             str(partial / "reconstructions.png"),
                             title=f"held-out {dataset} (top) and VAE reconstructions (bottom), "
                                   f"PSNR {metrics['heldout_psnr_db']:.1f} dB")
        shareable_permissions(str(partial))
        if output.exists():
            shutil.rmtree(output)
        partial.rename(output)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return metrics


def format_vae_table(metrics: dict) -> str:
    rows = [
        ("held-out PSNR (mean / min)", f"{metrics['heldout_psnr_db']:.1f} / {metrics['heldout_psnr_db_min']:.1f} dB"),
        ("judge accuracy: reconstructions", f"{metrics['judge_accuracy_on_reconstructions']:.1%}"),
        ("judge accuracy: originals", f"{metrics['judge_accuracy_on_originals']:.1%}"),
        ("judge agreement original vs reconstruction", f"{metrics['judge_agreement_original_vs_reconstruction']:.1%}"),
        ("latent shift / scaling factor", f"{metrics['shift_factor']:.3f} / {metrics['scaling_factor']:.3f}"),
        ("training steps / seconds", f"{metrics['train_steps']} / {metrics['train_seconds']:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run_train_vae_command(args: argparse.Namespace) -> int:
    config = load_vae_config(args.config, args.overrides)
    output = args.output_dir or config["training"]["output_dir"]
    metrics = train_vae(config, output)
    print(format_vae_table(metrics))
    print(f"VAE written to {output} (AutoencoderKL.from_pretrained({str(output)!r}))")
    return 0


__all__ = ["DEFAULT_VAE_CONFIG", "build_vae", "encode_modes", "evaluate_reconstructions", "latent_normalisation",
           "load_vae_config", "psnr", "reconstruct", "to_vae_pixels", "train_vae", "vae_loss"]
