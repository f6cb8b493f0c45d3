"""digit_fd: Frechet distance between images and real digits in the independent judge's feature space.

Features are the 64 hidden ReLU units of the judge's MLP (training.judge, trained only on the train split).
The reference set is the real held-out digits by default (`reference_split="train"` for the train split), or
any images passed as `reference_images`. Lower is better; real train vs real held-out digits is the floor.

    >>> metric = evaluate.load("training/metrics/digit_fd")
    >>> metric.compute(predictions=generated_images)            # vs the 360 held-out real digits
    {'digit_fd': 1.9, 'num_samples': 100, 'num_reference_samples': 360}
"""

import datasets
import evaluate
import numpy as np

from training.data import digit_dataset_arrays
from training.judge import frechet_distance, get_judge

_DESCRIPTION = "Frechet distance between image sets in the feature space of a digit classifier (digits' 'FID')."
_KWARGS_DESCRIPTION = """
Args:
    predictions: images, each [H, W] or [1, H, W], grayscale in [0, 1] with ink = 1 (at least 2).
    reference_split (`str`, default "heldout"): real digits to compare with: "heldout" or "train".
    reference_images (optional): compare with these images instead (same format as predictions).
    judge_seed (`int`, default 0): seed of the digits split (judge and reference split).
    judge_dataset (`str`, default "digits"): the embedded dataset of the judge and the reference images ("mnist").
Returns:
    digit_fd (`float`), num_samples (`int`), num_reference_samples (`int`).
"""

_IMAGE_2D = datasets.Sequence(datasets.Sequence(datasets.Value("float32")))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DigitFD(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": _IMAGE_2D}),
                datasets.Features({"predictions": datasets.Sequence(_IMAGE_2D)}),
            ],
        )

    def _compute(self, predictions, reference_split: str = "heldout", reference_images=None, judge_seed: int = 0,
                 judge_dataset: str = "digits"):
        judge = get_judge(judge_seed, dataset=judge_dataset)
        if reference_images is None:
            if reference_split not in ("heldout", "train"):
                raise ValueError(f"reference_split must be 'heldout' or 'train', got {reference_split!r}")
            images, _, train_idx, heldout_idx = digit_dataset_arrays(judge_dataset, judge_seed)
            reference_images = images[heldout_idx if reference_split == "heldout" else train_idx]
        generated = judge.features(np.asarray(predictions, dtype=np.float32))
        reference = judge.features(reference_images)
        return {
            "digit_fd": frechet_distance(generated, reference),
            "num_samples": int(len(generated)),
            "num_reference_samples": int(len(reference)),
        }
