"""Probes of the ablation harness beyond the demo's metrics: generation at few masked-AR steps, and inpainting
"holes" (completions of half-revealed held-out digits that the judge reads as another digit or as no digit)."""

from __future__ import annotations

import functools

import numpy as np
import torch

NO_DIGIT_CONFIDENCE = 0.5  # below this top-class probability of the judge's MLP, a completion reads as "no digit"


@functools.lru_cache(maxsize=None)
def metric(name: str):
    """The project's `evaluate` module `name` (training/metrics), loaded once per process."""
    from training.demo import load_metric

    return load_metric(name)


def caption_accuracy(model, processor, heldout, evaluation: dict) -> float:
    """The demo's held-out caption accuracy: every held-out digit captioned greedily, answers read by the metric."""
    from training.demo import caption_heldout

    answers = caption_heldout(model, processor, heldout, evaluation["batch_size"], evaluation["max_new_tokens"])
    return metric("caption_accuracy").compute(predictions=answers, references=list(heldout["label"]))[
        "caption_accuracy"]


def judge_generated(images, digits: np.ndarray, dataset: str, judge_seed: int) -> dict:
    """Generated-digit accuracy and digit-FD of images [N, C, H, W] (or [N, H, W]) in [0, 1] meant to show
    `digits` (None: FD only)."""
    from training.demo import _gray

    gray = _gray(images)
    judge = {"judge_seed": judge_seed, "judge_dataset": dataset}
    result = {"digit_fd": metric("digit_fd").compute(predictions=gray, **judge)["digit_fd"]}
    if digits is not None:
        result["generated_digit_accuracy"] = metric("generated_digit_accuracy").compute(
            predictions=gray, references=np.asarray(digits).tolist(), **judge)["generated_digit_accuracy"]
    return result


def fd_reference_points(dataset: str, judge_seed: int, count: int) -> dict:
    """digit-FD of `count` real training digits (the floor: a perfect generator) and of `count` uniform-noise
    images (the ceiling), as the demo reports them; the same for every run of a suite, so computed once."""
    from training.data import digit_dataset_arrays

    real, _, train_idx, _ = digit_dataset_arrays(dataset, judge_seed)
    rng = np.random.default_rng(judge_seed)
    chosen = rng.choice(train_idx, size=min(count, len(train_idx)), replace=False)
    noise = rng.random((count,) + real.shape[1:])
    return {"digit_fd_floor_train_vs_heldout": judge_generated(real[chosen], None, dataset, judge_seed)["digit_fd"],
            "digit_fd_ceiling_noise": judge_generated(noise, None, dataset, judge_seed)["digit_fd"],
            "num_images": count}


def few_step_generation(model, processor, evaluation: dict, num_iters, dataset: str, judge_seed: int) -> dict:
    """{num_iter: accuracy and FD} with the evaluation's other sampling settings."""
    from training.demo import generate_digits

    results = {}
    for num_iter in num_iters:
        images, digits = generate_digits(model, processor, {**evaluation, "num_iter": int(num_iter)})
        results[str(num_iter)] = judge_generated(images, digits, dataset, judge_seed)
    return results


def random_token_masks(count: int, tokens_per_side: int, reveal: float, seed: int) -> np.ndarray:
    """[count, side, side] bool, True = regenerate: each image reveals round(reveal * L) tokens chosen at random."""
    if not 0.0 <= reveal <= 1.0:
        raise ValueError(f"reveal must be in [0, 1], got {reveal}")
    length = tokens_per_side**2
    rng = np.random.default_rng(seed)
    masks = np.ones((count, length), dtype=bool)
    for row in masks:
        row[rng.permutation(length)[: round(reveal * length)]] = False
    return masks.reshape(count, tokens_per_side, tokens_per_side)


def token_masks_to_pixels(token_masks: np.ndarray, image_size: int) -> np.ndarray:
    """[N, side, side] token masks -> [N, H, W] float mask images (1 = regenerate), each token's cell filled."""
    cell = image_size // token_masks.shape[-1]
    return np.kron(token_masks.astype(np.float32), np.ones((cell, cell), dtype=np.float32))


@torch.no_grad()
def inpainting_holes(model, processor, heldout, evaluation: dict, dataset: str, judge_seed: int, reveal: float = 0.5,
                     max_images: int | None = None, seed: int = 0) -> tuple[dict, dict]:
    """Reveal a random `reveal` share of each held-out image's tokens, complete the rest with the right caption,
    and count holes: completions the judge reads as another digit, or as no digit (its MLP's top-class probability
    below NO_DIGIT_CONFIDENCE). Returns (rates, {"originals", "masks", "completions"} for figures)."""
    from training.data import digit_caption
    from training.judge import get_judge, to_judge_inputs

    from .ablations_vq import quantised_reconstructions

    rows = heldout if max_images is None else heldout.select(range(min(max_images, len(heldout))))
    labels = np.asarray(rows["label"])
    config = model.config
    # What the model can see of each image (for a VQ model, its quantised version): the revealed tokens are these.
    originals, _ = quantised_reconstructions(model, processor, rows["image"])
    masks = token_masks_to_pixels(random_token_masks(len(labels), config.tokens_per_side, reveal, seed),
                                  config.image_size)
    completions = []
    batch = evaluation["batch_size"]
    for start in range(0, len(labels), batch):
        stop = min(start + batch, len(labels))
        prompts = [digit_caption(int(d)) for d in labels[start:stop]]
        inputs = processor(text=prompts, generation_mode="image", return_tensors="pt")
        inputs.pop("token_type_ids", None)
        completions.append(model.generate(
            **inputs, generation_mode="image", image=originals[start:stop] * 2.0 - 1.0,
            mask_image=torch.from_numpy(masks[start:stop]), num_iter=evaluation["num_iter"],
            guidance_scale=evaluation["guidance_scale"], guidance_schedule=evaluation["guidance_schedule"],
            temperature=evaluation["temperature"], num_inference_steps=evaluation["num_inference_steps"],
            generator=[torch.Generator().manual_seed(seed + i) for i in range(start, stop)], output_type="pt",
            show_progress=False).float())
    completions = torch.cat(completions)
    gray = completions.mean(dim=1).numpy()
    judge = get_judge(judge_seed, dataset)
    reads = judge.predict(gray)
    confidence = judge.feature_model.predict_proba(to_judge_inputs(gray, judge.image_size)).max(axis=1)
    wrong_class = reads != labels
    no_digit = confidence < NO_DIGIT_CONFIDENCE
    holes = wrong_class | no_digit
    rates = {
        "num_images": int(len(labels)),
        "revealed_share": reveal,
        "hole_rate": float(holes.mean()),
        "wrong_class_rate": float(wrong_class.mean()),
        "no_digit_rate": float(no_digit.mean()),
        "judge_reads_originals": float(np.mean(judge.predict(originals.mean(dim=1).numpy()) == labels)),
    }
    return rates, {"originals": originals.mean(dim=1).numpy(), "masks": masks, "completions": gray}


__all__ = ["caption_accuracy", "fd_reference_points", "few_step_generation", "inpainting_holes", "judge_generated", "random_token_masks",
           "token_masks_to_pixels"]
