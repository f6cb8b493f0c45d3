"""probes.json, results.md and pareto.png from the raw probe files (raw/): per model, each configuration's quality
(same seeds as the naive loop) and its side-by-side speed-up over the naive loop (median, min-max of per-round ratios).

    python benchmarks/reference/cpu-sampler-probes/make_report.py
"""
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
NAIVE_LONG = "naive MAR loop (no cache, separate CFG, DDPM 100)"
NAMES = {  # probe name -> what it is (generate() keywords on top of the defaults: DPM-Solver++ 10, prefix cache)
    "naive": "naive MAR loop (no prefix cache, separate CFG passes, DDPM 100)",
    "dpm10": "defaults: DPM-Solver++ 10",
    "dpm5": "DPM-Solver++ 5",
    "ddpm25": "DDPM 25",
    "disa-dpm10-3": "DiSA: DPM-Solver++ 10 -> 3",
    "dpm10-cond4": "defaults + condition cache 4",
    "dpm10-tok8": "defaults + token cache 8",
    "dpm10-tok16": "defaults + token cache 16",
    "dpm10-tok8-cond4": "defaults + token cache 8 + condition cache 4",
    "dpm10-tok16-cond4": "defaults + token cache 16 + condition cache 4",
    "dpm10-k/2": "defaults, num_iter / 2",
    "dpm10-k/2-gtr1": "defaults, num_iter / 2 + GtR 1",
    "dpm10-k/2-tok8": "defaults, num_iter / 2 + token cache 8",
    "combo-a": "defaults, num_iter / 2 + GtR 1 + token cache 8",
}
MODELS = {
    "outputs/demo16/model": {"tokens": 16, "num_iter": 16, "quality": ["quality16_300.jsonl"],
                             "noise": "quality16_300.jsonl", "timing": ["timing16_c.jsonl", "timing16_b.jsonl"]},
    "outputs/demo64/model": {"tokens": 64, "num_iter": 64, "quality": ["quality64_200.jsonl"],
                             "noise": "quality64_100.jsonl", "timing": ["timing64_c.jsonl", "timing64_b.jsonl"]},
}


def read(name):
    return [json.loads(line) for line in (HERE / "raw" / name).read_text().splitlines() if line.strip()]


def speedups(files):
    """config -> (per-round speed-ups, seconds per 10 images, file): each configuration from the first file that
    timed it."""
    out = {}
    for name in files:
        for row in read(name):
            for key, value in row["speedup"].items():
                config = "naive" if key == NAIVE_LONG else key
                if config not in out or out[config][2] == name:
                    entry = out.setdefault(config, ([], [], name))
                    entry[0].append(value)
                    entry[1].append(row["seconds"][key])
    return out


