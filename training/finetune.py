"""`mmar finetune --config training/configs/lora-digits.yaml [key=value ...]`: LoRA fine-tuning of an MMAR model.

The default run starts from the `mmar demo` model (./mmar-demo/model) and teaches it a new caption style: digits
named in German ("eine handgeschriebene sieben", "Welche Ziffer ist das?" -> "sieben"). Words the tokenizer does
not know get their own tokens (embedding and LM-head rows trained through peft's trainable tokens); the backbone
gets LoRA on its attention and MLP projections; the diffusion head and image embedder train in full. Training runs
with trl's `SFTTrainer` (`trainer=sft`, through `MMARSFTTrainer`, which keeps MMAR's own forward and diffusion loss)
or transformers' `Trainer` (`trainer=trainer`). The output folder holds `adapter/` (peft adapter + grown processor),
`merged/` (the adapter merged into the base: a plain MMAR model, `mmar export` ready), metrics.json with the German
metrics before and after (and the English ones after, to show what was kept; `replay` keeps a share of the
training rows in English so that English questions still get English answers), samples.png and loss.png.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import inspect
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import Trainer

from .callbacks import MaskStageCallback, TimeBudgetCallback
from .cli import DEFAULT_FINETUNE_CONFIG
from .collator import MMARDataCollator
from .data import load_digits_dataset
from .threads import CpuThreadsCallback
from .train import TRAINING_DEFAULTS, MMARTrainer

DEFAULT_CONFIG = DEFAULT_FINETUNE_CONFIG
DEFAULT_BASE_MODEL = "./mmar-demo/model"
TOP_LEVEL_KEYS = ("seed", "base_model", "output_dir", "trainer", "max_steps", "caption_style", "replay", "lora",
                  "collator", "training", "evaluation", "time_budget")
TRAINERS = ("sft", "trainer")
EVALUATION_DEFAULTS = {"seeds_per_digit": 10, "num_iter": 16, "guidance_scale": 3.0, "guidance_schedule": "linear",
                       "temperature": 1.0, "num_inference_steps": 50, "max_new_tokens": 4, "batch_size": 100,
                       "english": True}
# A fine-tune saves its adapter once at the end, from the main process.
FINETUNE_TRAINING_DEFAULTS = {**TRAINING_DEFAULTS, "save_strategy": "no", "dataloader_num_workers": 0,
                              "dataloader_pin_memory": torch.cuda.is_available()}
# trl SFTConfig defaults that do not fit MMAR: bf16 on CPU, truncation that could cut an image span, trl's own
# dataset preparation (the MMAR collator does all processing) and activation checkpointing of tiny models.
SFT_DEFAULTS = {"max_length": None, "dataset_kwargs": {"skip_prepare_dataset": True}, "gradient_checkpointing": False}
FINETUNE_MARKER = "mmar_finetune"


# ------------------------------------------------------------------------------------------------ caption styles
@dataclass(frozen=True)
class CaptionStyle:
    """How digits are captioned and asked about."""

    digit_words: tuple[str, ...]
    question: str
    templates: tuple[str, ...]  # {word}: the digit's word, {digit}: its numeral
    generation_template: str

    def caption(self, digit: int, template: str | None = None) -> str:
        return (template or self.generation_template).format(word=self.digit_words[digit], digit=digit)

    def corpus(self) -> list[str]:
        return [self.caption(d, t) for d in range(10) for t in self.templates] + [self.question, *self.digit_words]

    def read_digit(self, answer: str) -> int | None:
        """The first digit an answer names in this style's words, or None."""
        match = re.search(r"\b(" + "|".join(self.digit_words) + r")\b", answer.lower())
        return self.digit_words.index(match.group(1)) if match else None


