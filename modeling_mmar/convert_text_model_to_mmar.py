"""Convert any pretrained causal LM into MMAR: `MMARForConditionalGeneration.from_text_model(...)`.

The model's side of the conversion, as transformers' `convert_*_to_hf` scripts are: the tokenizer's vocabulary
grows by the image span tokens (`<boi>`, `<img>`, `<eoi>`, the same tokens `MMARProcessor.from_text_model` adds,
whose ids it checks against the config), the embeddings follow, and the config records the ids.

The LLM's weights are kept bit-exact: its base model and LM head go into MMAR's state dict under
`model.language_model.` and `lm_head.` and `from_pretrained(None, state_dict=...)` loads them (on the meta device
first, so the LLM is never randomly initialised and its tensors are shared, not copied). Only the new parts (image
embedder with its mask embedding, diffusion head, and the VAE unless a pretrained one is given) are initialised.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging

from .configuration_mmar import MMARConfig

try:  # the VAE is optional (pixel-patch tokens need none)
    from diffusers import AutoencoderKL
except ImportError:  # pragma: no cover
    AutoencoderKL = None

# Config fields from_text_model derives itself; passing them as **config_kwargs would be silently overwritten.
DERIVED_CONFIG_FIELDS = ("text_config", "vae_config", "boi_token_id", "image_token_id", "eoi_token_id")
# The image span tokens by config field, in the order they are added to a tokenizer that lacks them.
IMAGE_SPAN_TOKENS = {"boi_token_id": "<boi>", "image_token_id": "<img>", "eoi_token_id": "<eoi>"}



def _load_text_model(text_model_or_path, dtype) -> tuple[PreTrainedModel, str | None]:
    if isinstance(text_model_or_path, PreTrainedModel):
        text_model = text_model_or_path
        source = getattr(text_model, "name_or_path", None) or None
    elif isinstance(text_model_or_path, (str, os.PathLike)):
        source = str(text_model_or_path)
        text_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype if dtype is not None else "auto")
    else:
        raise ValueError(
            "text_model_or_path must be a causal-LM PreTrainedModel or a path / Hub id, got "
            f"{type(text_model_or_path).__name__}"
        )
    if text_model.get_output_embeddings() is None or text_model.base_model is text_model:
        raise ValueError(
            f"{type(text_model).__name__} is not a causal LM with an LM head (load it with AutoModelForCausalLM)"
        )
    return text_model, source


def _load_tokenizer(tokenizer, source: str | None):
    if tokenizer is None:
        if source is None:
            raise ValueError("Pass tokenizer=... (the text model was given as an object, its tokenizer is unknown)")
        tokenizer = source
    if isinstance(tokenizer, (str, os.PathLike)):
        return AutoTokenizer.from_pretrained(str(tokenizer))
    if not callable(getattr(tokenizer, "convert_tokens_to_ids", None)):
        raise ValueError(f"tokenizer must be a transformers tokenizer or a path, got {type(tokenizer).__name__}")
    # The image tokens are added in place: work on a copy so that the caller's tokenizer is left as it was.
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder)


def load_vae(vae):
    """None, an `AutoencoderKL`, or the path of a diffusers VAE folder (or of a pipeline folder with `vae/`)."""
    if vae is None:
        return None
    if AutoencoderKL is None:
        raise ImportError("A VAE needs diffusers: pip install diffusers")
    if isinstance(vae, (str, os.PathLike)):
        path = str(vae)
        # A diffusers pipeline folder keeps its VAE in vae/.
        subfolder = "vae" if os.path.isfile(os.path.join(path, "vae", "config.json")) else None
        config_path = os.path.join(path, subfolder or "", "config.json")
        if os.path.isdir(path):  # (a Hub id is left to diffusers)
            if not os.path.isfile(config_path):
                raise ValueError(f"{path!r} is not a diffusers VAE folder: it has no config.json (nor vae/config.json)")
            with open(config_path, encoding="utf-8") as f:
                class_name = json.load(f).get("_class_name")
            if class_name != "AutoencoderKL":
                raise ValueError(f"{path!r} is not a diffusers AutoencoderKL folder: its config.json is for "
                                 f"{class_name or 'no diffusers class'}")
        return AutoencoderKL.from_pretrained(path, subfolder=subfolder)
    if not isinstance(vae, AutoencoderKL):
        raise ValueError(f"vae must be None, a diffusers AutoencoderKL or its path, got {type(vae).__name__}")
    return vae


def vae_init_kwargs(vae) -> dict:
    """The AutoencoderKL init kwargs of `vae` (its config minus diffusers' bookkeeping keys), JSON-friendly."""
    init_args = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in vae.config.items() if key in init_args}


