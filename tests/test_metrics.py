"""The digit judge and the local `evaluate` metric modules, against hand-computed values."""

from pathlib import Path

import evaluate
import numpy as np
import pytest

from training.data import digits_arrays
from training.judge import frechet_distance, get_judge, to_judge_inputs

METRICS = Path(__file__).resolve().parents[1] / "training" / "metrics"


@pytest.fixture(scope="module")
def split():
    images, labels, train_idx, heldout_idx = digits_arrays(0)
    return images / 16.0, labels, train_idx, heldout_idx


@pytest.fixture(scope="module")
def judge():
    return get_judge(0)


def test_judge_is_accurate_on_heldout_digits_it_never_saw(judge, split):
    images, labels, _, heldout = split
    assert judge.heldout_accuracy >= 0.97
    assert judge.heldout_accuracy == pytest.approx(np.mean(judge.predict(images[heldout]) == labels[heldout]))
    assert get_judge(0) is judge  # cached in memory, not retrained


def test_judge_inputs_accept_channels_and_larger_images(judge, split):
    images = split[0][:4]
    channel_first = images[:, None]
    np.testing.assert_allclose(to_judge_inputs(channel_first), to_judge_inputs(images))
    upsampled = np.kron(images, np.ones((2, 2)))  # 16x16, each pixel doubled: area-resizing recovers 8x8
    np.testing.assert_allclose(to_judge_inputs(upsampled), to_judge_inputs(images), atol=1e-6)
    with pytest.raises(ValueError, match="square"):
        to_judge_inputs(np.zeros((2, 8, 6)))


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(20000, 2))
    b = rng.normal([1.0, -2.0], [2.0, 0.5], size=(20000, 2))
    # diagonal covariances: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2 = (1 + 4) + (1 + 0.25) = 6.25
    assert frechet_distance(a, b) == pytest.approx(6.25, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 3.0) == pytest.approx(18.0, rel=1e-6)  # shift only: 2 * 3^2
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


def test_caption_accuracy_hand_computed():
    metric = evaluate.load(str(METRICS / "caption_accuracy"))
    predictions = ["seven", "a handwritten 3", "one or seven", "nothing", "Eight", "sevens"]
    references = [7, 3, 7, 0, 8, 7]
    # right: "seven", "3", "Eight"; wrong: first digit named is one, no digit, "sevens" is not a digit word
    result = metric.compute(predictions=predictions, references=references)
    assert result == {"caption_accuracy": 3 / 6, "num_samples": 6}


def test_generated_digit_accuracy_hand_computed(judge, split):
    images, labels, _, heldout = split
    chosen = [i for i in heldout if judge.predict(images[i : i + 1])[0] == labels[i]][:10]
    references = labels[chosen].copy()
    references[:3] = (references[:3] + 1) % 10  # ask for the wrong digit on three of ten
    metric = evaluate.load(str(METRICS / "generated_digit_accuracy"))
    result = metric.compute(predictions=images[chosen], references=references.tolist())
    assert result["generated_digit_accuracy"] == pytest.approx(0.7)
    assert result["num_samples"] == 10
    assert result["judge_heldout_accuracy"] == judge.heldout_accuracy
    expected = {int(d): float(np.mean((labels[chosen] == references)[references == d])) for d in set(references)}
    assert result["per_digit_accuracy"] == expected
    with_channel = metric.compute(predictions=images[chosen][:, None], references=references.tolist())
    assert with_channel["generated_digit_accuracy"] == pytest.approx(0.7)


def test_digit_fd_matches_judge_features_and_orders_real_and_noise(judge, split):
    images, _, train, heldout = split
    metric = evaluate.load(str(METRICS / "digit_fd"))
    subset = images[train[:200]]
    result = metric.compute(predictions=subset)
    by_hand = frechet_distance(judge.features(subset), judge.features(images[heldout]))
    assert result["digit_fd"] == pytest.approx(by_hand, rel=1e-5)
    assert result["num_samples"] == 200 and result["num_reference_samples"] == len(heldout)
    floor = metric.compute(predictions=images[train])["digit_fd"]
    noise = np.random.default_rng(0).random((200, 8, 8))
    ceiling = metric.compute(predictions=noise)["digit_fd"]
    assert floor < 1.0 < 10 * floor < ceiling
    same = metric.compute(predictions=images[heldout], reference_split="heldout")["digit_fd"]
    assert same == pytest.approx(0.0, abs=1e-6)
    explicit = metric.compute(predictions=subset, reference_images=images[heldout])["digit_fd"]
    assert explicit == pytest.approx(result["digit_fd"], rel=1e-5)


def test_deskew_straightens_a_slanted_stroke():
    from training.judge import deskew

    slanted = np.zeros((1, 32, 32))
    for row in range(6, 26):  # a one-pixel line leaning right by one column every two rows
        slanted[0, row, 10 + (row - 6) // 2] = 1.0
    straight = deskew(slanted)[0]
    ink_columns = [np.average(np.arange(32), weights=straight[row]) for row in range(8, 24) if straight[row].sum()]
    assert np.ptp(ink_columns) < 1.0  # upright: the ink stays in about one column (it spanned 8 columns)
    assert np.array_equal(deskew(np.zeros((1, 8, 8))), np.zeros((1, 8, 8)))  # blank images are left alone


def test_orientation_histograms_put_a_vertical_edge_in_the_horizontal_gradient_bin():
    from training.judge import orientation_histograms

    edge = np.zeros((1, 8, 8))
    edge[0, :, 4:] = 1.0  # a vertical edge: the gradient points along the columns, angle 0
    features = orientation_histograms(edge, cell=4, bins=9).reshape(2, 2, 9)
    assert features[..., 0].sum() == pytest.approx(features.sum())  # every bit of magnitude in bin 0
    assert np.linalg.norm(features) == pytest.approx(1.0)
