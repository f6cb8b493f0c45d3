"""`mmar serve MODEL_DIR [--port N] [--host 127.0.0.1]`: the Gradio app (`training/app`) over a saved MMAR folder.

The Generate tab's example prompts are the model's own training captions, found from the run that made the folder
(its metrics.json beside or above the model, as `mmar demo` and `mmar export` leave it): one training caption per
digit for the embedded digit datasets, the run's own example prompt for a fine-tuned style. A folder without a run
record gets no examples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import CommandError

DEFAULT_PORT = 7860
DEFAULT_HOST = "127.0.0.1"


def training_examples(model_dir, metrics_path=None) -> tuple[list[str], str | None]:
    """(example prompts from the model's training captions, the question it was trained to answer or None), from
    `metrics_path` or the run's metrics.json found beside / above `model_dir`."""
    from .data import DIGIT_DATASETS, DIGITS_QUESTION, load_digit_dataset
    from .export import find_run_file

    metrics_path = Path(metrics_path) if metrics_path else find_run_file(Path(model_dir), "metrics.json")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path else {}
    except (OSError, ValueError):
        metrics = {}
    if not isinstance(metrics, dict):
        return [], None
    examples = metrics.get("examples") if isinstance(metrics.get("examples"), dict) else {}
    if examples:  # a run that names its own captions (e.g. `mmar finetune`'s caption style)
        prompts = [examples["example_prompt"]] if isinstance(examples.get("example_prompt"), str) else []
        return prompts, examples.get("example_question")
    dataset = metrics.get("dataset") or ("digits" if "mmar_demo" in metrics else None)
    if dataset not in DIGIT_DATASETS:
        return [], None
    train = load_digit_dataset(dataset)["train"].select_columns(["label", "caption"])
    first_caption = {}
    for label, caption in zip(train["label"], train["caption"]):
        first_caption.setdefault(label, caption)
    return [first_caption[digit] for digit in sorted(first_caption)], DIGITS_QUESTION


def check_model_folder(model_dir: Path) -> None:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise CommandError(f"{str(model_dir)!r} holds no saved model (no config.json); pass a folder written by "
                           "`mmar demo`, `mmar train` or `mmar export`")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except ValueError as error:
        raise CommandError(f"{str(config_file)!r} is not valid JSON ({error})") from error
    if model_type != "mmar":
        raise CommandError(f"{str(model_dir)!r} does not hold an MMAR model (model_type {model_type!r})")


def run_serve_command(args: argparse.Namespace) -> int:
    model_dir = Path(args.model_dir)
    check_model_folder(model_dir)
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise CommandError("mmar serve needs gradio: pip install -e \".[serve]\"") from error
    prompts, question = training_examples(model_dir)
    from .app import launch

    print(f"Loading {model_dir} and serving it on http://{args.host}:{args.port} (Ctrl+C stops the server)")
    try:
        launch(model_dir, host=args.host, port=args.port, example_prompts=prompts, default_question=question,
               concurrency_limit=args.concurrency_limit, max_queue_size=args.max_queue_size, device=args.device)
    except OSError as error:  # gradio: "Cannot find empty port in range: 7860-7860"
        raise CommandError(f"cannot serve on {args.host}:{args.port}: {error}") from error
    return 0


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "check_model_folder", "run_serve_command", "training_examples"]
