"""caption_accuracy: is the digit a generated caption names the right one?

A prediction is correct when the FIRST digit it names (a word "zero".."nine" or a numeral "0".."9") is the
reference digit, so a text listing every digit does not score.

    >>> metric = evaluate.load("training/metrics/caption_accuracy")
    >>> metric.compute(predictions=["a seven", "it is 3", "one or seven"], references=[7, 5, 7])
    {'caption_accuracy': 0.3333333333333333, 'num_samples': 3}
"""

import datasets
import evaluate

from training.data import first_named_digit

_DESCRIPTION = "Fraction of captions whose first named digit (word or numeral) is the reference digit."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated captions / answers.
    references (`list[int]`): the true digits, 0-9.
Returns:
    caption_accuracy (`float`): fraction correct, in [0, 1].
    num_samples (`int`): number of predictions scored.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("caption_accuracy needs at least one prediction")
        for digit in references:
            if not 0 <= digit <= 9:
                raise ValueError(f"references must be digits 0-9, got {digit}")
        correct = sum(first_named_digit(text) == digit for text, digit in zip(predictions, references))
        return {"caption_accuracy": correct / len(predictions), "num_samples": len(predictions)}