def main():
    report = {"what": "short development probes (each run < 3 min, 1 torch thread) on the project's shared 2-core "
                      "machine while another session's training held the benchmark lock (load 1.9-3.7, "
                      "raw/probes_load.log); not the cpu-sampler benchmark", "models": []}
    for model_dir, spec in MODELS.items():
        quality = {r["config"]: r for f in spec["quality"] for r in read(f)}
        noise = {r["config"]: r for r in read(spec["noise"])}
        timing = speedups(spec["timing"])
        naive_q = quality["naive"]
        rows = []
        for config in NAMES:
            q, t = quality.get(config), timing.get(config)
            if q is None and t is None:
                continue
            row = {"probe_name": config, "configuration": NAMES[config]}
            if q:
                row.update(images=q["images"], digit_fd=q["fd"], judged_accuracy=q["acc"],
                           fd_vs_naive=q["fd"] / naive_q["fd"] - 1,
                           matched=bool(q["fd"] <= 1.1 * naive_q["fd"] and q["acc"] >= naive_q["acc"] - 0.02))
            if t:
                row.update(speedup_median=statistics.median(t[0]), speedup_min=min(t[0]), speedup_max=max(t[0]),
                           rounds=len(t[0]), seconds_per_10_images_median=statistics.median(t[1]), timing_file=t[2])
            rows.append(row)
        chance = {"naive_fd": noise["naive"]["fd"], "naive_other_seeds_fd": noise["naive-other-seeds"]["fd"],
                  "images": noise["naive"]["images"]}
        report["models"].append({"model": model_dir, "tokens_per_image": spec["tokens"], "num_iter": spec["num_iter"],
                                 "rows": rows, "chance_spread": chance})
    (HERE / "probes.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report)
    plot(report)


def write_markdown(report):
    lines = ["# Sampling accelerations: development probes (not the cpu-sampler benchmark)", "",
             report["what"] + ". Matched = digit-FD within 10 % of the naive loop's (same seeds, same number of "
             "images) and judged accuracy within 2 points. Speed-up: the naive loop and the configuration side by "
             "side, 10 images per call, median (min-max) of the per-round ratios. Guidance 3.0, temperature 1.0.", ""]
    for model in report["models"]:
        c = model["chance_spread"]
        lines += [f"## {model['model']}: {model['tokens_per_image']} image tokens, naive loop at num_iter "
                  f"{model['num_iter']}", "",
                  "| configuration | images (quality) | digit-FD | vs naive | judged accuracy | matched | speed-up vs "
                  "naive (rounds) |", "|---|---|---|---|---|---|---|"]
        for r in model["rows"]:
            speed = (f"{r['speedup_median']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}, {r['rounds']})"
                     if "speedup_median" in r else "not timed")
            if "digit_fd" in r:
                lines.append(f"| {r['configuration']} | {r['images']} | {r['digit_fd']:.3f} | {r['fd_vs_naive']:+.1%} "
                             f"| {r['judged_accuracy']:.1%} | {'yes' if r['matched'] else 'no'} | {speed} |")
            else:
                lines.append(f"| {r['configuration']} | - | not measured | | | | {speed} |")
        lines += ["", f"Chance alone: the naive loop on {c['images']} images has digit-FD {c['naive_fd']:.3f} with one "
                      f"set of seeds and {c['naive_other_seeds_fd']:.3f} with another "
                      f"({c['naive_other_seeds_fd'] / c['naive_fd'] - 1:+.1%}).", ""]
    throughput = read("throughput.jsonl")
    lines += ["## Throughput and peak memory", "",
              "images/s (median of 3 side-by-side rounds after a warm-up call) / peak tensor memory per image during "
              "a call (LiveTensorMemory: every live tensor an op creates; weights excluded), batch = prompts "
              "(digits 0-9 cycling):", "",
              "| model | configuration | batch 1 | batch 16 | batch 64 |", "|---|---|---|---|---|"]
    for model_dir in MODELS:
        for config in dict.fromkeys(r["configuration"] for r in throughput if r["model"] == model_dir):
            cells = {r["batch_size"]: r for r in throughput if r["model"] == model_dir and r["configuration"] == config}
            lines.append(f"| {model_dir} | {config} | " + " | ".join(
                f"{cells[b]['images_per_s']:.2f} / {cells[b]['peak_memory_per_image_mb']:.2f} MB" for b in (1, 16, 64))
                + " |")
    lines += ["", "## torch.compile of the head (`compile_head`)", "",
              "The first call with `compile_head` (it compiles the head), then the eager defaults "
              "and the compiled head side by side (10 images, 3 rounds):", "",
              "| model | mode | first call (compiles) | warm call | eager call | speed-up per round | max abs difference |",
              "|---|---|---|---|---|---|---|"]
    for r in read("compile.jsonl"):
        lines.append(f"| {r['model']} | {r['mode']} | {r['first_compiled_call_s']:.1f} s | "
                     f"{r['warm_compiled_s_median']:.2f} s | {r['eager_s_median']:.2f} s | "
                     + ", ".join(f"{x:.2f}x" for x in r["speedup_rounds"]) + f" | {r['max_abs_difference']:.1e} |")
    lines += ["", "![pareto](pareto.png)", ""]
    (HERE / "results.md").write_text("\n".join(lines))


def plot(report):
    fig, axes = plt.subplots(1, len(report["models"]), figsize=(15, 9.5), squeeze=False)
    for ax, model in zip(axes[0], report["models"]):
        rows = [r for r in model["rows"] if "digit_fd" in r and "speedup_median" in r]
        naive = next(r for r in rows if r["probe_name"] == "naive")
        for i, r in enumerate(rows):
            color = "black" if r is naive else ("tab:green" if r["matched"] else "tab:red")
            ax.errorbar(r["digit_fd"], r["speedup_median"], yerr=[[r["speedup_median"] - r["speedup_min"]],
                                                                  [r["speedup_max"] - r["speedup_median"]]],
                        fmt="o", color=color, ms=6, capsize=2, zorder=3)
            ax.annotate(str(i), (r["digit_fd"], r["speedup_median"]), textcoords="offset points", xytext=(5, 3),
                        fontsize=9)
        ax.axvline(naive["digit_fd"] * 1.1, color="gray", ls="--", lw=0.8, label="naive digit-FD + 10 %")
        ax.axhline(10, color="gray", ls=":", lw=0.8, label="10x the naive loop")
        ax.set_yscale("log")
        ax.set_xlabel(f"digit-FD (lower is better; {naive['images']} images, same seeds)")
        ax.set_ylabel("speed-up over the naive loop (images/s ratio, median, min-max)")
        ax.set_title(f"{model['tokens_per_image']} image tokens ({model['model']}), num_iter {model['num_iter']}")
        ax.legend(loc="upper right", fontsize=8)
        legend = "\n".join(f"{i}: {r['configuration']}" for i, r in enumerate(rows))
        ax.text(0.0, -0.12, legend, transform=ax.transAxes, fontsize=8, va="top", family="monospace")
    fig.suptitle("Sampling configurations, speed vs quality (probes, 1 thread, 2-core machine under load 2-3; "
                 "black: naive loop, green: matched, red: not)", fontsize=10)
    fig.tight_layout()
    fig.subplots_adjust(wspace=0.25)
    fig.savefig(HERE / "pareto.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
