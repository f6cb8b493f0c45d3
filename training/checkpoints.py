"""Resuming `mmar train`: which `checkpoint-N` folders Trainer finished writing (an interrupted save leaves one
without its trainer_state.json or weights)."""

from __future__ import annotations

from pathlib import Path

from .distributed import is_engine_checkpoint


def _is_complete_checkpoint(folder: Path) -> bool:
    # Trainer writes trainer_state.json after the weights, optimizer and RNG states: a checkpoint without it was
    # interrupted while saving.
    has_weights = any((folder / name).exists() for name in ("model.safetensors", "model.safetensors.index.json",
                                                             "adapter_model.safetensors")) or is_engine_checkpoint(folder)
    return has_weights and (folder / "trainer_state.json").is_file()


def _checkpoints(output_dir) -> list[Path]:
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[11:]), reverse=True)


def newest_complete_checkpoint(output_dir) -> str:
    """The newest `checkpoint-N` of `output_dir` that was saved completely; incomplete newer ones are named."""
    checkpoints = _checkpoints(output_dir)
    complete = [p for p in checkpoints if _is_complete_checkpoint(p)]
    if not complete:
        found = ", ".join(p.name for p in checkpoints) or "none"
        raise ValueError(f"resume_from_checkpoint=true but {output_dir} holds no complete checkpoint "
                         f"(checkpoint folders: {found})")
    skipped = [p.name for p in checkpoints if int(p.name[11:]) > int(complete[0].name[11:])]
    if skipped:
        print(f"Skipping incomplete {', '.join(skipped)} (no trainer_state.json or weights: interrupted while "
              "saving)")
    return str(complete[0])


def check_complete_checkpoint(folder) -> None:
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint={str(folder)!r} is not a folder")
    if not _is_complete_checkpoint(path):
        raise ValueError(f"resume_from_checkpoint={str(folder)!r} is incomplete (no trainer_state.json or weights); "
                         "pass training.resume_from_checkpoint=true to resume from the newest complete one")


__all__ = ["check_complete_checkpoint", "newest_complete_checkpoint"]