CAPTION_STYLES = {
    "german": CaptionStyle(
        digit_words=("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
        question="Welche Ziffer ist das?",
        templates=("eine handgeschriebene {word}", "die ziffer {word}", "die zahl {digit}"),
        generation_template="eine handgeschriebene {word}",
    ),
}


def styled_digits(style: CaptionStyle, image_size: int, seed: int, replay: float = 0.0):
    """The demo's digits split (same train / held-out rows) with captions, question and answers in `style`.

    `replay`: fraction of the TRAINING rows that keep their original (English) text, so that the model keeps
    answering English questions in English; the held-out split is always fully in `style`.
    """
    if not 0.0 <= replay < 1.0:
        raise ValueError(f"replay must be in [0, 1), got {replay}")
    splits = load_digits_dataset(image_size=image_size, seed=seed)
    threshold = int(round(replay * 1000))

    def restyle(example, keep_original: bool):
        # A fixed per-row choice (by sample_index), so the same rows are replayed in every epoch and run.
        if keep_original and (example["sample_index"] * 7919 + seed) % 1000 < threshold:
            return {}
        template = style.templates[(seed + example["sample_index"]) % len(style.templates)]
        digit = example["label"]
        return {"caption": style.caption(digit, template), "question": style.question,
                "answer": style.digit_words[digit]}

    return {name: split.map(restyle, fn_kwargs={"keep_original": name == "train"}) for name, split in splits.items()}


# ------------------------------------------------------------------------------------------------ config
def load_finetune_config(path=DEFAULT_CONFIG, overrides: list[str] | None = None) -> dict:
    """Read the YAML, apply `key=value` / `section.key=value` overrides (as `mmar train` does), check every key."""
    from .run_config import apply_overrides

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Config file {str(path)!r} does not exist")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    config = apply_overrides(config, list(overrides or []))
    validate_finetune_config(config, str(path))
    return config


def _check_section(name: str, values, allowed: set[str]) -> None:
    if values is None:
        return
    if not isinstance(values, dict):
        raise ValueError(f"Config section {name!r} must be a mapping, got {type(values).__name__}")
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"Unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)} in the fine-tuning config")


