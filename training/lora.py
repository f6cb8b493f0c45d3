"""LoRA for MMAR with peft: the adapter recipe, vocabulary growth, and adapters that know their base model.

- `lora_config(...)`: LoRA on the backbone's attention and MLP projections (one regex that fits Qwen2, Llama and
  other HF decoder layers), MMAR's new parts (diffusion head, image embedder with its mask embedding) trained in
  full via `modules_to_save`, and the embedding / LM-head rows of words added to the vocabulary via peft's
  `trainable_token_indices`.
- `add_words(processor, model, texts)`: a word-level tokenizer maps unseen words to `<unk>`; they are added as
  tokens and the embeddings resized (new rows start at the mean of the old ones).
- `save_adapter` / `load_adapter_model` / `merge_adapter`: the adapter folder also holds the grown processor and
  `mmar_adapter.json` (a fingerprint of the base weights and the vocabulary size), so loading it on another base
  fails with a clear error instead of silently producing a broken model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

# Full module names of the backbone's projections inside MMAR (peft fullmatches a string target against them).
BACKBONE_PROJECTIONS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def backbone_projections(image_expert: str | None = None, freeze_text_model: bool = False) -> str:
    """The LoRA target regex for a backbone with image experts (`MMARConfig.image_expert`): the routed modules hold
    the LLM's projections under `.text` and their image copies under `.image` (`mlp.text.gate_proj`,
    `self_attn.q_proj.image`). With `freeze_text_model` only the image copies get adapters, so that text keeps the
    original LLM's outputs."""
    if image_expert is None:
        return BACKBONE_PROJECTIONS
    branches = "image" if freeze_text_model else "text|image"
    mlp = rf"mlp\.({branches})\.(gate|up|down)_proj"
    attention = (rf"self_attn\.(q|k|v|o)_proj\.({branches})" if image_expert == "attention"
                 else r"self_attn\.(q|k|v|o)_proj")
    if freeze_text_model and image_expert != "attention":
        return rf"model\.language_model\.layers\.\d+\.{mlp}"  # the text attention is frozen
    return rf"model\.language_model\.layers\.\d+\.({attention}|{mlp})"


# MMAR's own parts, trained in full: the diffusion head and the image embedder (its mask embedding included).
MODULES_TO_SAVE = ("diffusion_head", "model.image_embedder")
ADAPTER_INFO = "mmar_adapter.json"
FINGERPRINT_ELEMENTS = 4096


# ------------------------------------------------------------------------------------------------ recipe
def lora_config(r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.0,
                target_modules: str | list[str] | None = None,
                modules_to_save: list[str] | tuple[str, ...] = MODULES_TO_SAVE,
                new_token_ids: list[int] | None = None, model_config=None, **kwargs):
    """peft `LoraConfig` for MMAR (`task_type` CAUSAL_LM); `new_token_ids` rows of embed_tokens / lm_head train too.
    `target_modules` defaults to `backbone_projections(...)` of `model_config` (an MMARConfig: its image experts)."""
    from peft import LoraConfig

    if target_modules is None:
        target_modules = backbone_projections(getattr(model_config, "image_expert", None),
                                              bool(getattr(model_config, "freeze_text_model", False)))

    trainable_tokens = None
    if new_token_ids:
        trainable_tokens = {"embed_tokens": list(new_token_ids), "lm_head": list(new_token_ids)}
    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules,
                      modules_to_save=list(modules_to_save), trainable_token_indices=trainable_tokens,
                      task_type="CAUSAL_LM", **kwargs)


def check_targets(model, config) -> list[str]:
    """Names of the modules the LoRA targets match; ValueError when it matches none (e.g. a wrong regex)."""
    import re

    pattern = config.target_modules
    if isinstance(pattern, str):
        names = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    else:
        names = [name for name, _ in model.named_modules() if any(name.endswith("." + t) for t in pattern)]
    if not names:
        raise ValueError(f"The LoRA target_modules {pattern!r} match no module of {type(model).__name__}")
    return names


