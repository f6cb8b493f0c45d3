"""The ablation suite's report: results.json, results.md (tables beside the paper's numbers, one verdict per claim),
one bar chart per metric with the seeds' spread, the bf16 x0-error plot and one sample grid per variant."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# (key, label, higher is better, format)
METRICS = (
    ("caption_accuracy", "held-out caption accuracy", True, "{:.1%}"),
    ("generated_digit_accuracy", "generated-digit accuracy (judge)", True, "{:.1%}"),
    ("digit_fd", "digit-FD", False, "{:.2f}"),
    ("generated_digit_accuracy_num_iter_4", "generated-digit accuracy, num_iter 4", True, "{:.1%}"),
    ("digit_fd_num_iter_4", "digit-FD, num_iter 4", False, "{:.2f}"),
    ("generated_digit_accuracy_num_iter_2", "generated-digit accuracy, num_iter 2", True, "{:.1%}"),
    ("digit_fd_num_iter_2", "digit-FD, num_iter 2", False, "{:.2f}"),
    ("inpainting_hole_rate", "inpainting holes (50% revealed)", False, "{:.1%}"),
    ("heldout_image_loss", "held-out image loss (own target)", False, "{:.4f}"),
    ("heldout_x0_rmse", "held-out x0 RMSE (float64 head, mean over t)", False, "{:.4f}"),
    ("bf16_x0_error_max", "max over t of the bf16-vs-float64 x0 error", False, "{:.2e}"),
    ("median_step_seconds_in_training", "median training step (s)", False, "{:.3f}"),
)
FAMILY_COLORS = {"prediction": "tab:blue", "tokens": "tab:purple", "masking": "tab:orange", "cost": "tab:green"}
PAPER = {  # the paper's numbers at 0.5B (Qwen2-0.5B), as the issue quotes them
    "v_vs_eps": "FID-30K 36.6 (v) vs 61.5 (eps); understanding average 34.56 vs 32.21; MMBench 48.45 vs 45.53",
    "vq": "understanding average 34.56 (continuous, MMAR) vs 29.70 (Show-o-like VQ, FID 66.26) and 28.26 "
          "(Transfusion-like, FID 95.38)",
    "masking": "stage 1 alone ([0.7, 1]) leaves holes in generated images; stage 2 ([0, 1]) fixes them "
               "(qualitative)",
}
# (claim, better variant, worse variant, metrics): the paper's direction is "better beats worse".
CLAIMS = (
    ("v_vs_eps", "v-bf16", "eps-bf16", ("generated_digit_accuracy", "digit_fd", "caption_accuracy")),
    ("v_vs_eps_fp32_control", "v-fp32", "eps-fp32", ("generated_digit_accuracy", "digit_fd", "caption_accuracy")),
    ("vq", "v-fp32", "vq-256", ("caption_accuracy", "generated_digit_accuracy", "digit_fd")),
    ("masking", "v-fp32", "stage1-only", ("inpainting_hole_rate", "generated_digit_accuracy_num_iter_2",
                                          "digit_fd_num_iter_2", "generated_digit_accuracy_num_iter_4",
                                          "digit_fd_num_iter_4")),
)
X0_TIMESTEPS_SHOWN = (0, 500, 900, 982, 990, 996, 999)


def values(results: dict, variant: str, metric: str) -> list[float]:
    runs = results["variants"].get(variant, {}).get("runs", {})
    return [float(run[metric]) for run in runs.values() if run.get(metric) is not None]


def summary(results: dict, variant: str, metric: str) -> dict | None:
    found = values(results, variant, metric)
    if not found:
        return None
    return {"mean": statistics.fmean(found), "min": min(found), "max": max(found), "values": found}


def cell(results: dict, variant: str, metric: str, fmt: str) -> str:
    stats = summary(results, variant, metric)
    if stats is None:
        runs = results["variants"].get(variant, {}).get("runs", {})
        return "diverged" if any(r.get("diverged") for r in runs.values()) else "n/a"
    if len(stats["values"]) == 1:
        return fmt.format(stats["mean"])
    return f"{fmt.format(stats['mean'])} ({fmt.format(stats['min'])} – {fmt.format(stats['max'])})"


def compare(results: dict, better: str, worse: str, metric: str) -> dict | None:
    """Does `better` beat `worse` on `metric`? Effect (in the metric's good direction), the seeds' spread (the larger
    min-max range of the two) and the paired per-seed differences (same seed = same init, data order, masks)."""
    higher = next(h for key, _, h, _ in METRICS if key == metric)
    runs_a = results["variants"].get(better, {}).get("runs", {})
    runs_b = results["variants"].get(worse, {}).get("runs", {})
    a, b = summary(results, better, metric), summary(results, worse, metric)
    if a is None or b is None:
        return None
    sign = 1.0 if higher else -1.0
    effect = sign * (a["mean"] - b["mean"])
    spread = max(a["max"] - a["min"], b["max"] - b["min"])
    paired = [sign * (runs_a[s][metric] - runs_b[s][metric]) for s in runs_a
              if s in runs_b and runs_a[s].get(metric) is not None and runs_b[s].get(metric) is not None]
    if effect <= 0:
        verdict = "not reproduced (opposite direction)" if effect < 0 else "no difference"
    elif all(d > 0 for d in paired) and effect > spread:
        verdict = "reproduced (beyond the seeds' spread)"
    else:
        verdict = "direction reproduced, within the seeds' spread"
    return {"metric": metric, "better": better, "worse": worse, "effect": effect, "spread": spread,
            "paired_differences": paired, "verdict": verdict}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _variant_rows(results: dict, names, metrics) -> list[list[str]]:
    formats = {key: (label, fmt) for key, label, _, fmt in METRICS}
    return [[name, *(cell(results, name, m, formats[m][1]) for m in metrics)] for name in names
            if name in results["variants"]]


def markdown(results: dict) -> str:
    machine, timing = results["machine"], results.get("step_timing") or {}
    labels = {key: label for key, label, _, _ in METRICS}
    names = list(results["variants"])
    seeds = len(results["seeds"])
    total = machine.get("total_seconds")
    lines = [
        f"## Ablations ({results['suite']} suite): {results['base_config']}", "",
        f"{len(names)} variants x {seeds} seeds, {results['steps']} training steps each ({results['steps_choice']}). "
        "Cells: mean over seeds (min – max). Evaluation per run: every held-out digit captioned; "
        f"{results['evaluation']['seeds_per_digit']} images per digit generated at num_iter "
        f"{results['evaluation']['num_iter']}, {results['evaluation']['num_inference_steps']} diffusion steps, "
        f"guidance {results['evaluation']['guidance_scale']}; bf16 variants evaluated and sampled under bf16 autocast.",
        "",
        f"Machine: {machine.get('cpu_count')} CPUs, native bf16: {machine.get('native_bf16')}, torch "
        f"{machine.get('torch')}; load average {machine.get('load_average_1min_before')} before, "
        f"{machine.get('load_average_1min_after')} after; total "
        + (f"{total / 60:.1f} min (target <= {machine.get('target_seconds', 0) / 60:.0f} min)." if total else "n/a."),
        "",
        f"Judge ({results['judge']['dataset']}, split seed {results['judge']['split_seed']}): "
        f"{results['judge']['judge_heldout_accuracy']:.1%} on the real held-out digits. digit-FD reference points for "
        f"{results['judge']['num_images']} images: real training digits {results['judge']['digit_fd_floor_train_vs_heldout']:.2f} "
        f"(a perfect generator), uniform noise {results['judge']['digit_fd_ceiling_noise']:.2f}.",
        "", "### All variants", "",
    ]
    main = ["caption_accuracy", "generated_digit_accuracy", "digit_fd", "heldout_image_loss", "heldout_x0_rmse"]
    lines += _table(["variant", *(labels[m] for m in main)], _variant_rows(results, names, main))
    lines += ["", "Held-out image loss is each variant's own regression target (v, epsilon or x0): compare it within "
              "one prediction type only; the x0 RMSE (the float64 head's x0 estimate against the clean held-out "
              "tokens, averaged over 20 evenly spaced t) is comparable across types.", ""]

    lines += ["### Claim 1: v-prediction keeps bf16 sound", "", f"Paper (0.5B): {PAPER['v_vs_eps']}.", ""]
    prediction = [n for n in names if results["variants"][n]["family"] == "prediction"]
    cols = ["generated_digit_accuracy", "digit_fd", "caption_accuracy", "heldout_x0_rmse", "bf16_x0_error_max"]
    lines += _table(["variant", *(labels[m] for m in cols)], _variant_rows(results, prediction, cols))
    lines += ["", "bf16-vs-float64 x0-estimate error of each trained head (seed 0, RMS over held-out tokens):", ""]
    curves = {n: results["variants"][n]["runs"].get("0", {}).get("bf16_x0_error_curve") for n in prediction}
    curves = {n: c for n, c in curves.items() if c}
    if curves:
        shown = [t for t in X0_TIMESTEPS_SHOWN if t in next(iter(curves.values()))["timesteps"]]
        rows = []
        for name, curve in curves.items():
            at = dict(zip(curve["timesteps"], curve["rms_error"]))
            rows.append([name, *(f"{at[t]:.2e}" for t in shown)])
        lines += _table(["head", *(f"t={t}" for t in shown)], rows)
        lines += ["", "![bf16 x0 error](x0_error_bf16.png)", ""]

    lines += ["### Claim 2: continuous tokens beat discretised ones", "", f"Paper (0.5B): {PAPER['vq']}.", ""]
    cols = ["caption_accuracy", "generated_digit_accuracy", "digit_fd"]
    rows = _variant_rows(results, [n for n in ("v-fp32", "vq-256") if n in names], cols)
    for row in rows:
        row.append(cell(results, row[0], "judge_accuracy_on_quantised_heldout", "{:.1%}") if row[0] != "v-fp32"
                   else f"{results['judge']['judge_heldout_accuracy']:.1%} (the originals)")
    lines += _table(["variant", *(labels[m] for m in cols), "judge on quantised held-out digits"], rows)
    lines.append("")
    vq_runs = results["variants"].get("vq-256", {}).get("runs", {})
    if vq_runs:
        run = next(iter(vq_runs.values()))
        lines += [f"Codebook: k-means, {run.get('codebook_size')} codewords of dimension {run.get('codebook_dim')} "
                  f"learnt on the training images' tokens; token RMS quantisation error {run.get('vq_token_rmse', 0):.3f}."
                  " The VQ model understands and generates from quantised tokens with the same diffusion head "
                  "(generated tokens snapped to the codebook before decoding): a VQ tokenizer control, not Show-o's "
                  "categorical head.", ""]

    lines += ["### Claim 3: two-stage masking", "", f"Paper: {PAPER['masking']}.", ""]
    masking = [n for n in ("v-fp32", "stage1-only", "ratio-0-1-only") if n in names]
    cols = ["inpainting_hole_rate", "generated_digit_accuracy_num_iter_2", "digit_fd_num_iter_2",
            "generated_digit_accuracy_num_iter_4", "digit_fd_num_iter_4", "generated_digit_accuracy", "digit_fd"]
    lines += _table(["variant", *(labels[m] for m in cols)], _variant_rows(results, masking, cols))
    lines += ["", "Holes: held-out digits with a random 50 % of their tokens revealed, the rest completed with the "
              "right caption; a hole is a completion the judge reads as another digit or as no digit (its MLP's "
              "top-class probability < 0.5).", ""]

    lines += ["### Cost knobs", ""]
    if timing:
        rows = [[name, f"{t['median_s']:.3f} ({t['min_s']:.3f} – {t['max_s']:.3f})",
                 f"{t['speed_vs_baseline']['median']:.2f}x"] for name, t in timing.items() if not name.startswith("_")]
        s = timing["_settings"]
        lines += [f"Training step side by side ({s['repeats']} rounds x {s['steps_per_round']} steps, batch "
                  f"{s['batch_size']}, {s['threads']} thread(s); median (min – max)):", ""]
        lines += _table(["variant", "s / step", "speed vs v-fp32"], rows) + [""]
    cost = [n for n in ("v-fp32", "batch-mul-1", "embedder-depth-2") if n in names]
    cols = ["caption_accuracy", "generated_digit_accuracy", "digit_fd", "heldout_image_loss",
            "median_step_seconds_in_training"]
    lines += _table(["variant", *(labels[m] for m in cols)], _variant_rows(results, cost, cols)) + [""]

    lines += ["### Verdicts (computed)", "", "Effect: the paper's better variant minus its worse one, in the metric's "
              "good direction (positive = the paper's direction); spread: the larger min-max range over seeds.", ""]
    rows = []
    for claim, verdict in results.get("verdicts", {}).items():
        for v in verdict:
            rows.append([claim, f"{v['better']} vs {v['worse']}", labels[v["metric"]], f"{v['effect']:+.4g}",
                         f"{v['spread']:.4g}", ", ".join(f"{d:+.3g}" for d in v["paired_differences"]), v["verdict"]])
    lines += _table(["claim", "pair", "metric", "effect", "spread", "per seed", "verdict"], rows)
    lines += ["", "Charts: " + ", ".join(f"[{key}]({key}.png)" for key, *_ in METRICS) + "; samples: "
              + ", ".join(f"[{n}](samples_{n}.png)" for n in names) + "."]
    return "\n".join(lines) + "\n"


def bar_chart(results: dict, metric: str, label: str, higher: bool, path: Path) -> bool:
    names = [n for n in results["variants"] if values(results, n, metric)]
    if not names:
        return False
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 4.2))
    for i, name in enumerate(names):
        found = values(results, name, metric)
        mean = statistics.fmean(found)
        color = FAMILY_COLORS.get(results["variants"][name]["family"], "gray")
        ax.bar(i, mean, color=color, alpha=0.6)
        ax.errorbar(i, mean, yerr=[[mean - min(found)], [max(found) - mean]], color="black", capsize=4)
        ax.scatter([i] * len(found), found, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better); bars: mean, whiskers and dots: seeds",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(output: Path, results: dict, samples: dict) -> list[Path]:
    """Write everything; `samples` maps a variant to its seed-0 artefacts (generated images, inpainting)."""
    from training.data import DIGIT_WORDS
    from training.plots import plot_digit_grid

    from .ablations_numerics import plot_x0_error

    results["verdicts"] = {claim: [c for c in (compare(results, better, worse, m) for m in metrics) if c]
                           for claim, better, worse, metrics in CLAIMS}
    written = []
    for key, label, higher, _ in METRICS:
        if bar_chart(results, key, label, higher, output / f"{key}.png"):
            written.append(output / f"{key}.png")
    curves = {name: entry["runs"]["0"]["bf16_x0_error_curve"] for name, entry in results["variants"].items()
              if entry["family"] == "prediction" and entry["runs"].get("0", {}).get("bf16_x0_error_curve")}
    if curves:
        plot_x0_error(curves, str(output / "x0_error_bf16.png"),
                      "x0 estimate: head in bf16 autocast vs float64, same inputs (held-out tokens, seed 0)")
        written.append(output / "x0_error_bf16.png")
    for name, artefacts in samples.items():
        images = artefacts["images"]
        per_digit = len(images) // 10
        shown = min(per_digit, 10)
        grid = images.reshape(10, per_digit, *images.shape[1:])[:, :shown]
        path = output / f"samples_{name}.png"
        accuracy = results["variants"][name]["runs"]["0"].get("generated_digit_accuracy")
        plot_digit_grid(grid, str(path), [f"{d} {DIGIT_WORDS[d]}" for d in range(10)],
                        title=f"{name}, seed 0: judge accuracy {accuracy:.0%}")
        written.append(path)
    masking = [n for n in ("v-fp32", "stage1-only", "ratio-0-1-only") if n in samples]
    if masking:
        first = samples[masking[0]]["inpainting"]
        count = min(10, len(first["originals"]))
        rows = [first["originals"][:count], np.where(first["masks"][:count] > 0, 0.5, first["originals"][:count]),
                *(samples[n]["inpainting"]["completions"][:count] for n in masking)]
        path = output / "inpainting_masking.png"
        plot_digit_grid(rows, str(path), ["original", "revealed\n(gray: masked)", *masking],
                        title="Inpainting 50 % revealed held-out digits (seed 0)")
        written.append(path)
    (output / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (output / "results.md").write_text(markdown(results))
    return [output / "results.json", output / "results.md", *written]


__all__ = ["CLAIMS", "METRICS", "compare", "markdown", "write_report"]