def validate_finetune_config(config: dict, source: str = "config") -> None:
    from peft import LoraConfig
    from trl import SFTConfig

    unknown = sorted(set(config) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {source}; known keys: {', '.join(TOP_LEVEL_KEYS)}")
    if config.get("trainer", "sft") not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, got {config.get('trainer')!r}")
    if config.get("caption_style", "german") not in CAPTION_STYLES:
        raise ValueError(f"caption_style must be one of {sorted(CAPTION_STYLES)}, got {config.get('caption_style')!r}")
    replay = config.get("replay", 0.0)
    if not isinstance(replay, (int, float)) or not 0.0 <= replay < 1.0:
        raise ValueError(f"replay must be a number in [0, 1), got {replay!r}")
    max_steps = config.get("max_steps")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    _check_section("lora", config.get("lora"), {f.name for f in dataclasses.fields(LoraConfig)} - {"task_type"})
    collator_keys = set(inspect.signature(MMARDataCollator.__init__).parameters) - {"self", "processor",
                                                                                     "tokens_per_image", "seed"}
    _check_section("collator", config.get("collator"), collator_keys)
    training = config.get("training") or {}
    _check_section("training", training, {f.name for f in dataclasses.fields(SFTConfig) if f.init})
    for key in ("output_dir", "max_steps"):
        if key in training:
            raise ValueError(f"Set {key} at the top level of the fine-tuning config (e.g. {key}=...), not training.{key}")
    _check_section("evaluation", config.get("evaluation"), set(EVALUATION_DEFAULTS))


# ------------------------------------------------------------------------------------------------ trainers
class _MMARLoss(Trainer):
    """trl's `SFTTrainer.compute_loss` calls the model with `fused_lm_head=True`, which runs the base model and the
    LM head only: MMAR's forward, and with it the diffusion loss, would never run. Use `Trainer.compute_loss`."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False
        return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


@functools.cache
def _sft_trainer_class():
    from trl import SFTTrainer  # imported on first use: trl is only needed by `trainer: sft` runs

    class MMARSFTTrainer(MMARTrainer, _MMARLoss, SFTTrainer):
        """trl `SFTTrainer` that optimises MMAR's own loss (text CE + diffusion MSE) and logs both parts."""

    return MMARSFTTrainer


def __getattr__(name):  # `from training.finetune import MMARSFTTrainer` without importing trl at module import
    if name == "MMARSFTTrainer":
        return _sft_trainer_class()
    raise AttributeError(name)


def build_trainer(kind: str, model, processor, train_dataset, collator, training: dict, output_dir: str,
                  max_steps: int, seed: int, callbacks=()):
    """An `MMARSFTTrainer` (kind "sft") or a transformers `MMARTrainer` (kind "trainer") for a (peft) MMAR model."""
    kwargs = {**FINETUNE_TRAINING_DEFAULTS, "bf16": False, **(training or {}), "output_dir": output_dir,
              "max_steps": max_steps, "seed": seed}
    if kind == "sft":
        from trl import SFTConfig

        args, trainer_class = SFTConfig(**{**SFT_DEFAULTS, **kwargs}), _sft_trainer_class()
    elif kind == "trainer":
        from transformers import TrainingArguments

        args, trainer_class = TrainingArguments(**kwargs), MMARTrainer
    else:
        raise ValueError(f"trainer must be one of {TRAINERS}, got {kind!r}")
    if args.remove_unused_columns:
        raise ValueError("training.remove_unused_columns must be false: the collator needs the raw image and text")
    return trainer_class(model=model, args=args, train_dataset=train_dataset, data_collator=collator,
                         processing_class=processor, callbacks=list(callbacks))


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate_style(model, processor, heldout, style: CaptionStyle, evaluation: dict, seed: int) -> tuple[dict, torch.Tensor]:
    """Caption accuracy (answers read in `style`), generated-digit accuracy and digit-FD of `style` captions."""
    from .demo import load_metric

    model.eval()
    batch_size = evaluation["batch_size"]
    answers = []
    for start in range(0, len(heldout), batch_size):
        rows = heldout[start:start + batch_size]
        inputs = processor(text=[f"{processor.image_token}{style.question}"] * len(rows["image"]),
                           images=rows["image"], padding=True, padding_side="left", return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=evaluation["max_new_tokens"], do_sample=False)
        answers += processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    read = [style.read_digit(answer) for answer in answers]
    caption = load_metric("caption_accuracy").compute(
        predictions=["" if digit is None else str(digit) for digit in read], references=list(heldout["label"]))

    seeds = evaluation["seeds_per_digit"]
    digits = np.repeat(np.arange(10), seeds)
    images = []
    for start in range(0, len(digits), batch_size):
        chunk = digits[start:start + batch_size]
        inputs = processor(text=[style.caption(int(d)) for d in chunk], generation_mode="image", return_tensors="pt")
        generators = [torch.Generator().manual_seed(int(i % seeds)) for i in range(start, start + len(chunk))]
        images.append(model.generate(
            **inputs, generation_mode="image", num_iter=evaluation["num_iter"],
            guidance_scale=evaluation["guidance_scale"], guidance_schedule=evaluation["guidance_schedule"],
            temperature=evaluation["temperature"], num_inference_steps=evaluation["num_inference_steps"],
            generator=generators, output_type="pt", show_progress=False))
    images = torch.cat(images).float()
    gray = images.mean(dim=1).numpy()
    accuracy = load_metric("generated_digit_accuracy").compute(predictions=gray, references=digits.tolist(),
                                                               judge_seed=seed)
    metrics = {
        "caption_accuracy": caption["caption_accuracy"],
        "generated_digit_accuracy": accuracy["generated_digit_accuracy"],
        "digit_fd": load_metric("digit_fd").compute(predictions=gray, judge_seed=seed)["digit_fd"],
        "example_answers": answers[:5],
    }
    return metrics, images


# ------------------------------------------------------------------------------------------------ the run
def _check_output_dir(output: Path) -> None:
    if output.is_dir() and any(output.iterdir()):
        try:
            previous = FINETUNE_MARKER in json.loads((output / "metrics.json").read_text())
        except (OSError, ValueError):
            previous = False
        if not previous:
            raise ValueError(f"output_dir {str(output)!r} is not empty and holds no previous `mmar finetune` run")


def finetune(config: dict) -> dict:
    """Run the fine-tuning described by a validated config (see the module docstring); return its metrics."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed

    import modeling_mmar  # noqa: F401  (registers the MMAR Auto classes)
    import processors  # noqa: F401

    from .lora import add_words, lora_config, merge_adapter, save_adapter, trainable_share
    from .plots import plot_digit_grid, plot_loss

    start = time.monotonic()
    seed = int(config.get("seed", 0))
    base_dir = Path(config.get("base_model") or DEFAULT_BASE_MODEL).expanduser()
    if not (base_dir / "config.json").is_file():
        raise ValueError(f"Base model {str(base_dir)!r} does not exist (no config.json): run `mmar demo` first (it "
                         f"saves {DEFAULT_BASE_MODEL}) or pass base_model=DIR")
    output = Path(config.get("output_dir") or "outputs/lora-digits").expanduser().resolve()
    _check_output_dir(output)
    style = CAPTION_STYLES[config.get("caption_style", "german")]
    evaluation = {**EVALUATION_DEFAULTS, **(config.get("evaluation") or {})}

    model = AutoModelForImageTextToText.from_pretrained(str(base_dir))
    processor = AutoProcessor.from_pretrained(str(base_dir))
    splits = styled_digits(style, model.config.image_size, seed, float(config.get("replay", 0.0)))
    before, _ = evaluate_style(model, processor, splits["heldout"], style, evaluation, seed)
    print(f"before fine-tuning ({config.get('caption_style', 'german')}): "
          + ", ".join(f"{k} {v:.3f}" for k, v in before.items() if isinstance(v, float)))

    base_vocab_size = model.config.text_config.vocab_size
    new_token_ids = add_words(processor, model, style.corpus())
    peft_model = get_peft_model(model, lora_config(**(config.get("lora") or {}), new_token_ids=new_token_ids,
                                                   model_config=model.config))
    trainable, total, share = trainable_share(peft_model)
    print(f"new tokens: {len(new_token_ids)}; trainable parameters: {trainable:,} of {total:,} ({share:.2%})")

    set_seed(seed)
    collator = MMARDataCollator(processor, model.config.tokens_per_image, seed=seed, **(config.get("collator") or {}))
    time_budget = TimeBudgetCallback(config.get("time_budget"))
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    trainer = build_trainer(config.get("trainer", "sft"), peft_model, processor, splits["train"], collator,
                            config.get("training"), str(output / "trainer"), config["max_steps"], seed,
                            callbacks=[MaskStageCallback(collator), time_budget, CpuThreadsCallback()])
    train_start = time.monotonic()
    trainer.train()
    train_seconds = time.monotonic() - train_start
    print(time_budget.summary(trainer.state))

    save_adapter(peft_model, processor, base_dir, output / "adapter", base_vocab_size)
    merge_adapter(base_dir, output / "adapter", output / "merged")
    shutil.rmtree(output / "trainer", ignore_errors=True)
    merged = AutoModelForImageTextToText.from_pretrained(str(output / "merged"))
    merged_processor = AutoProcessor.from_pretrained(str(output / "merged"))
    after, images = evaluate_style(merged, merged_processor, splits["heldout"], style, evaluation, seed)
    metrics = {**after, "before": before}
    if evaluation["english"]:
        from .demo import evaluate_run

        english, _ = evaluate_run(merged, merged_processor, load_digits_dataset(model.config.image_size, seed)[
            "heldout"], {k: v for k, v in evaluation.items() if k != "english"}, seed)
        metrics["english_after"] = {k: english[k] for k in ("caption_accuracy", "generated_digit_accuracy", "digit_fd")}
        base_metrics = base_dir.parent / "metrics.json"
        if base_metrics.is_file():
            recorded = json.loads(base_metrics.read_text())
            metrics["english_before"] = {k: recorded[k] for k in metrics["english_after"] if k in recorded}
    metrics.update(
        new_tokens=len(new_token_ids), trainable_parameters=trainable, total_parameters=total,
        trainable_share=share, train_steps=trainer.state.global_step, train_seconds=train_seconds,
        total_seconds=time.monotonic() - start, trainer=config.get("trainer", "sft"), evaluation=evaluation,
        examples={"example_prompt": style.caption(7), "example_question": style.question},
    )
    metrics[FINETUNE_MARKER] = {"base_model": str(base_dir.resolve()), "config": copy.deepcopy(config)}
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    seeds = evaluation["seeds_per_digit"]
    plot_digit_grid(images.reshape(10, seeds, *images.shape[1:]), str(output / "samples.png"),
                    [style.caption(d) for d in range(10)],
                    title=f"after LoRA fine-tuning (judge accuracy {after['generated_digit_accuracy']:.0%})")
    if any("loss" in entry for entry in trainer.state.log_history):
        plot_loss(trainer.state.log_history, str(output / "loss.png"), title="LoRA fine-tuning")
    return metrics


def format_report(metrics: dict) -> str:
    rows = [("held-out caption accuracy", "caption_accuracy", "{:.1%}"),
            ("generated-digit accuracy (judge)", "generated_digit_accuracy", "{:.1%}"),
            ("digit-FD generated vs held-out", "digit_fd", "{:.2f}")]
    lines = [f"{'metric':<44}{'before':>10}{'after':>10}"]
    lines += [f"{'new style: ' + name:<44}{fmt.format(metrics['before'][key]):>10}{fmt.format(metrics[key]):>10}"
              for name, key, fmt in rows]
    if "english_after" in metrics:
        before = metrics.get("english_before", {})
        lines += [f"{'English: ' + name:<44}{fmt.format(before[key]) if key in before else '-':>10}"
                  f"{fmt.format(metrics['english_after'][key]):>10}" for name, key, fmt in rows]
    lines.append(f"trainable parameters: {metrics['trainable_parameters']:,} of {metrics['total_parameters']:,} "
                 f"({metrics['trainable_share']:.2%}); {metrics['train_steps']} steps in {metrics['train_seconds']:.0f} s")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command line
def run_finetune_command(args: argparse.Namespace) -> int:
    config = load_finetune_config(args.config, args.overrides)
    metrics = finetune(config)
    print()
    print(format_report(metrics))
    print(f"\nWrote adapter/, merged/, metrics.json, samples.png to {Path(config['output_dir']).resolve()}")
    return 0


__all__ = ["CAPTION_STYLES", "CaptionStyle", "build_trainer", "evaluate_style", "finetune", "format_report",
           "load_finetune_config", "styled_digits"]
