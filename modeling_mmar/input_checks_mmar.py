"""Checks at MMAR's API edges: bad input is refused with a ValueError (or FileNotFoundError / OSError for paths and
files) that names the argument, before it can fail deep inside torch or be silently misread."""

from __future__ import annotations

import math
import numbers
import os

import torch

IGNORE_INDEX = -100


def check_choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> None:
    """An integer (not a bool, not a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must be an integer in {bounds}, got {value}")


def check_float(name: str, value, low: float | None = None, high: float | None = None) -> None:
    """A finite real number (int or float, not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def check_token_ids(name: str, ids, vocab_size: int | None) -> None:
    """`ids`: an integer tensor [batch, sequence_length] of ids in [0, vocab_size)."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(
            f"{name} must have shape [batch, sequence_length], got {tuple(ids.shape)} (add a batch dimension with "
            f"{name}[None] for one sequence)"
        )
    if ids.numel() and vocab_size is not None:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} holds ids in [{low}, {high}] but the vocabulary has {vocab_size} tokens (ids 0..{vocab_size - 1});"
                " tokenize with the model's own processor, or resize the embeddings to the tokenizer"
            )


def embedding_rows(embeddings) -> int | None:
    """How many token ids an input embedding accepts, through wrappers such as peft's trainable-tokens layer."""
    for layer in (embeddings, getattr(embeddings, "base_layer", None)):
        rows = getattr(layer, "num_embeddings", None)
        if isinstance(rows, int):
            return rows
    return None


def check_attention_mask(attention_mask, batch_size: int, total_length: int) -> None:
    """A 2D padding mask must be [batch, past + new tokens]; 4D masks and per-layer dicts are taken as given."""
    if attention_mask is None or isinstance(attention_mask, dict):
        return
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.ndim == 4:
        return
    if attention_mask.ndim != 2 or tuple(attention_mask.shape) != (batch_size, total_length):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs need [batch, cached + new tokens]"
            f" = {[batch_size, total_length]}"
        )


def check_sequence(input_ids, inputs_embeds, attention_mask, position_ids, cache, vocab_size: int,
                   max_positions: int | None) -> None:
    """The text side of a forward pass: ids in the vocabulary, a matching padding mask, and no position past
    `max_positions` (cached + new tokens, or the largest explicit position id)."""
    if input_ids is not None:
        check_token_ids("input_ids", input_ids, vocab_size)
        batch_size, length = input_ids.shape
    else:
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.ndim != 3:
            raise ValueError("inputs_embeds must be a tensor [batch, sequence_length, hidden_size]")
        batch_size, length = inputs_embeds.shape[:2]
    past_length = cache.get_seq_length() if cache is not None else 0
    check_attention_mask(attention_mask, batch_size, past_length + length)
    if position_ids is not None and position_ids.numel():
        needed = int(position_ids.max()) + 1
    else:
        needed = past_length + length
    check_fits_positions(needed, max_positions, "this forward pass (cached + new tokens)")


def check_labels(labels, batch_size: int, sequence_length: int, vocab_size: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer token ids (or {IGNORE_INDEX}), got dtype {labels.dtype}")
    if tuple(labels.shape) != (batch_size, sequence_length):
        raise ValueError(
            f"labels has shape {tuple(labels.shape)} but input_ids has {[batch_size, sequence_length]}: one label per "
            f"input token ({IGNORE_INDEX} where no text loss)"
        )
    scored = labels[labels != IGNORE_INDEX]
    if scored.numel() and (int(scored.min()) < 0 or int(scored.max()) >= vocab_size):
        raise ValueError(
            f"labels holds ids in [{int(scored.min())}, {int(scored.max())}] outside the vocabulary of {vocab_size} "
            f"tokens; use {IGNORE_INDEX} for positions without a text loss"
        )


def check_fits_positions(total_length: int, max_positions: int | None, what: str) -> None:
    """Refuse sequences longer than the backbone's `max_position_embeddings` (MMAR never truncates silently)."""
    if max_positions is not None and total_length > max_positions:
        raise ValueError(
            f"{what} needs {total_length} positions but the backbone's max_position_embeddings is {max_positions}; "
            "shorten the prompt (the processor's truncation=True, max_length=...) or generate fewer tokens"
        )


def check_generator(generator, batch_size: int, what: str = "images are generated") -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but {batch_size} {what}; pass "
                "one generator per image (or a single one)"
            )
        if all(isinstance(g, torch.Generator) for g in generator):
            return
    raise ValueError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def check_callable(name: str, value) -> None:
    if value is not None and not callable(value):
        raise ValueError(f"{name} must be callable or None, got {type(value).__name__}")


