"""Trainer callbacks: MMAR's two masking stages, a wall-clock budget and plain-text progress lines."""

from __future__ import annotations

import math
import time

from transformers import TrainerCallback


class MaskStageCallback(TrainerCallback):
    """Stage 1 trains with mask ratios in [stage1_min, 1] (collator.mask_ratio_min, MMAR: 0.7); from global step
    `stage2_start_step` on, ratios are in [stage2_min, 1] (MMAR: 0.0), so that the model also learns to fill the last
    few tokens of an almost complete image (stage 1 alone leaves holes). Also hands the epoch to the collator.

    The dataloader prefetches a batch, so a switch reaches the batches collated after the step it happens at.
    """

    def __init__(self, collator, stage2_start_step: int | None, stage2_mask_ratio_min: float = 0.0):
        if stage2_start_step is not None and stage2_start_step < 0:
            raise ValueError(f"stage2_start_step must be >= 0 or None, got {stage2_start_step}")
        self.collator = collator
        self.stage1_mask_ratio_min = collator.mask_ratio_min
        self.stage2_start_step = stage2_start_step
        self.stage2_mask_ratio_min = stage2_mask_ratio_min

    def mask_ratio_min_at(self, global_step: int) -> float:
        if self.stage2_start_step is not None and global_step >= self.stage2_start_step:
            return self.stage2_mask_ratio_min
        return self.stage1_mask_ratio_min

    def _sync(self, state):
        self.collator.mask_ratio_min = self.mask_ratio_min_at(state.global_step)

    def on_train_begin(self, args, state, control, **kwargs):
        self._sync(state)

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the float progress: at the start of epoch e it is e (or e + done fraction on resume).
        self.collator.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))

    def on_step_end(self, args, state, control, **kwargs):
        self._sync(state)


class TimeBudgetCallback(TrainerCallback):
    """Stop training cleanly (the model is still saved and evaluated) once `seconds` of training have passed."""

    def __init__(self, seconds: float | None):
        if seconds is not None and seconds <= 0:
            raise ValueError(f"time budget must be > 0 seconds, got {seconds}")
        self.seconds = seconds
        self.start = None
        self.stopped_at_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds is not None and time.monotonic() - self.start >= self.seconds:
            self.stopped_at_step = state.global_step
            control.should_training_stop = True
        return control


__all__ = ["MaskStageCallback", "TimeBudgetCallback"]
