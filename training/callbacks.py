"""Trainer callbacks: MMAR's two masking stages, a wall-clock budget and plain-text progress lines."""

from __future__ import annotations

import math
import time

from transformers import TrainerCallback


class MaskStageCallback(TrainerCallback):
    """Tells the collator the training step and epoch, so that it masks with the right stage of MMAR's two-stage
    policy (`MMARDataCollator.mask_ratio_min_at`) and re-masks each row differently every epoch.

    The stage changes at the first epoch start at or after the collator's `stage2_start_step`: dataloader workers
    copy the collator when an epoch's iterator starts, and the dataloader prefetches, so changes at epoch starts are
    the ones every batch sees the same way in uninterrupted and resumed runs. A dataloader without a length (a
    streamed dataset, one long epoch) switches at the step itself instead.
    """

    def __init__(self, collator):
        self.collator = collator
        self._epoch_aligned = True

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
        self.collator.set_step(epoch_first_step)

    def on_step_end(self, args, state, control, **kwargs):
        if not self._epoch_aligned:
            self.collator.set_step(state.global_step)


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

    def summary(self, state) -> str:
        """One line for the user: the steps trained of the steps planned, and whether the budget cut it short."""
        planned = state.max_steps
        if self.stopped_at_step is None:
            return f"Trained {state.global_step} of {planned} planned steps."
        return (f"Training stopped by the time budget ({self.seconds:g} s): trained {self.stopped_at_step} of "
                f"{planned} planned steps.")


__all__ = ["MaskStageCallback", "TimeBudgetCallback"]
