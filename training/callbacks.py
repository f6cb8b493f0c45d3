"""Trainer callbacks: MMAR's two masking stages, a wall-clock budget and plain-text progress lines."""

from __future__ import annotations

import math
import time

from transformers import TrainerCallback


class MaskStageCallback(TrainerCallback):
    """MMAR's two masking stages. Stage 1 trains with mask ratios in [stage1_min, 1] (the collator's
    mask_ratio_min, MMAR: 0.7); stage 2 with ratios in [stage2_min, 1] (MMAR: 0.0), so that the model also learns
    to fill the last few tokens of an almost complete image (stage 1 alone leaves holes). Also gives the collator
    the epoch number (it seeds each row with it).

    The stage changes at the first epoch start at or after global step `stage2_start_step`: dataloader workers
    copy the collator when an epoch's iterator starts, and the dataloader prefetches, so changes at epoch starts are
    the ones every batch sees the same way in uninterrupted and resumed runs. A dataloader without a length (a
    streamed dataset, one long epoch) switches at the step itself instead.
    """

    def __init__(self, collator, stage2_start_step: int | None, stage2_mask_ratio_min: float = 0.0):
        if stage2_start_step is not None and stage2_start_step < 0:
            raise ValueError(f"stage2_start_step must be >= 0 or None, got {stage2_start_step}")
        self.collator = collator
        self.stage1_mask_ratio_min = collator.mask_ratio_min
        self.stage2_start_step = stage2_start_step
        self.stage2_mask_ratio_min = stage2_mask_ratio_min
        self._epoch_aligned = True

    def mask_ratio_min_at(self, global_step: int) -> float:
        if self.stage2_start_step is not None and global_step >= self.stage2_start_step:
            return self.stage2_mask_ratio_min
        return self.stage1_mask_ratio_min

    @staticmethod
    def _update_steps_per_epoch(args, train_dataloader) -> int | None:
        try:
            batches = len(train_dataloader)
        except TypeError:  # iterable dataset: no length
            return None
        accumulation = max(int(getattr(args, "gradient_accumulation_steps", 1)), 1)
        return max(math.ceil(batches / accumulation), 1)

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        steps_per_epoch = None if train_dataloader is None else self._update_steps_per_epoch(args, train_dataloader)
        self._epoch_aligned = steps_per_epoch is not None
        if self._epoch_aligned:  # a resumed run re-enters mid-epoch: use that epoch's first step
            epoch = state.global_step // steps_per_epoch
            epoch_first_step = epoch * steps_per_epoch
        else:
            epoch, epoch_first_step = math.floor((state.epoch or 0.0) + 1e-6), state.global_step
        self.collator.set_epoch(epoch)
        self.collator.mask_ratio_min = self.mask_ratio_min_at(epoch_first_step)

    def on_step_end(self, args, state, control, **kwargs):
        if not self._epoch_aligned:
            self.collator.mask_ratio_min = self.mask_ratio_min_at(state.global_step)


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
