"""Run configs: YAML files with sections, dotted `key=value` overrides, and checks that name unknown keys.

    seed: 0
    data:          {dataset: digits | <imagefolder dir or datasets name>, image_column, caption_column, ...}
    model:         MMARConfig fields (text_config: any causal-LM config dict), and vae: a diffusers VAE folder, or
                   base_model: a pretrained LLM (folder, .gguf file, or "smollm2") instead of text_config
    collator:      MMARDataCollator options (understanding_ratio, mask_ratio_min, caption_dropout, ...)
    mask_schedule: {stage2_start_step, stage2_mask_ratio_min}
    training:      transformers.TrainingArguments fields
    evaluation:    how `mmar demo` samples and scores (num_iter, guidance_scale, seeds_per_digit, ...)
    time_budget:   seconds of training after which it stops cleanly (null = no limit)
    pretrained_learning_rate: learning rate of the weights that come from the LLM (image experts, or the LLM itself
                   when it trains); MMAR's new parts (image embedder, diffusion head) keep training.learning_rate.
                   null = one learning rate for everything
    forward_per_task: true = understanding and generation rows of a batch run as two forwards, each padded to its
                   own longest row (the same loss, less padding: training/task_forwards.py); one process only
    standardize_head_conditions: true = before training, standardise each dimension of the diffusion head's input
                   with the statistics of the LLM's states at masked image positions of a batch of training rows (for
                   a pretrained backbone, whose last states have a few massive dimensions)
    vae_training:  `mmar demo` only: a `mmar train-vae` config (relative to this file) run first when model.vae is unset
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
from pathlib import Path

import yaml

from .cli import CONFIG_DIR  # the command line's defaults are the library's
from .cli import DEFAULT_RUN_CONFIG as DEFAULT_CONFIG

DATA_KEYS = {
    "dataset": "'digits' or 'mnist' (embedded) or an imagefolder directory / datasets name or path",
    "image_size": "digits / mnist only: size the digits are brought to (default: model.image_size)",
    "image_column": "image column of a generic dataset",
    "caption_column": "caption column of a generic dataset",
    "split": "training split of a generic dataset",
    "eval_split": "held-out split of a generic dataset (null: hold out eval_fraction of the training split)",
    "eval_fraction": "fraction held out when there is no eval_split",
    "streaming": "stream a generic dataset instead of downloading / preparing it",
    "verify_images": "open every image once before training (default true; not for streamed datasets)",
    "tokenizer": "null: train a tokenizer on the dataset's text; else a tokenizer path to load",
    "max_corpus_texts": "number of captions read to build the tokenizer of a streamed dataset",
    "split_seed": "seed of the train / held-out split and the caption templates (default: the run's seed)",
    "cache_image_tokens": "encode every image once with the frozen image tokenizer before training (default false)",
}
MASK_SCHEDULE_KEYS = {
    "stage2_start_step": "optimizer step from which mask ratios go down to stage2_mask_ratio_min (null: never)",
    "stage2_mask_ratio_min": "lower bound of the mask ratio in stage 2 (MMAR: 0.0)",
}
EVALUATION_KEYS = {
    "seeds_per_digit": "generated images per digit",
    "num_iter": "masked-AR steps",
    "guidance_scale": "classifier-free guidance scale",
    "guidance_schedule": "'linear' or 'constant'",
    "temperature": "diffusion sampling temperature",
    "num_inference_steps": "diffusion steps per token",
    "max_new_tokens": "caption length limit",
    "batch_size": "images generated / captioned per batch",
    "wall_time_target": "seconds the whole run should take (default: the embedded dataset's target)",
}
TOP_LEVEL_KEYS = ("seed", "data", "model", "collator", "mask_schedule", "training", "evaluation", "time_budget",
                  "pretrained_learning_rate", "forward_per_task", "standardize_head_conditions",
                  "vae_training")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: `1e-3` is a float and only true/false are booleans (YAML 1.1 reads `1e-3` as a string
    and `no` / `off` as False, which would turn `training.save_strategy=no` into a bool)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def parse_value(text: str):
    """`key=value` override values are YAML scalars: 3, 1e-3, true, null, [1, 2], {a: 1}, plain strings."""
    return yaml.load(text, Loader=_Loader) if text != "" else ""


def read_config_file(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A YAML config file's sections as a dict, with `a.b.c=value` overrides applied (keys not checked yet)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Config file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as f:
        config = yaml.load(f, Loader=_Loader) or {}
    if not isinstance(config, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of sections, got {type(config).__name__}")
    return apply_overrides(config, overrides or [])


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: list[str] | None = None) -> dict:
    """Read a run config, apply `a.b.c=value` overrides, check every key, and return it as a dict."""
    config = read_config_file(path, overrides)
    validate_config(config, source=str(path))
    return config


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like section.key=value (e.g. training.max_steps=100)")
        dotted, value = item.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys):
            raise ValueError(f"Override {item!r} has an empty key")
        node = config
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ValueError(f"Override {item!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
            node = child
        node[keys[-1]] = parse_value(value)
    return config


def _allowed_model_keys() -> set[str]:
    from modeling_mmar import MMARConfig

    keys = {f.name for f in dataclasses.fields(MMARConfig)}
    # `vae`: the path of a trained diffusers AutoencoderKL folder, loaded as the image tokenizer; `base_model` (with
    # `gguf_file`): a pretrained LLM that from_text_model wraps (a folder, a .gguf file or an embedded name).
    return keys | set(inspect.signature(MMARConfig.__init__).parameters) - {"self", "kwargs"} | {
        "vae", "base_model", "gguf_file"}


def _allowed_collator_keys() -> set[str]:
    from .collator import MMARDataCollator

    params = set(inspect.signature(MMARDataCollator.__init__).parameters)
    return params - {"self", "processor", "tokens_per_image", "seed"}


def _allowed_training_keys() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def _dataclass_defaults(cls) -> dict[str, tuple[object, str]]:
    return {f.name: (f.default, str(f.type)) for f in dataclasses.fields(cls) if f.init}


def _signature_defaults(function) -> dict[str, tuple[object, str]]:
    return {name: (p.default, str(p.annotation)) for name, p in inspect.signature(function).parameters.items()}


def _check_value_types(section: str, values, defaults: dict[str, tuple[object, str]]) -> None:
    """A value must have the kind of its key's default (bool / int / number), so that a typo such as
    `training.learning_rate=fast` is named here instead of failing inside torch.optim."""
    for key, value in (values or {}).items():
        default, annotation = defaults.get(key, (None, ""))
        if value is None or default is None:
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int) and "float" not in annotation:
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, (int, float)):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            raise ValueError(f"{section}.{key} must be {kind} (default {default!r}), got {type(value).__name__} "
                             f"{value!r}")


def _check_keys(section: str, values, allowed, hint: str = "") -> None:
    if values is None:
        return
    if not isinstance(values, dict):
        raise ValueError(f"Config section {section!r} must be a mapping, got {type(values).__name__}")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed)) if len(allowed) < 40 else hint
        raise ValueError(f"Unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)} in the config; "
                         f"known {section} keys: {known}")


def _positive_finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def validate_config(config: dict, source: str = "config") -> None:
    unknown = sorted(set(config) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ValueError(f"Unknown section(s) {unknown} in {source}; known sections: {', '.join(TOP_LEVEL_KEYS)}")
    _check_keys("data", config.get("data"), DATA_KEYS)
    _check_keys("model", config.get("model"), _allowed_model_keys(), "the fields of MMARConfig")
    _check_keys("collator", config.get("collator"), _allowed_collator_keys())
    _check_keys("mask_schedule", config.get("mask_schedule"), MASK_SCHEDULE_KEYS)
    _check_keys("training", config.get("training"), _allowed_training_keys(),
                "the fields of transformers.TrainingArguments")
    _check_keys("evaluation", config.get("evaluation"), EVALUATION_KEYS)
    from transformers import TrainingArguments

    from modeling_mmar import MMARConfig

    from .collator import MMARDataCollator

    _check_value_types("training", config.get("training"), _dataclass_defaults(TrainingArguments))
    _check_value_types("model", config.get("model"), _dataclass_defaults(MMARConfig))
    _check_value_types("collator", config.get("collator"), _signature_defaults(MMARDataCollator.__init__))
    vae_training = config.get("vae_training")
    if vae_training is not None and not (Path(source).parent / str(vae_training)).is_file():
        raise ValueError(f"vae_training names {vae_training!r}, which is not a file next to {source}")
    budget = config.get("time_budget")
    if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0):
        raise ValueError(f"time_budget must be a positive number of seconds or null, got {budget!r}")
    pretrained_lr = config.get("pretrained_learning_rate")
    if pretrained_lr is not None and not _positive_finite(pretrained_lr):
        raise ValueError(f"pretrained_learning_rate must be a positive finite number or null, got {pretrained_lr!r}")
    for flag in ("forward_per_task", "standardize_head_conditions"):
        if not isinstance(config.get(flag, False), bool):
            raise ValueError(f"{flag} must be true or false, got {config.get(flag)!r}")
    wall_time_target = (config.get("evaluation") or {}).get("wall_time_target")
    if wall_time_target is not None and not _positive_finite(wall_time_target):
        raise ValueError(f"evaluation.wall_time_target must be a positive number of seconds or null, "
                         f"got {wall_time_target!r}")
    if not isinstance(config.get("seed", 0), int):
        raise ValueError(f"seed must be an integer, got {config.get('seed')!r}")


__all__ = ["CONFIG_DIR", "DEFAULT_CONFIG", "apply_overrides", "load_config", "parse_value", "validate_config"]
