"""Learning rates by origin: the weights an LLM brought (image experts copied from it, or the LLM itself when it
trains) at `pretrained_learning_rate`, MMAR's new parts at `training.learning_rate` -- as VLMs train a new projector
faster than the LLM it feeds. The LLM's copies at the new parts' rate forget what pretraining taught them (on
SmolLM2, the image positions stopped reading the caption: README, "A real pretrained LLM")."""

from __future__ import annotations

import torch

NEW_PART_PREFIXES = ("diffusion_head.", "image_embedder.")  # what MMAR adds to an LLM (the VAE is frozen)


def is_new_part(parameter_name: str) -> bool:
    """Whether a parameter belongs to a part MMAR adds to the LLM (not initialised from it); peft's prefixes allowed."""
    return any(prefix in parameter_name for prefix in NEW_PART_PREFIXES)


def train_pretrained_weights_at(optimizer: torch.optim.Optimizer, model: torch.nn.Module, learning_rate: float) -> None:
    """Split each of a fresh optimizer's groups (same options) into MMAR's new parts, which keep the group's rate,
    and the weights that came from the LLM, which train at `learning_rate`."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        new = [p for p in group["params"] if is_new_part(names[id(p)])]
        pretrained = [p for p in group["params"] if not is_new_part(names[id(p)])]
        groups += [{**group, "params": new}, {**group, "params": pretrained, "lr": learning_rate}]
    optimizer.param_groups = []
    for group in groups:
        if group["params"]:
            optimizer.add_param_group(group)
