"""generated_digit_accuracy: does the independent judge read the requested digit in each generated image?

The judge (training.judge: an SVC trained only on the digits' train split) classifies each image; the score is
the fraction read as the requested digit. Images are grayscale in [0, 1] (ink = 1), [H, W] or [1, H, W] each.

    >>> metric = evaluate.load("training/metrics/generated_digit_accuracy")
    >>> metric.compute(predictions=images, references=[0, 1, 2, ...])
    {'generated_digit_accuracy': 0.93, 'per_digit_accuracy': {...}, 'judge_heldout_accuracy': 0.994, ...}
"""

import datasets
import evaluate
import numpy as np

from training.judge import get_judge

_DESCRIPTION = "Fraction of generated digit images that an independent classifier reads as the requested digit."
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images, each [H, W] or [1, H, W], grayscale in [0, 1] with ink = 1 (square; resized
        to 8x8 for the judge).
    references (`list[int]`): the digit each image was generated for.
    judge_seed (`int`, default 0): seed of the digits split the judge is trained on.
    judge_dataset (`str`, default "digits"): the embedded dataset the judge is trained on: "digits" or "mnist".
Returns:
    generated_digit_accuracy (`float`), per_digit_accuracy (`dict[int, float]`), judge_heldout_accuracy
    (`float`, the judge's own accuracy on real held-out digits), num_samples (`int`).
"""

_IMAGE_2D = datasets.Sequence(datasets.Sequence(datasets.Value("float32")))
_IMAGE_3D = datasets.Sequence(_IMAGE_2D)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GeneratedDigitAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": _IMAGE_2D, "references": datasets.Value("int32")}),
                datasets.Features({"predictions": _IMAGE_3D, "references": datasets.Value("int32")}),
            ],
        )

    def _compute(self, predictions, references, judge_seed: int = 0, judge_dataset: str = "digits"):
        if len(predictions) == 0:
            raise ValueError("generated_digit_accuracy needs at least one image")
        judge = get_judge(judge_seed, dataset=judge_dataset)
        read = judge.predict(np.asarray(predictions, dtype=np.float32))
        references = np.asarray(references)
        if ((references < 0) | (references > 9)).any():
            raise ValueError(f"references must be digits 0-9, got {sorted(set(references.tolist()))}")
        correct = read == references
        per_digit = {int(d): float(correct[references == d].mean()) for d in np.unique(references)}
        return {
            "generated_digit_accuracy": float(correct.mean()),
            "per_digit_accuracy": per_digit,
            "judge_heldout_accuracy": judge.heldout_accuracy,
            "num_samples": int(len(correct)),
        }
