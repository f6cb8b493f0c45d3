"""One forward per task inside a training batch (run config `forward_per_task: true`).

A batch with a fixed task mix pads every row to its longest: with SmolLM2's chat template an understanding row is
56-74 tokens and a generation row (caption + image) 20-25, so half of the batch's token slots are padding. Rows do not
see each other (attention is per row, each image's diffusion noise comes from its own generator), so running the
understanding rows and the generation rows as two forwards, each padded to its own longest row, and weighting each
forward's losses by its share of the batch's label tokens and masked image tokens gives the one-forward loss and
gradient. Rows without text labels skip the language-model head (logits of the last position only).
"""

from __future__ import annotations

import torch


def understanding_rows(inputs: dict) -> torch.Tensor:
    """bool [batch]: rows with text labels (the understanding task); the others are generation rows."""
    labels = inputs.get("labels")
    if labels is None:
        return torch.zeros(inputs["input_ids"].shape[0], dtype=torch.bool)
    return (labels[:, 1:] != -100).any(dim=1)


def images_per_row(input_ids: torch.Tensor, image_token_id: int, tokens_per_image: int) -> torch.Tensor:
    """int [batch]: how many image spans each row holds (its placeholder tokens over tokens_per_image)."""
    return (input_ids == image_token_id).sum(dim=1) // tokens_per_image


def select_rows(inputs: dict, rows: torch.Tensor, image_counts: torch.Tensor) -> dict:
    """The rows `rows` (indices) of a right-padded batch, with the columns that are padding in all of them removed.
    Row-wise entries (input ids, masks, labels) are indexed by row, image-wise ones (pixel_values, image_tokens,
    image_mask, one generator per image) by the images those rows hold."""
    batch = inputs["input_ids"].shape[0]
    image_starts = torch.cumsum(image_counts, 0) - image_counts
    image_index = torch.cat([torch.arange(int(image_starts[r]), int(image_starts[r] + image_counts[r]))
                             for r in rows.tolist()] or [torch.zeros(0, dtype=torch.long)])
    num_images = int(image_counts.sum())
    length = int(inputs["attention_mask"][rows].sum(dim=1).max()) if "attention_mask" in inputs else None
    selected = {}
    for key, value in inputs.items():
        if key in ("pixel_values", "image_tokens", "image_mask", "generator"):
            if value is None:
                selected[key] = None
            elif isinstance(value, (list, tuple)):
                selected[key] = [value[i] for i in image_index.tolist()]
            else:
                if value.shape[0] != num_images:
                    raise ValueError(f"forward_per_task: {key} holds {value.shape[0]} images but the rows' "
                                     f"placeholders make {num_images}")
                selected[key] = value[image_index]
        elif torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == batch:
            value = value[rows]
            if length is not None and value.dim() == 2 and key in ("input_ids", "attention_mask", "labels",
                                                                    "position_ids"):
                value = value[:, :length]
            selected[key] = value
        else:
            raise ValueError(f"forward_per_task cannot split the batch entry {key!r} by row")
    return selected


def task_groups(inputs: dict, image_token_id: int, tokens_per_image: int) -> list[dict]:
    """The batch as one input dict per task present (understanding rows first). Generation rows' dicts carry no
    labels and `logits_to_keep=1`: they have no text loss, so the LM head need not run over their tokens."""
    attention_mask = inputs.get("attention_mask")
    if attention_mask is not None and (attention_mask[:, 0] == 0).any():
        raise ValueError("forward_per_task needs right-padded batches (MMARDataCollator pads on the right)")
    understanding = understanding_rows(inputs)
    counts = images_per_row(inputs["input_ids"], image_token_id, tokens_per_image)
    groups = []
    for rows in (understanding, ~understanding):
        if not rows.any():
            continue
        group = select_rows(inputs, rows.nonzero()[:, 0], counts)
        if not understanding_rows(group).any():
            group.pop("labels", None)
            group["logits_to_keep"] = 1
        groups.append(group)
    return groups


__all__ = ["images_per_row", "select_rows", "task_groups", "understanding_rows"]
