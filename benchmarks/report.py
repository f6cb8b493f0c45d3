"""Writes a suite's results: results.json (everything), results.md (the tables, README-ready) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402

from .acceleration_report import acceleration_markdown, plot_pareto  # noqa: E402


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _spread(summary: dict) -> str:
    return f"{summary['median']:.2f}x ({summary['min']:.2f}-{summary['max']:.2f})"


def _met(flag) -> str:
    return "n/a" if flag is None else ("yes" if flag else "**no**")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _shares(shares: dict) -> str:
    parts = [f"{name} {share:.0%}" for name, share in sorted(shares.items(), key=lambda kv: -kv[1])]
    rest = 1.0 - sum(shares.values())
    return ", ".join(parts + ([f"everything else {rest:.0%}"] if rest > 0 else []))


def sampler_markdown(section: dict) -> list[str]:
    s = section["settings"]
    lines = [f"### {section['title']}", "",
             f"Model: {section['model']}; {s['images_per_batch']} images per batch, num_iter={s['num_iter']}, "
             f"guidance {s['guidance_scale']}, temperature {s['temperature']}; {s['repeats']} side-by-side rounds "
             "(median, min-max). LLM passes and head calls are sequential calls per batch.", ""]
    rows = []
    for r in section["rows"]:
        quality = r.get("quality")
        rows.append([
            r["variant"], f"{r['images_per_s']:.2f}", _spread(r["speedup_vs_naive"]), r["backbone_passes"],
            r["head_calls"],
            f"{quality['digit_fd']:.2f}" if quality else "n/a",
            f"{quality['generated_digit_accuracy']:.0%}" if quality else "n/a",
            _met(r.get("quality_matched")) if quality else "n/a",
        ])
    lines += _table(["variant", "images/s", "speed-up vs naive", "LLM passes", "head calls", "digit-FD",
                     "digit accuracy", "quality matched"], rows)
    if not section["quality_measured"]:
        lines += ["", "Quality not applicable: no trained demo model (./mmar-demo/model) was found; run `mmar demo` "
                      "first or pass `--model DIR`."]
    else:
        lines += ["", f"Quality: {s['quality_images']} images (10 digits x seeds, the same prompts and seeds for "
                      "every variant), judged by the independent digit classifier (training/judge.py)."]
    diffs = [f"{r['variant']}: {r['max_abs_diff_vs_naive']:.1e}" for r in section["rows"] if
             "max_abs_diff_vs_naive" in r]
    if diffs:
        lines += ["", "Same images as the naive loop (max abs pixel difference): " + "; ".join(diffs) + "."]
    profile = section.get("profile")
    if profile:
        lines += ["", f"Where the time of `{profile['variant']}` goes (torch.profiler, one call): "
                      f"{_shares(profile['regions_share'])}."]
    return lines


def janus_markdown(section: dict) -> list[str]:
    s = section["settings"]
    lines = [f"### {section['title']}", "",
             f"{s['images']} image(s) per batch, guidance {s['guidance_scale']} (both batch their CFG rows); MMAR "
             f"head: {s['scheduler']} {s['steps']} steps; Janus VQ codebook {s['janus_codebook']}; random weights; "
             f"{s['repeats']} side-by-side rounds. Seconds per image include decoding to pixels.", ""]
    def share(r):
        t = r.get("mmar_time_share")
        return "" if not t else " / ".join(f"{t.get(k, 0):.0%}" for k in ("LLM", "diffusion head", "scheduler step"))

    rows = [[r["image_tokens"], r["mmar_num_iter"], f"{r['mmar_seconds_per_image']:.3f}",
             f"{r['janus_seconds_per_image']:.3f}", f"{r['mmar_backbone_passes']} / {r['janus_backbone_passes']}",
             _spread(r["speedup"]), share(r)] for r in section["rows"]]
    lines += _table(["image tokens", "MMAR num_iter", "MMAR s/image", "Janus s/image",
                     "LLM passes MMAR / Janus", "MMAR speed-up", "MMAR time in LLM / head / scheduler"], rows)
    if section.get("notes"):
        lines += [""] + [f"- {note}" for note in section["notes"]]
    return lines


def training_markdown(section: dict) -> list[str]:
    s = section["settings"]
    lines = [f"### {section['title']}", "",
             f"Batch {s['batch_size']} from the training collator (half understanding, half generation), AdamW; "
             f"{s['repeats']} side-by-side rounds. Memory: peak live tensors in one step "
             f"({section['rows'][0]['memory_source']}).", ""]
    rows = [[r.get("model", "MMAR"), r["image_tokens"], r["sequence_length"], f"{r['lm_seconds_per_step'] * 1e3:.0f}",
             f"{r['mmar_seconds_per_step'] * 1e3:.0f}", f"{r['time_overhead']:+.0%}",
             f"{r['lm_peak_memory_mb']:.1f}", f"{r['mmar_peak_memory_mb']:.1f}", _x(r["memory_ratio"])]
            for r in section["rows"]]
    lines += _table(["model", "image tokens", "sequence", "LM ms/step", "MMAR ms/step", "time overhead", "LM peak MB",
                     "MMAR peak MB", "memory ratio"], rows)
    parts = section["rows"][0].get("overhead_parts_s")
    if parts:
        total = section["rows"][0]["mmar_seconds_per_step"] - section["rows"][0]["lm_seconds_per_step"]
        lines += ["", f"Where MMAR's extra {total * 1e3:.0f} ms per step goes (each part timed alone):", ""]
        lines += _table(["part", "ms"], [[name, f"{sec * 1e3:.1f}"] for name, sec in parts.items()])
    if section.get("profile"):
        lines += ["", "torch.profiler regions of one MMAR step (forward side; backward is listed by autograd node in "
                      "training_profile.txt): " + _shares(section["profile"]["regions_share"]) + "."]
    if section.get("flop_estimate"):
        lines += ["", "Expected overhead from FLOPs (head x diffusion_batch_mul vs LLM, forward+backward): " +
                  "; ".join(f"{name}: {value:+.0%}" for name, value in section["flop_estimate"].items())]
    return lines


def gpu_markdown(section: dict) -> list[str]:
    lines = [f"### {section['title']}", "", f"Device: {section['device']}.", ""]
    lines += _table(["batch", "images/s", "s/image"],
                    [[r["batch_size"], f"{r['images_per_s']:.2f}", f"{r['seconds_per_image']:.3f}"]
                     for r in section["sampling"]])
    s = section["settings"]
    lines += ["", f"Optimised sampler ({s['scheduler']} {s['steps']} head steps, num_iter {s['num_iter']}, guidance "
                  f"{s['guidance_scale']}) vs the naive MAR loop at batch {s['naive_batch_size']}: "
                  f"{_spread(section['naive_speedup'])}; vs Janus (same backbone, same image tokens) at batch "
                  f"{s['janus_batch_size']}: {_spread(section['janus_speedup'])} (per image, side by side)."]
    if section.get("sampler_profile"):
        lines += ["", "Where the optimised sampler's time goes (host-side regions, gpu_sampler_profile.txt has the "
                      f"device columns): {_shares(section['sampler_profile']['regions_share'])}."]
    if section.get("training"):
        lines += [""] + training_step_table(section["training"])
    return lines


def training_step_table(t: dict) -> list[str]:
    """MMAR vs LM rows of a gpu_bench.run_gpu_training result."""
    lines = _table(["model", "ms/step", "tokens/s", "MFU", "peak GB"], [
        [name, f"{v['seconds_per_step'] * 1e3:.0f}", f"{v['tokens_per_s']:.0f}",
         "n/a" if v.get("mfu") is None else f"{v['mfu']:.1%}", f"{v['peak_memory_gb']:.2f}"]
        for name, v in ((n, t[n]) for n in ("lm", "mmar", "mmar_cached_image_tokens") if n in t)])
    peak = t["peak_tflops_assumed"]
    lines += ["", f"MMAR / LM time per step: {_spread(t['time_ratio'])}; peak memory ratio "
                  f"{_x(t['mmar']['peak_memory_gb'] / t['lm']['peak_memory_gb'])}"
                  + (f"; MFU against a dense bf16 peak of {peak} TFLOP/s." if peak else ".")]
    if "mmar_cached_image_tokens" in t:
        lines += ["", "With `data.cache_image_tokens: true` (the frozen VAE encoded the dataset once; "
                      f"`mmar_cached_image_tokens`): MMAR / LM time per step {_spread(t['time_ratio_cached_image_tokens'])}"
                      f", peak memory ratio "
                      f"{_x(t['mmar_cached_image_tokens']['peak_memory_gb'] / t['lm']['peak_memory_gb'])}."]
    return lines


def paper_training_markdown(section: dict) -> list[str]:
    s = section["settings"]
    return [f"### {section['title']}", "",
            f"Batch {s['train_batch_size']} (half generation rows with {s.get('mask_ratio', 0.85):.0%} of the image "
            "tokens masked, half understanding rows), AdamW, random weights; side-by-side rounds. Peak memory: live "
            f"tensors in one step ({section['training']['mmar'].get('memory_source', 'see results.json')}).",
            "", *training_step_table(section["training"])]


def targets_markdown(targets: list[dict]) -> list[str]:
    lines = ["### Targets", ""]
    lines += _table(["figure", "measured", "target", "met"],
                    [[t["figure"], t["measured"], t["target"], _met(t["met"])] for t in targets])
    return lines


def collect_targets(sections: dict) -> list[dict]:
    targets = []
    sampler = sections.get("sampler")
    if sampler:
        h = sampler["headline"]
        targets.append({"figure": f"sampler images/s vs naive ({h.get('variant')}; quality {h.get('quality', '-')})",
                        "measured": _spread(h["speedup"]) if h.get("speedup") else "-", "target": h["target"],
                        "met": h["met"]})
    janus = sections.get("janus")
    if janus and janus["rows"]:
        best = max(janus["rows"], key=lambda r: r["speedup"]["median"])
        targets.append({"figure": f"MMAR vs Janus s/image (best: {best['image_tokens']} tokens, num_iter "
                                  f"{best['mmar_num_iter']})", "measured": _spread(best["speedup"]),
                        "target": janus["target"], "met": best["speedup"]["median"] >= 10.0})
    for section_name, key, where in (("training", "targets", "demo geometry"),
                                     ("paper_training", "targets", "paper-0.5b geometry"),
                                     ("paper_training", "targets_cached_image_tokens",
                                      "paper-0.5b geometry, cached image tokens")):
        training = sections.get(section_name)
        for name, t in (training or {}).get(key, {}).items():
            shown = f"{t['value']:+.0%}" if name == "time_overhead" else _x(t["value"])
            targets.append({"figure": f"training step {name.replace('_', ' ')} ({where})", "measured": shown,
                            "target": t["target"], "met": t["met"]})
    return targets


def plot_sampler(section: dict, path: Path) -> None:
    rows = section["rows"]
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.5))
    names = [r["variant"] for r in rows][::-1]
    values = [r["images_per_s"] for r in rows][::-1]
    bars = ax.barh(names, values, color="tab:blue")
    for bar, r in zip(bars, rows[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f"  {r['speedup_vs_naive']['median']:.1f}x",
                va="center")
    ax.set_xlim(0, max(values) * 1.15)
    ax.set_xlabel("images / s (median of rounds); label: speed-up over the naive loop")
    ax.set_title("text -> image sampler, one optimisation at a time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_janus_tokens(section: dict, path: Path) -> None:
    rows = section["rows"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    janus = sorted({(r["image_tokens"], r["janus_seconds_per_image"]) for r in rows})
    ax.plot([t for t, _ in janus], [s for _, s in janus], "o-", color="black", label="Janus (1 pass / token)")
    for k in sorted({r["mmar_num_iter"] for r in rows}):
        points = sorted((r["image_tokens"], r["mmar_seconds_per_image"]) for r in rows if r["mmar_num_iter"] == k)
        ax.plot([t for t, _ in points], [s for _, s in points], "s-", label=f"MMAR num_iter={k}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image tokens per image")
    ax.set_ylabel("seconds per image")
    ax.set_title("time per image vs image tokens (same backbone)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_num_iter(section: dict, path: Path) -> None:
    rows = sorted(section["rows"], key=lambda r: r["mmar_num_iter"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot([r["mmar_num_iter"] for r in rows], [r["mmar_seconds_per_image"] for r in rows], "s-", label="MMAR")
    ax.axhline(rows[0]["janus_seconds_per_image"], color="black", linestyle="--", label="Janus")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("num_iter (masked-AR steps)")
    ax.set_ylabel("seconds per image")
    ax.set_title(f"time per image vs num_iter ({rows[0]['image_tokens']} image tokens)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(section: dict, path: Path) -> None:
    rows = [r for r in section["rows"] if r.get("model", "MMAR") == "MMAR"]
    seq = [r["sequence_length"] for r in rows]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    ax_time.plot(seq, [r["lm_seconds_per_step"] * 1e3 for r in rows], "o-", color="black", label="backbone LM")
    ax_time.plot(seq, [r["mmar_seconds_per_step"] * 1e3 for r in rows], "s-", label="MMAR")
    ax_time.set_ylabel("ms per training step")
    ax_mem.plot(seq, [r["lm_peak_memory_mb"] for r in rows], "o-", color="black", label="backbone LM")
    ax_mem.plot(seq, [r["mmar_peak_memory_mb"] for r in rows], "s-", label="MMAR")
    ax_mem.set_ylabel("peak tensor memory (MB)")
    for ax in (ax_time, ax_mem):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.legend()
    fig.suptitle(f"training step vs sequence length (batch {section['settings']['batch_size']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PLOTS = {"sampler": ("sampler_speedup.png", plot_sampler), "janus": ("scaling_image_tokens.png", plot_janus_tokens),
         "num_iter_scaling": ("scaling_num_iter.png", plot_num_iter),
         "training_scaling": ("scaling_training_sequence.png", plot_training),
         "acceleration": ("sampler_pareto.png", plot_pareto)}
MARKDOWN = {"sampler": sampler_markdown, "janus": janus_markdown, "num_iter_scaling": janus_markdown,
            "training": training_markdown, "training_scaling": training_markdown,
            "paper_training": paper_training_markdown, "gpu": gpu_markdown, "acceleration": acceleration_markdown}


def write_report(out_dir: Path, suite_name: str, machine: dict, sections: dict, loaded: bool) -> dict:
    """results.json, results.md and the plots of every section present; returns {kind: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = collect_targets(sections)
    (out_dir / "results.json").write_text(json.dumps(
        {"suite": suite_name, "machine": machine, "measured_under_load": loaded, "targets": targets,
         "sections": sections}, indent=1, default=str))
    load = machine.get("load_average_1min")
    lines = [f"## Performance ({suite_name})", "",
             f"torch {machine['torch']}, {machine['torch_threads']} thread(s), {machine['cpu_count']} CPUs"
             + (f", {machine['cuda_device']}" if machine.get("cuda_device") else "")
             + (f"; 1-min load average {load:.1f}" if load is not None else "") + "."
             + (" **Measured under load** (other processes were using the CPUs): ratios are side by side and "
                "hold; absolute times are slower than on a quiet machine." if loaded else ""), ""]
    lines += targets_markdown(targets) + [""]
    for name, section in sections.items():
        lines += MARKDOWN[name](section) + [""]
    written = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    for name, (filename, plot) in PLOTS.items():
        if name in sections and sections[name].get("rows"):
            plot(sections[name], out_dir / filename)
            written[name] = out_dir / filename
            lines.append(f"![{name}]({filename})")
    (out_dir / "results.md").write_text("\n".join(lines).rstrip() + "\n")
    return written


__all__ = ["write_report"]
