"""Diffusion noise per row: the timesteps and noise of a training row's image tokens come from that row's own seed.

Drawn from one random stream for the whole batch, what a row gets would depend on which rows share its batch and on
which process it lands. Split the same global batch over two processes and every image token would be noised
differently: the loss curve of a 2-process run would be a different random curve, not the 1-process one up to float
rounding. The collator already decides a row's task and image mask from `(seed, epoch, sample_index)`;
`RowSeedCollator` adds one more seed per row from the same triple, and `MMARTrainer` hands the model one generator
per row (`row_generators`; the model's `forward(generator=[...])` draws each image's noise from its own generator).
A row is then noised identically whatever the batch, the process, the world size or a resumption, and evaluation
losses are the same draw at every evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

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


def row_generators(seeds: torch.Tensor) -> list[torch.Generator]:
    """One CPU generator per row, seeded with the row's `diffusion_seeds` entry (the model's `forward(generator=...)`
    takes one per image)."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds.tolist()]


__all__ = ["ROW_SEEDS", "RowSeedCollator", "row_generators", "row_seed"]