def trainable_share(model) -> tuple[int, int, float]:
    """(trainable parameters, all parameters, trainable fraction) of a peft model."""
    trainable, total = model.get_nb_trainable_parameters()
    return trainable, total, trainable / total


# ------------------------------------------------------------------------------------------------ vocabulary
def unknown_words(tokenizer, texts) -> list[str]:
    """Words of `texts` (as the tokenizer normalizes and splits them) that it can only encode with `<unk>`."""
    if tokenizer.unk_token_id is None:  # byte-level BPE and the like: every word is representable
        return []
    backend = tokenizer.backend_tokenizer
    words = []
    for text in texts:
        normalized = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
        pieces = backend.pre_tokenizer.pre_tokenize_str(normalized) if backend.pre_tokenizer else [(normalized, None)]
        for word, _ in pieces:
            if word not in words and tokenizer.unk_token_id in tokenizer(word, add_special_tokens=False)["input_ids"]:
                words.append(word)
    return words


def add_words(processor, model, texts) -> list[int]:
    """Give every unknown word of `texts` its own token; resize the model's embeddings; return the new ids."""
    from tokenizers import AddedToken

    tokenizer = processor.tokenizer
    words = unknown_words(tokenizer, texts)
    if not words:
        return []
    old_size = len(tokenizer)
    # single_word: "eins" must not match inside a longer word; normalized: matched after lower-casing, like words.
    tokenizer.add_tokens([AddedToken(word, single_word=True, normalized=True) for word in words])
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    still_unknown = unknown_words(tokenizer, texts)
    if still_unknown:
        raise RuntimeError(f"Adding {still_unknown} to the tokenizer did not make them encodable")
    return list(range(old_size, len(tokenizer)))


# ------------------------------------------------------------------------------------------------ adapters
def base_fingerprint(model_dir) -> str:
    """A digest of the base weights in `model_dir`'s safetensors files (names, shapes and leading values): the
    same whatever dtype or quantization the base is later loaded with."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{str(model_dir)!r} has no safetensors weights to fingerprint")
    digest = hashlib.sha256()
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in sorted(handle.keys()):
                piece = handle.get_slice(key)
                shape = piece.get_shape()
                digest.update(f"{key}:{shape}".encode())
                if shape:
                    rows = max(1, FINGERPRINT_ELEMENTS // max(1, int(torch.tensor(shape[1:]).prod())))
                    values = piece[:rows].flatten()[:FINGERPRINT_ELEMENTS]
                else:
                    values = handle.get_tensor(key).reshape(1)
                digest.update(values.to(torch.float32).numpy().tobytes())
    return digest.hexdigest()


def _architecture(config) -> dict:
    text = config.text_config
    return {"model_type": text.model_type, "hidden_size": text.hidden_size, "num_hidden_layers":
            text.num_hidden_layers, "tokens_per_image": config.tokens_per_image, "token_dim": config.token_dim,
            "head_width": config.head_width, "head_depth": config.head_depth}


def save_adapter(peft_model, processor, base_dir, adapter_dir, base_vocab_size: int) -> Path:
    """The peft adapter, the (grown) processor and `mmar_adapter.json` describing the base it belongs to."""
    adapter_dir = Path(adapter_dir)
    peft_model.save_pretrained(str(adapter_dir))
    processor.save_pretrained(str(adapter_dir))
    config = peft_model.get_base_model().config
    info = {
        "base_model": str(Path(base_dir).resolve()),
        "base_fingerprint": base_fingerprint(base_dir),
        "base_architecture": _architecture(config),
        "base_vocab_size": int(base_vocab_size),
        "vocab_size": int(config.text_config.vocab_size),
    }
    (adapter_dir / ADAPTER_INFO).write_text(json.dumps(info, indent=2))
    _add_loading_section(adapter_dir / "README.md", info)
    return adapter_dir


ADAPTER_LOADING = """
## Loading this adapter

The adapter grew the base model's vocabulary from {base_vocab_size} to {vocab_size} tokens; its processor holds
the grown tokenizer and the adapter the trained rows of the new tokens. Resize the base before loading it:

