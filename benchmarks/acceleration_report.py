"""The acceleration section's tables (results.md) and its Pareto plot (images/s against digit-FD, every
configuration, one panel per model)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402


def _spread(summary: dict) -> str:
    return f"{summary['median']:.2f}x ({summary['min']:.2f}-{summary['max']:.2f})"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def acceleration_markdown(section: dict) -> list[str]:
    s = section["settings"]
    lines = [f"### {section['title']}", "",
             f"Guidance {s.get('guidance_scale', 3.0)}, temperature {s.get('temperature', 1.0)}; {s['repeats']} "
             "side-by-side rounds (median, min-max of the per-round ratios). Matched = digit-FD within 10 % of the "
             "naive loop's and judged accuracy within 2 points.", ""]
    for model in section["models"]:
        lines += [f"#### {model['model']} ({model['tokens_per_image']} image tokens, naive loop at num_iter "
                  f"{model['num_iter']}, {model['images_per_batch']} images per timed batch)", ""]
        rows = []
        for r in model["rows"]:
            q = r.get("quality")
            rows.append([r["configuration"], r["num_iter"], f"{r['images_per_s']:.2f}", _spread(r["speedup_vs_naive"]),
                         f"{q['digit_fd']:.2f}" if q else "n/a",
                         f"{q['generated_digit_accuracy']:.1%}" if q else "n/a",
                         ("yes" if r["matched"] else "no") if "matched" in r else "n/a"])
        lines += _table(["configuration", "num_iter", "images/s", "speed-up vs naive", "digit-FD", "judged accuracy",
                         "matched"], rows)
        if model.get("quality_measured"):
            other = model["naive_other_seeds"]
            lines += ["", f"Quality: {model['quality_images']} images per configuration (10 digits x seeds, the same "
                          f"for all). The naive loop with other seeds: digit-FD {other['digit_fd']:.2f}, accuracy "
                          f"{other['generated_digit_accuracy']:.1%} (how far the figures move by chance)."]
        else:
            lines += ["", "Quality not applicable: a random model (pass trained folders with --model A,B)."]
        for name, cost in model.get("compile_cost", {}).items():
            lines += ["", f"{name}: the first call took {cost['first_call_s']:.1f} s, a warm one "
                          f"{cost['warm_call_s']:.2f} s: compiling costs {cost['compile_s']:.1f} s once per process "
                          "(per model and shape bucket)."]
        h = model["headline"]
        if h["configuration"]:
            lines += ["", f"Fastest matched configuration: **{h['configuration']}**, {_spread(h['speedup'])} the naive "
                          f"loop's images/s (target {h['target']}: {'met' if h['met'] else 'not met'})."]
        if model.get("throughput"):
            lines += ["", "Throughput (images/s, median of rounds) and peak tensor memory per image during a call "
                          "(weights excluded):", ""]
            batches = sorted({r["batch_size"] for r in model["throughput"]})
            names = list(dict.fromkeys(r["configuration"] for r in model["throughput"]))
            cells = {(r["configuration"], r["batch_size"]): r for r in model["throughput"]}

            def cell(name, batch):
                r = cells[(name, batch)]
                memory = r.get("peak_memory_per_image_mb")
                return f"{r['images_per_s']:.2f}" + (f" / {memory:.2f} MB" if memory is not None else "")

            lines += _table(["configuration", *(f"batch {b}" for b in batches)],
                            [[name, *(cell(name, b) for b in batches)] for name in names])
        lines.append("")
    return lines


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower FD, higher images/s)."""
    return [i for i, (fd, speed) in enumerate(points)
            if not any(o_fd <= fd and o_speed >= speed and (o_fd, o_speed) != (fd, speed) for o_fd, o_speed in points)]


def plot_pareto(section: dict, path: Path) -> None:
    models = [m for m in section["models"] if m.get("quality_measured")] or section["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(7.5 * len(models), 6.0), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = model["rows"]
        measured = bool(model.get("quality_measured"))
        xs = [r["quality"]["digit_fd"] if measured else i for i, r in enumerate(rows)]
        ys = [r["images_per_s"] for r in rows]
        front = set(pareto_front(list(zip(xs, ys)))) if measured else set()
        for i, (x, y, r) in enumerate(zip(xs, ys, rows)):
            color = "black" if i == 0 else ("tab:green" if r.get("matched") else "tab:red")
            ax.scatter(x, y, color=color, marker="s" if i in front else "o", s=45, zorder=3)
            ax.annotate(f"{i}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if measured:
            naive_fd = rows[0]["quality"]["digit_fd"]
            ax.axvline(naive_fd * 1.1, color="gray", linestyle="--", linewidth=0.8, label="naive FD + 10 %")
            ax.axhline(ys[0] * 10, color="gray", linestyle=":", linewidth=0.8, label="10x naive images/s")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("digit-FD (lower is better)" if measured else "configuration (no quality: random model)")
        ax.set_ylabel("images / s (median of rounds)")
        ax.set_title(f"{model['tokens_per_image']} image tokens: {Path(str(model['model'])).parent.name or 'model'}")
        legend = "\n".join(f"{i}: {r['configuration']}" for i, r in enumerate(rows))
        ax.text(1.02, 1.0, legend, transform=ax.transAxes, fontsize=7, va="top", family="monospace")
    fig.suptitle("sampling configurations: speed vs quality (black: naive loop; green: matched; red: not; "
                 "squares: Pareto front)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


__all__ = ["acceleration_markdown", "pareto_front", "plot_pareto"]
