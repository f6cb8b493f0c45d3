"""Diffusion noise per row: the timesteps and noise of a training row's image tokens come from that row's own seed.

The model's diffusion loss draws its timesteps and noise from one random stream for the whole batch, so what a row
gets depends on which rows share its batch and on which process it lands. Split the same global batch over two
processes and every image token is noised differently: the loss curve of a 2-process run is then a different
random curve, not the 1-process one up to float rounding. The collator already decides a row's task and image mask
from `(seed, epoch, sample_index)`; `RowSeedCollator` adds one more seed per row from the same triple, and
`RowSeededDiffusionLoss` noises each row's tokens from it. A row is then processed identically whatever the batch,
the process, the world size or a resumption, and evaluation losses are the same draw at every evaluation.

The model is deterministic given its inputs (the caller decides the masking); what it lacks is a way to be given the
noise. Until its loss takes explicit noise and timesteps (or one generator per image), `RowSeededDiffusionLoss`
stands in for `MMARForConditionalGeneration.diffusion_loss` during steps whose batch carries row seeds, computing
the same v / epsilon / x0 regression as `MMARDiffusionHead.loss`. It calls the head's `forward` only (never
`embed_condition` on its own), so a head that FSDP shards as its own unit is gathered by its forward hooks.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

ROW_SEEDS = "diffusion_seeds"  # batch key: int64 [batch], one seed per row (one image per row)
_NOISE_STREAM = 0x6E6F697365  # keeps these seeds apart from the collator's own default_rng([seed, epoch, index])


def row_seed(seed: int, epoch: int, sample_index: int) -> int:
    """The diffusion-noise seed of row `sample_index` in `epoch` (63 bits, from numpy's SeedSequence)."""
    low, high = np.random.SeedSequence([int(seed), int(epoch), int(sample_index), _NOISE_STREAM]).generate_state(2)
    return int((int(high) << 32 | int(low)) & (2**63 - 1))


class RowSeedCollator:
    """Wraps an `MMARDataCollator`: its batch plus `diffusion_seeds`, one per row from the collator's seed, its
    current epoch and the row's `sample_index`. Rows without `sample_index` get no seeds (the model then draws its
    own noise, as without this wrapper)."""

    def __init__(self, collator):
        self.collator = collator

    def __getattr__(self, name):  # set_epoch, set_step, processor, ... belong to the wrapped collator
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collator(examples)
        indices = [example.get("sample_index") for example in examples]
        if all(index is not None for index in indices):
            batch[ROW_SEEDS] = torch.tensor([row_seed(self.collator.seed, self.collator.epoch, index)
                                             for index in indices], dtype=torch.int64)
        return batch


def _row_draws(seeds: torch.Tensor, image_mask: torch.Tensor, batch_mul: int, token_dim: int,
               num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps [batch_mul * M] and noise [batch_mul * M, D] of the M masked tokens, image by image: image i draws
    [batch_mul, L] timesteps then [batch_mul, L, D] noise from its own generator (all L tokens, so that a token's
    draw does not depend on which other tokens are masked), and keeps its masked tokens. Copy k of every token comes
    first in block k, the order of `targets.repeat(batch_mul, 1)`."""
    length = image_mask.shape[1]
    timesteps, noise = [], []
    for seed, mask in zip(seeds.tolist(), image_mask.cpu()):
        generator = torch.Generator().manual_seed(int(seed))
        row_timesteps = torch.randint(0, num_train_timesteps, (batch_mul, length), generator=generator)
        row_noise = torch.randn((batch_mul, length, token_dim), generator=generator)
        timesteps.append(row_timesteps[:, mask])
        noise.append(row_noise[:, mask])
    return torch.cat(timesteps, dim=1).reshape(-1), torch.cat(noise, dim=1).reshape(-1, token_dim)


class RowSeededDiffusionLoss:
    """Stands in for `model.diffusion_loss` (an instance attribute, so the class's method is unchanged) while a batch
    with row seeds runs: see the module docstring. Outside `rows(...)` it calls the model's own method."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.model_loss = model.diffusion_loss  # the bound method of the class
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        model.diffusion_loss = self

    @contextlib.contextmanager
    def rows(self, seeds: torch.Tensor | None, image_mask: torch.Tensor | None):
        """Noise the diffusion loss of the forward run inside this block from `seeds` (one per image of
        `image_mask`); with `seeds=None` the model draws as usual."""
        if seeds is not None and image_mask is not None and len(seeds) != image_mask.shape[0]:
            raise ValueError(f"{ROW_SEEDS} holds {len(seeds)} seeds but the batch has {image_mask.shape[0]} images: "
                             "RowSeedCollator needs exactly one image per row")
        self._pending = None if seeds is None or image_mask is None else (seeds, image_mask)
        try:
            yield
        finally:
            self._pending = None

    def __call__(self, conditions: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None):
        if self._pending is None or generator is not None:
            return self.model_loss(conditions, targets, generator=generator)
        seeds, image_mask = self._pending
        model, head = self.model, self.model.diffusion_head
        scheduler, batch_mul = model.noise_scheduler, int(model.config.diffusion_batch_mul)
        timesteps, noise = _row_draws(seeds, image_mask.bool(), batch_mul, targets.shape[-1],
                                      scheduler.config.num_train_timesteps)
        if noise.shape[0] != batch_mul * targets.shape[0]:
            raise RuntimeError(f"the batch's image_mask masks {noise.shape[0] // batch_mul} tokens but the model "
                               f"computes the diffusion loss on {targets.shape[0]}")
        clean = targets.float().repeat(batch_mul, 1)
        timesteps, noise = timesteps.to(clean.device), noise.to(clean.device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        prediction_type = scheduler.config.prediction_type
        if prediction_type == "v_prediction":
            target = scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = noise if prediction_type == "epsilon" else clean
        # The head's dtype read from the parameter object: `head.input_proj.weight` outside the head's forward would
        # make DeepSpeed ZeRO-3 gather that weight on this process only.
        noisy = noisy.to(next(head.parameters()).dtype)
        if head.gradient_checkpointing and torch.is_grad_enabled():  # one copy's activations at a time, as the head's
            prediction = torch.cat([
                head._gradient_checkpointing_func(head.__call__, noisy_copy, timesteps_copy, conditions)
                for noisy_copy, timesteps_copy in zip(noisy.chunk(batch_mul), timesteps.chunk(batch_mul))
            ])
        else:
            prediction = head(noisy, timesteps, conditions.repeat(batch_mul, 1))
        return nn.functional.mse_loss(prediction.float(), target)


__all__ = ["ROW_SEEDS", "RowSeedCollator", "RowSeededDiffusionLoss", "row_seed"]