def _looks_like_local_path(path: str) -> bool:
    # A Hub repo id is "name" or "owner/name"; anything else (absolute, ./, ~, or deeper) can only be a folder.
    return (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or os.sep != "/"
            and os.sep in path)


def resolve_pretrained_path(path, what: str = "model"):
    """`str` or `os.PathLike` -> str. A folder-like path that does not exist is refused by name, and every
    `*.safetensors` in an existing folder must have a complete header (truncated downloads/saves are named)."""
    if path is None:  # transformers' from_pretrained(None, config=..., state_dict=...)
        return None
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{what} folder {path!r} does not exist (or is not a folder)")
    if not isinstance(path, str):
        raise ValueError(f"pretrained_model_name_or_path must be a str or os.PathLike, got {type(path).__name__}")
    if os.path.isdir(path):
        path = pipeline_component_root(path, "config.json")
        check_safetensors_files(path)
    elif os.path.exists(path):
        raise ValueError(f"{what} path {path!r} is a file; pass the folder that holds it")
    elif _looks_like_local_path(path):
        raise FileNotFoundError(f"{what} folder {path!r} does not exist")
    return path


def pipeline_component_root(folder: str, config_name: str) -> str:
    """An exported pipeline's `model/` (or `processor/`) folder holds only the component's code for diffusers; its
    config and weights are the ones at the pipeline root (one copy, shared with transformers)."""
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isfile(os.path.join(folder, config_name)) and os.path.isfile(
            os.path.join(parent, "model_index.json")) and os.path.isfile(os.path.join(parent, config_name)):
        return parent
    return folder


def check_safetensors_files(folder: str) -> None:
    from safetensors import SafetensorError, safe_open

    # The folder itself and its component subfolders (a pipeline's model/, vae/, ...).
    subfolders = [folder] + [entry.path for entry in os.scandir(folder) if entry.is_dir()]
    for root in subfolders:
        for name in sorted(os.listdir(root)):
            file = os.path.join(root, name)
            if not name.endswith(".safetensors") or not os.path.isfile(file):
                continue
            try:
                with safe_open(file, framework="pt"):
                    pass
            except (SafetensorError, OSError) as error:
                raise OSError(
                    f"{file} is truncated or not a safetensors file ({os.path.getsize(file)} bytes; {error}); "
                    "save or download it again"
                ) from None


def shareable_permissions(path) -> None:
    """Give `path` (a file or a folder tree) the modes a plain `open`/`mkdir` would under the user's umask: weights
    written through temporary files (0600) and temporary folders (0700) are readable by others again."""
    umask = os.umask(0)
    os.umask(umask)
    paths = [path] if os.path.isfile(path) else [path] + [
        os.path.join(root, name) for root, dirs, files in os.walk(path) for name in dirs + files]
    for item in paths:
        if not os.path.islink(item):
            os.chmod(item, (0o777 if os.path.isdir(item) else 0o666) & ~umask)


__all__ = [
    "check_attention_mask", "check_sequence", "shareable_permissions", "check_bool", "check_callable", "check_choice", "check_fits_positions", "check_float",
    "check_generator", "check_int", "embedding_rows", "check_labels", "check_token_ids", "resolve_pretrained_path",
]