```python
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

processor = AutoProcessor.from_pretrained(adapter_dir)
base = AutoModelForImageTextToText.from_pretrained(base_dir)
base.resize_token_embeddings(len(processor.tokenizer))
model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
```

`training.lora.load_adapter_model(base_dir, adapter_dir)` does the same and first checks that `base_dir` holds the
exact base the adapter was trained on.
"""


def _add_loading_section(card_path: Path, info: dict) -> None:
    """peft writes a generic card; say how this adapter loads (its vocabulary differs from the base's)."""
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else "# MMAR LoRA adapter\n"
    card_path.write_text(card.rstrip() + "\n" + ADAPTER_LOADING.format(**info), encoding="utf-8")


def read_adapter_info(adapter_dir) -> dict:
    path = Path(adapter_dir) / ADAPTER_INFO
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ValueError(f"{str(adapter_dir)!r} holds no peft adapter (adapter_config.json is missing)")
    if not path.is_file():
        raise ValueError(f"{str(adapter_dir)!r} has no {ADAPTER_INFO}: save it with training.lora.save_adapter")
    return json.loads(path.read_text())


def check_base(adapter_dir, base_dir, base_model=None) -> dict:
    """Raise ValueError unless `base_dir` holds the exact base model the adapter was trained on."""
    info = read_adapter_info(adapter_dir)
    if base_model is not None:
        architecture = _architecture(base_model.config)
        differences = {k: (v, architecture.get(k)) for k, v in info["base_architecture"].items()
                       if architecture.get(k) != v}
        if differences:
            raise ValueError(
                f"The adapter in {str(adapter_dir)!r} was trained for another base model (trained on "
                f"{info['base_model']!r}); the architecture differs: "
                + ", ".join(f"{k} {expected} (adapter) vs {actual} (base)" for k, (expected, actual) in differences.items())
            )
    if base_fingerprint(base_dir) != info["base_fingerprint"]:
        raise ValueError(
            f"The adapter in {str(adapter_dir)!r} was trained for another base model: it was trained on "
            f"{info['base_model']!r}, whose weights differ from those in {str(base_dir)!r}"
        )
    return info


def load_adapter_model(base_dir, adapter_dir, is_trainable: bool = False, **from_pretrained_kwargs):
    """(peft model, processor): the base from `base_dir` (checked), grown to the adapter's vocabulary, + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_mmar  # noqa: F401  (registers the MMAR Auto classes)
    import processors  # noqa: F401

    read_adapter_info(adapter_dir)  # a clear error before loading anything big
    base = AutoModelForImageTextToText.from_pretrained(str(base_dir), **from_pretrained_kwargs)
    info = check_base(adapter_dir, base_dir, base)
    if base.config.text_config.vocab_size != info["base_vocab_size"]:
        raise ValueError(f"The base model's vocabulary ({base.config.text_config.vocab_size}) differs from the one the "
                         f"adapter was trained on ({info['base_vocab_size']})")
    if info["vocab_size"] != info["base_vocab_size"]:
        # The added words' rows are replaced by the adapter's trained rows: their initial values do not matter.
        base.resize_token_embeddings(info["vocab_size"], mean_resizing=False)
    processor = AutoProcessor.from_pretrained(str(adapter_dir))
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=is_trainable)
    return model, processor


def merge_adapter(base_dir, adapter_dir, out_dir) -> Path:
    """Merge the adapter into its base: a plain MMAR folder (model, processor, scheduler) that AutoModel loads."""
    model, processor = load_adapter_model(base_dir, adapter_dir)
    merged = model.merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    scheduler_dir = Path(base_dir) / "scheduler"
    if scheduler_dir.is_dir():
        shutil.copytree(scheduler_dir, out_dir / "scheduler", dirs_exist_ok=True)
    return out_dir


__all__ = [
    "BACKBONE_PROJECTIONS", "MODULES_TO_SAVE", "add_words", "backbone_projections", "base_fingerprint", "check_base",
    "check_targets", "load_adapter_model", "lora_config", "merge_adapter", "read_adapter_info", "save_adapter",
    "trainable_share", "unknown_words",
]
