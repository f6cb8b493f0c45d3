"""Image experts: separate weights for the image positions of the LLM (MMAR's "image expert" option).

`MMARConfig(image_expert="ffn")` gives every decoder layer's `.mlp` an image copy; `"attention"` also gives the
layer's q/k/v/o projections one. Each copy starts from the LLM's own weights. A routed module
(`ImageExpertRouter`) runs the original (text) module on every position, so text positions get exactly the
original output, then overwrites the image positions with its image copy's output. The copy runs only on image
positions, so it gets gradients from them alone; the original gets none from them. With
`freeze_text_model=True`, no original LLM weight trains, so text-only inputs give the original model's hidden
states bit for bit, before and after training.

How the image positions reach the layers: `MMARModel` passes `image_positions` (bool [batch, seq]) as a keyword
argument of the language model. transformers' decoder models hand their `**kwargs` to every decoder layer, and
the layer hands them to its attention module. A forward pre-hook on the attention module removes the argument (no
attention kernel sees it) and gives it to the layer's routers, which run inside that module (projections) or
after it (MLP). The alternative, module state set around the language-model call, breaks under gradient
checkpointing. `GradientCheckpointingLayer` runs the layer's `forward` again during backward, after the call has
returned. It stores the layer's keyword arguments and replays them, so at that point the attention pre-hook
delivers the positions of the call being recomputed.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

IMAGE_EXPERT_KINDS = ("ffn", "attention")
ATTENTION_NAMES = ("self_attn", "attn", "self_attention", "attention")
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
IMAGE_POSITIONS_KWARG = "image_positions"


class ImageExpertRouter(nn.Module):
    """`text` (the LLM's module) on every position; at image positions, `image` (its copy) replaces the output."""

    def __init__(self, text: nn.Module):
        super().__init__()
        self.text = text
        self.image = copy.deepcopy(text)
        self.image_positions = None  # bool [batch, seq] of the current call, set by the layer's attention pre-hook

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = self.text(hidden_states)
        positions = self.image_positions
        if positions is None:  # text only: exactly the original module's output
            return output
        if positions.shape != hidden_states.shape[:-1]:
            raise ValueError(
                f"image_positions has shape {tuple(positions.shape)} but the layer sees hidden states of shape "
                f"{tuple(hidden_states.shape)}: pass one bool per position of the sequence"
            )
        return output.index_put((positions,), self.image(hidden_states[positions]).to(output.dtype))


class ImagePositionsDelivery:
    """Forward pre-hook of a decoder layer's attention module: takes `image_positions` out of its keyword arguments
    and gives it to the layer's routers (None when the call has no image, e.g. text decoding steps)."""

    def __init__(self, routers: list[ImageExpertRouter]):
        self.routers = routers

    def __call__(self, module, args, kwargs):
        positions = kwargs.pop(IMAGE_POSITIONS_KWARG, None)
        for router in self.routers:
            router.image_positions = positions
        return args, kwargs


def decoder_layers(language_model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, the ModuleList of decoder layers) of an HF decoder base model (`layers`, GPT-2's `h`, OPT's
    `decoder.layers`, ...): the first ModuleList of `num_hidden_layers` modules."""
    num_layers = getattr(language_model.config, "num_hidden_layers", None)
    for name, child in language_model.named_modules():
        if isinstance(child, nn.ModuleList) and len(child) and (num_layers is None or len(child) == num_layers):
            return name, child
    raise ValueError(
        f"Image experts need the decoder layers of {type(language_model).__name__} (a ModuleList of "
        f"num_hidden_layers={num_layers} layers); found none"
    )


def _attention_module(layer: nn.Module) -> tuple[str, nn.Module]:
    for name in ATTENTION_NAMES:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return name, module
    raise ValueError(
        f"Image experts need the attention module of each decoder layer; {type(layer).__name__} has none of "
        f"{list(ATTENTION_NAMES)}"
    )


def _passes_kwargs(module: nn.Module) -> bool:
    parameters = inspect.signature(type(module).forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def expert_targets(language_model: nn.Module, kind: str) -> list[tuple[nn.Module, list[tuple[nn.Module, str, str]]]]:
    """Per decoder layer: (its attention module, [(owner, attribute, qualified name)] of the modules that get an
    image copy). Raises ValueError naming the layer or attention class when the backbone does not fit."""
    if kind not in IMAGE_EXPERT_KINDS:
        raise ValueError(f"image_expert must be one of {(None, *IMAGE_EXPERT_KINDS)}, got {kind!r}")
    layers_name, layers = decoder_layers(language_model)
    targets = []
    for index, layer in enumerate(layers):
        prefix = f"{layers_name}.{index}"
        if not isinstance(getattr(layer, "mlp", None), nn.Module):
            raise ValueError(
                f"image_expert={kind!r} needs decoder layers with an `.mlp` module; {type(layer).__name__} has none"
            )
        attention_name, attention = _attention_module(layer)
        if not (_passes_kwargs(layer) and _passes_kwargs(attention)):
            raise ValueError(
                f"image_expert={kind!r} needs decoder layers that pass keyword arguments on to their attention "
                f"module ({type(layer).__name__} / {type(attention).__name__} do not take **kwargs)"
            )
        wrapped = [(layer, "mlp", f"{prefix}.mlp")]
        if kind == "attention":
            missing = [name for name in ATTENTION_PROJECTIONS
                       if not isinstance(getattr(attention, name, None), nn.Module)]
            if missing:
                raise ValueError(
                    f"image_expert='attention' needs {list(ATTENTION_PROJECTIONS)} projections; "
                    f"{type(attention).__name__} has no {missing}"
                )
            wrapped += [(attention, name, f"{prefix}.{attention_name}.{name}") for name in ATTENTION_PROJECTIONS]
        targets.append((attention, wrapped))
    return targets


def add_image_experts(language_model: nn.Module, kind: str) -> None:
    """Wrap the modules of `kind` in every decoder layer of `language_model` (in place) in `ImageExpertRouter`s."""
    for attention, wrapped in expert_targets(language_model, kind):
        routers = []
        for owner, attribute, _ in wrapped:
            router = ImageExpertRouter(getattr(owner, attribute))
            setattr(owner, attribute, router)
            routers.append(router)
        attention.register_forward_pre_hook(ImagePositionsDelivery(routers), with_kwargs=True)


def state_dict_with_image_experts(state_dict: dict[str, torch.Tensor], language_model: nn.Module,
                                  kind: str) -> dict[str, torch.Tensor]:
    """The state dict of `language_model` (without experts) laid out for the same model with experts: each wrapped
    module's weights under `<name>.text.` and a copy (its own storage) under `<name>.image.`."""
    names = [name for _, wrapped in expert_targets(language_model, kind) for _, _, name in wrapped]
    converted = {}
    for key, value in state_dict.items():
        name = next((n for n in names if key.startswith(n + ".")), None)
        if name is None:
            converted[key] = value
            continue
        rest = key[len(name) + 1:]
        converted[f"{name}.text.{rest}"] = value
        converted[f"{name}.image.{rest}"] = value.detach().clone()
    return converted


def image_expert_routers(module: nn.Module) -> list[ImageExpertRouter]:
    return [m for m in module.modules() if isinstance(m, ImageExpertRouter)]


def freeze_text_weights(language_model: nn.Module, lm_head: nn.Module | None = None) -> None:
    """`freeze_text_model`: every original weight of the LLM (its layers, norms and embeddings) and `lm_head` stop
    training; the image copies stay trainable. Called at construction and after loading (loading makes fresh
    parameters), never by `train()`: a PEFT adapter inside the LLM keeps its own `requires_grad`."""
    language_model.requires_grad_(False)
    for router in image_expert_routers(language_model):
        router.image.requires_grad_(True)
    if lm_head is not None:
        lm_head.requires_grad_(False)


def freeze_text_model_of(model: nn.Module) -> None:
    """Apply `config.freeze_text_model` to an `MMARModel` or `MMARForConditionalGeneration` (see
    `freeze_text_weights`)."""
    if not getattr(model.config, "freeze_text_model", False):
        return
    backbone = model if hasattr(model, "language_model") else model.model
    freeze_text_weights(backbone.language_model, model.get_output_embeddings())


__all__ = [
    "IMAGE_EXPERT_KINDS",
    "IMAGE_POSITIONS_KWARG",
    "ImageExpertRouter",
    "add_image_experts",
    "expert_targets",
    "freeze_text_model_of",
    "freeze_text_weights",
    "image_expert_routers",
    "state_dict_with_image_experts",
]