def _prepare_tokenizer(tokenizer) -> dict[str, int]:
    if tokenizer.pad_token is None:  # e.g. Llama: batches need padding; eos is the usual stand-in
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
        tokenizer.pad_token = tokenizer.eos_token
    missing = [token for token in IMAGE_SPAN_TOKENS.values() if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return {field: tokenizer.convert_tokens_to_ids(token) for field, token in IMAGE_SPAN_TOKENS.items()}


def _build_config(text_model, tokenizer, token_ids, vae, image_size, patch_size, num_channels, config_kwargs):
    clashes = sorted(set(config_kwargs) & set(DERIVED_CONFIG_FIELDS))
    if clashes:
        raise ValueError(f"from_text_model derives {clashes} from the text model, tokenizer and VAE; do not pass them")
    text_config = copy.deepcopy(text_model.config)
    if getattr(text_config, "pad_token_id", None) is None:
        text_config.pad_token_id = tokenizer.pad_token_id
    geometry = {}
    if vae is not None:
        geometry.update(
            num_channels=vae.config.in_channels,
            image_size=vae.config.sample_size if isinstance(vae.config.sample_size, int) else None,
            vae_scaling_factor=float(vae.config.scaling_factor),
            vae_shift_factor=float(getattr(vae.config, "shift_factor", None) or 0.0),
        )
    explicit = {"image_size": image_size, "patch_size": patch_size, "num_channels": num_channels}
    geometry.update({name: value for name, value in explicit.items() if value is not None})
    geometry = {name: value for name, value in geometry.items() if value is not None}
    # A backbone that ties its LM head to its input embeddings (e.g. Qwen2-0.5B) stays tied inside MMAR.
    config_kwargs.setdefault("tie_word_embeddings", bool(getattr(text_config, "tie_word_embeddings", False)))
    return MMARConfig(
        text_config=text_config,
        vae_config=vae_init_kwargs(vae) if vae is not None else None,
        **token_ids,
        **{**geometry, **config_kwargs},
    )


def _state_dict(text_model, vae) -> dict[str, torch.Tensor]:
    state = {f"model.language_model.{key}": value for key, value in text_model.base_model.state_dict().items()}
    state["lm_head.weight"] = text_model.get_output_embeddings().weight
    bias = getattr(text_model.get_output_embeddings(), "bias", None)
    if bias is not None:
        raise ValueError(f"{type(text_model).__name__}'s LM head has a bias; MMAR's lm_head has none")
    if vae is not None:
        state.update({f"model.vae.{key}": value for key, value in vae.state_dict().items()})
    return state


def from_text_model(
    model_class,
    text_model_or_path,
    vae=None,
    tokenizer=None,
    image_size: int | None = None,
    patch_size: int | None = None,
    num_channels: int | None = None,
    dtype: torch.dtype | str | None = None,
    **config_kwargs,
):
    """See `MMARForConditionalGeneration.from_text_model`."""
    text_model, source = _load_text_model(text_model_or_path, dtype)
    tokenizer = _load_tokenizer(tokenizer, source)
    vae = load_vae(vae)

    token_ids = _prepare_tokenizer(tokenizer)
    if len(tokenizer) > text_model.config.vocab_size:
        # New rows start at the mean of the old embeddings (transformers' mean_resizing); old rows are untouched.
        text_model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    config = _build_config(text_model, tokenizer, token_ids, vae, image_size, patch_size, num_channels, config_kwargs)

    state_dict = _state_dict(text_model, vae)
    if dtype is None:
        dtype = text_model.dtype
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the load report lists the new parts as MISSING: expected, checked below
    try:
        model, info = model_class.from_pretrained(
            None, config=config, state_dict=state_dict, dtype=dtype, output_loading_info=True
        )
    finally:
        logging.set_verbosity(verbosity)
    from_backbone = [key for key in info["missing_keys"] if key.startswith(("model.language_model.", "lm_head."))]
    if from_backbone or info["unexpected_keys"] or info["mismatched_keys"]:
        raise RuntimeError(
            f"Could not move {type(text_model).__name__}'s weights into MMAR: missing {from_backbone}, unexpected "
            f"{info['unexpected_keys']}, mismatched {info['mismatched_keys']}"
        )
    # Generation defaults of the backbone (eos ids of chat models, pad) carry over to text generation.
    text_generation = getattr(text_model, "generation_config", None)
    if text_generation is not None:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(text_generation, name, None) is not None:
                setattr(model.generation_config, name, getattr(text_generation, name))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


__all__ = ["from_text_model"]
