"""PNG figures of a training run: the loss curves, a grid of generated digits, held-out images with captions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LOSS_KEYS = ("loss", "text_loss", "image_loss")


def loss_curves(log_history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{name: (steps, values)} for the train and eval losses found in `Trainer.state.log_history`."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for entry in log_history:
        for key in (*LOSS_KEYS, *(f"eval_{k}" for k in LOSS_KEYS)):
            if key in entry and "step" in entry:
                steps, values = curves.setdefault(key, ([], []))
                steps.append(entry["step"])
                values.append(float(entry[key]))
    return curves


def plot_loss(log_history: list[dict], path: str, title: str = "MMAR training") -> None:
    """Train (solid) and held-out (dashed, markers) total / text / image losses against the optimizer step."""
    curves = loss_curves(log_history)
    if not curves:
        raise ValueError("No losses in the log history: was anything logged (logging_steps)?")
    colors = {"loss": "black", "text_loss": "tab:blue", "image_loss": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, (steps, values) in curves.items():
        base = key.removeprefix("eval_")
        is_eval = key.startswith("eval_")
        ax.plot(steps, values, color=colors[base], linestyle="--" if is_eval else "-",
                marker="o" if is_eval else None, markersize=3, label=("held-out " if is_eval else "train ") + base)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vae_loss(history: list[dict], path: str, title: str = "VAE training") -> None:
    """Reconstruction MSE and KL (per latent element) of a `mmar train-vae` run against the step."""
    if not history:
        raise ValueError("No VAE losses were logged")
    steps = [row["step"] for row in history]
    fig, mse_axis = plt.subplots(figsize=(7, 4.2))
    mse_axis.plot(steps, [row["reconstruction_mse"] for row in history], color="tab:blue", label="reconstruction MSE")
    mse_axis.set_xlabel("optimizer step")
    mse_axis.set_ylabel("reconstruction MSE (pixels in [-1, 1])")
    mse_axis.set_yscale("log")
    kl_axis = mse_axis.twinx()
    kl_axis.plot(steps, [row["kl"] for row in history], color="tab:orange", label="KL per latent element")
    kl_axis.set_ylabel("KL per latent element")
    handles = mse_axis.get_legend_handles_labels()[0] + kl_axis.get_legend_handles_labels()[0]
    mse_axis.legend(handles, [h.get_label() for h in handles], fontsize=8)
    mse_axis.set_title(title)
    mse_axis.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reconstructions(originals, reconstructions, path: str, title: str = "", cols: int = 10) -> None:
    """Originals above their reconstructions, `cols` pairs per row pair; images [N, (C,) H, W] in [0, 1]."""
    rows, labels = [], []
    for start in range(0, len(originals) - cols + 1, cols):
        rows += [list(originals[start : start + cols]), list(reconstructions[start : start + cols])]
        labels += ["original", "VAE"]
    plot_digit_grid(rows, path, labels, title=title)


def _as_gray(image) -> np.ndarray:
    array = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image, np.float32)
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    return np.clip(array, 0.0, 1.0)


def plot_digit_grid(images, path: str, row_labels: list[str], title: str = "") -> None:
    """`images` [rows, cols, (C,) H, W] in [0, 1] -> one row per label (e.g. digits 0-9, one column per seed)."""
    rows, cols = len(images), len(images[0])
    fig, axes = plt.subplots(rows, cols, figsize=(0.8 * cols + 1.2, 0.8 * rows + 0.6), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(_as_gray(images[r][c]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_captioned_images(images, captions: list[str], correct: list[bool], path: str, cols: int = 10,
                          title: str = "") -> None:
    """Images with their predicted captions underneath (green = right digit, red = wrong)."""
    count = len(images)
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.45 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.axis("off")
            continue
        ax.imshow(_as_gray(images[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xlabel(captions[i][:18], fontsize=7, color="tab:green" if correct[i] else "tab:red")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["loss_curves", "plot_captioned_images", "plot_digit_grid", "plot_loss"]
