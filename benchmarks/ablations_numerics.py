"""The quantity MMAR's precision theorem is about: the error of the head's x0 estimate in bf16 against float64.

A diffusion head predicts v, epsilon or x0; the sampler turns the prediction into an estimate of the clean token,
    v:        x0 = alpha_t * x_t - sigma_t * v
    epsilon:  x0 = (x_t - sigma_t * eps) / alpha_t
    x0:       x0 = prediction
with alpha_t = sqrt(alphabar_t), sigma_t = sqrt(1 - alphabar_t). A rounding error d in the prediction becomes an x0
error of sigma_t * d (v), sigma_t / alpha_t * d (epsilon, unbounded as alphabar_t -> 0) or d (x0).

`x0_estimate_error` measures it on a trained head: from the same inputs (x_t, t, the LLM state), the head runs once
under bf16 autocast (as it trains and samples in bf16) and once entirely in float64; both predictions go through the
exact (float64) x0 formula, so the difference is the head's bf16 error carried through each type's formula.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")


def x0_from_prediction(prediction: torch.Tensor, noisy: torch.Tensor, alpha_bar: float,
                       prediction_type: str) -> torch.Tensor:
    """The clean-token estimate implied by the head's `prediction` at a timestep with cumulative alpha `alpha_bar`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if not (math.isfinite(alpha_bar) and 0.0 < alpha_bar <= 1.0):
        raise ValueError(f"alpha_bar must be in (0, 1], got {alpha_bar}")
    alpha, sigma = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "v_prediction":
        return alpha * noisy - sigma * prediction
    if prediction_type == "epsilon":
        return (noisy - sigma * prediction) / alpha
    return prediction


