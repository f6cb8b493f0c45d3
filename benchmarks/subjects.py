"""What the benchmarks run on: the trained demo model when it exists, else a random model of the same geometry.

A trained model (e.g. the demo's, `--model mmar-demo/model`) is the only kind whose images mean something, so
quality (digit-FD, generated-digit accuracy) is measured only when one is named. Without it (never looked up in the
working directory: results must not depend on what lies there), a random model built from the demo's own run config
(training/configs/digits.yaml, same tokenizer, same sizes) gives the same speed figures; quality is then
"not applicable". Random diffusion heads start at exactly zero (zero-initialised output layers), which makes no
difference to speed; `randomize_head` gives them non-zero weights where a test needs non-trivial outputs.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

import modeling_mmar  # noqa: F401  (registers the Auto classes)
import processors  # noqa: F401
from modeling_mmar import MMARConfig, MMARForConditionalGeneration

@dataclass
class Subject:
    model: MMARForConditionalGeneration
    processor: object
    trained: bool  # True: the demo model (quality is meaningful)
    source: str  # where it came from, for the report


@functools.lru_cache(maxsize=1)
def digits_tokenizer():
    """The demo's tokenizer (trained on the digits captions, deterministic)."""
    from training.data import digits_corpus
    from training.train import build_tokenizer_for

    return build_tokenizer_for({}, digits_corpus())


def demo_geometry_config(**overrides) -> tuple[MMARConfig, object]:
    """(MMARConfig, tokenizer) of the demo's run config with the digits tokenizer; `overrides` replace MMARConfig
    fields (`text_config` entries are merged into the demo's text config)."""
    from training.run_config import load_config
    from training.train import build_model_config

    tokenizer = digits_tokenizer()
    section = copy.deepcopy(load_config()["model"])
    text_overrides = overrides.pop("text_config", None) or {}
    section["text_config"] = {**section.get("text_config", {}), **text_overrides}
    section.update(overrides)
    return build_model_config(section, tokenizer), tokenizer


def random_subject(seed: int = 0, **overrides) -> Subject:
    """A random MMAR with the demo's geometry (or `overrides`), with the processor that matches it."""
    from processors import MMARProcessor

    config, tokenizer = demo_geometry_config(**overrides)
    torch.manual_seed(seed)
    model = MMARForConditionalGeneration(config).eval()
    processor = MMARProcessor.from_model_config(config, tokenizer=tokenizer)
    return Subject(model, processor, trained=False, source=f"random, demo geometry, seed {seed}")


def load_subject(model_dir: str | Path | None = None) -> Subject:
    """The trained model saved in `model_dir`, or `random_subject()` when none is named."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if model_dir is None:
        return random_subject()
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {str(path)!r} holds no config.json: not a saved MMAR model")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    return Subject(model, processor, trained=True, source=str(path))


def randomize_head(model, seed: int = 0, std: float = 0.05) -> None:
    """Give the (zero-initialised) diffusion head random weights so that its outputs depend on its inputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.diffusion_head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def digit_prompts(processor, digits) -> dict:
    """`<bos>a handwritten <digit><boi>` prompts (left-padded) for the given digits."""
    from training.data import digit_caption

    inputs = processor(text=[digit_caption(int(d)) for d in digits], generation_mode="image", return_tensors="pt")
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


__all__ = ["Subject", "demo_geometry_config", "digit_prompts", "load_subject", "random_subject", "randomize_head"]