def default_timesteps(num_train_timesteps: int = 1000, count: int = 25) -> list[int]:
    """Timesteps across [0, T): denser near T - 1, where alphabar -> 0 and epsilon's x0 estimate blows up."""
    # Evenly spaced in log(T - t), so that the last few steps before T - 1 are all there, plus every tenth of [0, T).
    gaps = np.unique(np.round(np.geomspace(1, num_train_timesteps, count)).astype(int))
    even = np.arange(0, num_train_timesteps, max(1, num_train_timesteps // 10))
    return sorted({int(num_train_timesteps - g) for g in gaps} | {int(t) for t in even})


@torch.no_grad()
def x0_estimate_error(head, conditions: torch.Tensor, clean_tokens: torch.Tensor, alphas_cumprod: torch.Tensor,
                      prediction_type: str, timesteps: list[int], low_dtype: torch.dtype = torch.bfloat16,
                      seed: int = 0) -> dict:
    """Per timestep t: the RMS difference between the x0 estimate of `head` run under `low_dtype` autocast and that
    of the same head in float64, from the same x_t = alpha_t x0 + sigma_t noise (noise drawn from `seed`), the same
    t and the same LLM states `conditions` [M, H]; beside it the RMS of the clean tokens [M, D] and the float64 x0
    estimate's RMS error against them (how well the head denoises at t, whatever its prediction type).

    Returns {"timesteps", "alpha_bar", "rms_error", "rms_clean", "rms_denoising_error"} (lists, one value per t)."""
    if conditions.ndim != 2 or clean_tokens.ndim != 2 or len(conditions) != len(clean_tokens):
        raise ValueError(f"conditions [M, H] and clean_tokens [M, D] must be 2-d with the same M, got "
                         f"{tuple(conditions.shape)} and {tuple(clean_tokens.shape)}")
    if len(clean_tokens) == 0:
        raise ValueError("x0_estimate_error needs at least one token")
    steps = len(alphas_cumprod)
    if not timesteps or any(not 0 <= int(t) < steps for t in timesteps):
        raise ValueError(f"timesteps must be a non-empty list of integers in [0, {steps}), got {timesteps}")
    head64 = copy.deepcopy(head).double().eval()
    head.eval()
    generator = torch.Generator().manual_seed(seed)
    clean = clean_tokens.detach().cpu().double()
    conditions64 = conditions.detach().cpu().double()
    result = {"timesteps": [], "alpha_bar": [], "rms_error": [], "rms_clean": [], "rms_denoising_error": []}
    rms_clean = float(clean.pow(2).mean().sqrt())
    device_type = next(head.parameters()).device.type
    for t in timesteps:
        alpha_bar = float(alphas_cumprod[int(t)])
        noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
        noisy = math.sqrt(alpha_bar) * clean + math.sqrt(1.0 - alpha_bar) * noise
        t64 = torch.full((1,), int(t), dtype=torch.float64)
        reference = head64(noisy, t64, condition=conditions64)
        with torch.autocast(device_type, dtype=low_dtype):
            low = head(noisy.float(), t64.float(), condition=conditions64.float())
        x0_reference = x0_from_prediction(reference, noisy, alpha_bar, prediction_type)
        x0_low = x0_from_prediction(low.double(), noisy, alpha_bar, prediction_type)
        result["timesteps"].append(int(t))
        result["alpha_bar"].append(alpha_bar)
        result["rms_error"].append(float((x0_low - x0_reference).pow(2).mean().sqrt()))
        result["rms_clean"].append(rms_clean)
        result["rms_denoising_error"].append(float((x0_reference - clean).pow(2).mean().sqrt()))
    return result


@torch.no_grad()
def heldout_conditions(model, processor, heldout, max_images: int = 200, seed: int = 1234) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """(LLM states [M, H], clean tokens [M, D]) of the masked image tokens of up to `max_images` held-out rows laid
    out for generation (caption, image with a mask ratio drawn from [0, 1]), the way the head sees them in training."""
    from training.collator import MMARDataCollator

    config = model.config
    collator = MMARDataCollator(processor, config.tokens_per_image, understanding_ratio=0.0, caption_dropout=0.0,
                                mask_ratio_min=0.0, seed=seed)
    rows = heldout.select(range(min(max_images, len(heldout))))
    batch = collator([rows[i] for i in range(len(rows))])
    model.eval()
    outputs = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          pixel_values=batch.get("pixel_values"), image_tokens=batch.get("image_tokens"),
                          image_mask=batch["image_mask"])
    positions = batch["input_ids"] == config.image_token_id
    hidden = outputs.last_hidden_state[positions]
    mask = batch["image_mask"].reshape(-1)
    tokens = outputs.image_tokens.reshape(-1, outputs.image_tokens.shape[-1])
    return hidden[mask].float(), tokens[mask].float()


def plot_x0_error(curves: dict[str, dict], path: str, title: str) -> None:
    """Left: the RMS bf16-vs-float64 x0 error against t (log y), one line per head; right: the float64 head's x0
    RMSE against the clean tokens (how well it denoises; its learning error carried through the same formula).
    `curves` maps a label to a result of `x0_estimate_error` (dashed when the label says fp32)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"v": "tab:blue", "eps": "tab:red", "x0": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    panels = (("rms_error", "RMS |x0 estimate, head in bf16 - in float64|"),
              ("rms_denoising_error", "RMS |x0 estimate of the float64 head - clean x0|"))
    for ax, (key, ylabel) in zip(axes, panels):
        for label, curve in curves.items():
            color = next((c for name, c in colors.items() if label.startswith(name)), None)
            shown = np.maximum(np.asarray(curve[key]), 1e-12)  # an exact 0 cannot sit on a log axis
            ax.plot(curve["timesteps"], shown, marker="o", markersize=3, color=color,
                    linestyle="--" if "fp32" in label else "-", label=label)
        if key == "rms_denoising_error":
            ax.axhline(curves[next(iter(curves))]["rms_clean"][0], color="gray", linestyle=":",
                       label="RMS of the clean tokens")
        ax.set_yscale("log")
        ax.set_xlabel("diffusion timestep t (T = 1000; alphabar -> 0 as t -> T)")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["default_timesteps", "heldout_conditions", "plot_x0_error", "x0_estimate_error", "x0_from_prediction"]
