"""MMARDataCollator: task mix, mask-ratio statistics and stages, caption dropout, label masking, reproducibility."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import digit_word_processor, tiny_config
from scipy.stats import truncnorm

from training.callbacks import MaskStageCallback
from training.collator import IGNORE_INDEX, MMARDataCollator
from training.data import load_digits_dataset

L = 16  # 8x8 digits, patch 2


@pytest.fixture(scope="module")
def processor():
    return digit_word_processor()


@pytest.fixture(scope="module")
def rows():
    split = load_digits_dataset()["train"]
    return [split[i] for i in range(256)]


def plans(collator, rows):
    return [collator.plan(row) for row in rows]


def test_batch_layout_and_label_masking(processor, rows):
    collator = MMARDataCollator(processor, L, understanding_ratio=0.5, seed=0)
    batch = collator(rows[:16])
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert batch["pixel_values"].shape == (16, 1, 8, 8)
    expected_pixels = np.stack([np.asarray(row["image"], np.float32) / 127.5 - 1.0 for row in rows[:16]])
    np.testing.assert_allclose(batch["pixel_values"][:, 0].numpy(), expected_pixels, atol=1e-5)  # images in order
    assert batch["image_mask"].shape == (16, L) and batch["image_mask"].dtype == torch.bool
    assert ((ids == processor.image_token_id).sum(1) == L).all()  # one whole span per row
    assert (labels[attention == 0] == IGNORE_INDEX).all()  # padding
    assert (labels[ids == processor.image_token_id] == IGNORE_INDEX).all()  # image tokens
    tokenizer = processor.tokenizer
    kinds = set()
    for row, plan in zip(range(16), plans(collator, rows[:16])):
        labelled = labels[row][labels[row] != IGNORE_INDEX].tolist()
        if plan.understanding:
            kinds.add("understanding")
            # only ` seven<eos>`: the answer word and eos, never the question or the image
            assert tokenizer.convert_ids_to_tokens(labelled) == [rows[row]["answer"], "<eos>"]
            assert not batch["image_mask"][row].any()
        else:
            kinds.add("generation")
            assert labelled == []
            assert batch["image_mask"][row].any()
    assert kinds == {"understanding", "generation"}


def test_sequences_follow_the_shared_conventions(processor, rows):
    collator = MMARDataCollator(processor, L, understanding_ratio=0.5, caption_dropout=0.0, seed=3)
    batch = collator(rows[:8])
    tokens = processor.tokenizer.convert_ids_to_tokens
    for row, plan in enumerate(plans(collator, rows[:8])):
        real = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
        text = tokens(real)
        assert text[0] == "<bos>" and text[-1] == "<eos>"
        if plan.understanding:  # <bos><img>What digit is this? seven<eos>
            assert text[1] == "<boi>" and text[L + 2] == "<eoi>"
            assert text[L + 3 : -1] == ["what", "digit", "is", "this", "?", rows[row]["answer"]]
        else:  # <bos>a handwritten seven<img><eos>
            caption = processor.tokenizer.tokenize(rows[row]["caption"])
            assert text[1 : 1 + len(caption)] == caption
            assert text[1 + len(caption)] == "<boi>" and text[-2] == "<eoi>"


def test_task_mix_follows_understanding_ratio(processor, rows):
    for ratio in (0.0, 0.25, 1.0):
        collator = MMARDataCollator(processor, L, understanding_ratio=ratio)
        share = np.mean([p.understanding for p in plans(collator, rows)])
        assert abs(share - ratio) < 4 * math.sqrt(0.25 / len(rows)) + 1e-9


def _generation_mask_counts(collator, rows, epochs=4):
    counts = []
    for epoch in range(epochs):
        collator.set_epoch(epoch)
        counts += [int(p.image_mask.sum()) for p in plans(collator, rows)]
    return np.array(counts)


def test_mask_ratio_statistics_in_both_stages(processor, rows):
    collator = MMARDataCollator(processor, L, understanding_ratio=0.0, mask_ratio_min=0.7)
    stage1 = _generation_mask_counts(collator, rows)
    # bounds: at least ceil(0.7 L) tokens, at most all of them
    assert stage1.min() >= math.ceil(0.7 * L) and stage1.max() == L
    # mean: E[ceil(L r)] for r ~ truncnorm(mean 1, std 0.25) on [0.7, 1]; ceil adds < 1 token
    mean_ratio = truncnorm.mean(-1.2, 0.0, loc=1.0, scale=0.25)
    assert L * mean_ratio <= stage1.mean() <= L * mean_ratio + 1 + 0.1
    collator.mask_ratio_min = 0.0
    stage2 = _generation_mask_counts(collator, rows)
    assert stage2.min() < math.ceil(0.7 * L)  # the second stage also trains almost-complete images
    mean_ratio2 = truncnorm.mean(-4.0, 0.0, loc=1.0, scale=0.25)
    assert L * mean_ratio2 <= stage2.mean() <= L * mean_ratio2 + 1 + 0.1
    assert stage2.mean() < stage1.mean()


@pytest.mark.parametrize("mask_ratio_min", [0.7, 0.0])
def test_mask_ratio_follows_scipy_truncnorm(processor, mask_ratio_min):
    from scipy.stats import kstest

    collator = MMARDataCollator(processor, L, mask_ratio_min=mask_ratio_min)
    rng = np.random.default_rng(0)
    ratios = np.array([collator.sample_mask_ratio(rng) for _ in range(4000)])
    assert ratios.min() >= mask_ratio_min and ratios.max() <= 1.0
    reference = truncnorm((mask_ratio_min - 1.0) / 0.25, 0.0, loc=1.0, scale=0.25)
    assert kstest(ratios, reference.cdf).pvalue > 1e-3
    assert kstest(ratios, truncnorm(-1.0, 0.0, loc=1.0, scale=0.25).cdf).pvalue < 1e-6  # the test can tell


def test_image_mask_is_a_prefix_of_a_random_permutation(processor, rows):
    collator = MMARDataCollator(processor, L, understanding_ratio=0.0)
    masks = np.stack([p.image_mask for p in plans(collator, rows)])
    # every position is masked sometimes and visible sometimes: the order is random, not raster
    per_position = masks.mean(0)
    assert per_position.min() > 0.6 and per_position.max() < 1.0


def test_caption_dropout_rate(processor, rows):
    collator = MMARDataCollator(processor, L, understanding_ratio=0.0, caption_dropout=0.1)
    dropped = []
    for epoch in range(4):
        collator.set_epoch(epoch)
        dropped += [p.text.startswith(processor.image_token) for p in plans(collator, rows)]
    n = len(dropped)
    assert abs(np.mean(dropped) - 0.1) < 4 * math.sqrt(0.09 / n)
    never = MMARDataCollator(processor, L, understanding_ratio=0.0, caption_dropout=0.0)
    assert not any(p.text.startswith(processor.image_token) for p in plans(never, rows))


def test_stage_switch_by_callback_at_epoch_starts(processor):
    collator = MMARDataCollator(processor, L, mask_ratio_min=0.7, stage2_start_step=25, stage2_mask_ratio_min=0.0)
    callback = MaskStageCallback(collator)
    args = SimpleNamespace(gradient_accumulation_steps=2)
    loader = list(range(20))  # 20 batches = 10 optimizer steps per epoch
    seen = []
    for epoch in range(4):
        state = SimpleNamespace(global_step=10 * epoch, epoch=float(epoch))
        callback.on_epoch_begin(args, state, None, train_dataloader=loader)
        seen.append((collator.epoch, collator.mask_ratio_min))
    # epochs start at steps 0, 10, 20, 30: the first start at or after step 25 switches to stage 2
    assert seen == [(0, 0.7), (1, 0.7), (2, 0.7), (3, 0.0)]
    # a run resumed at step 27 re-enters epoch 2 (started at step 20): still stage 1, as uninterrupted
    resumed = MaskStageCallback(MMARDataCollator(processor, L, mask_ratio_min=0.7, stage2_start_step=25))
    resumed.on_epoch_begin(args, SimpleNamespace(global_step=27, epoch=2.7), None, train_dataloader=loader)
    assert (resumed.collator.epoch, resumed.collator.mask_ratio_min) == (2, 0.7)


def test_stage_switch_without_epoch_length_happens_at_the_step(processor):
    collator = MMARDataCollator(processor, L, mask_ratio_min=0.7, stage2_start_step=5)
    callback = MaskStageCallback(collator)
    stream = iter(range(100))  # no len(): a streamed dataset
    state = SimpleNamespace(global_step=0, epoch=0.0)
    callback.on_epoch_begin(None, state, None, train_dataloader=stream)
    for step, expected in ((4, 0.7), (5, 0.0)):
        state.global_step = step
        callback.on_step_end(None, state, None)
        assert collator.mask_ratio_min == expected


def test_reproducible_per_row_whatever_the_batch(processor, rows):
    a = MMARDataCollator(processor, L, seed=7)
    b = MMARDataCollator(processor, L, seed=7)
    batch_a, batch_b = a(rows[:8]), b(rows[:8])
    for key in batch_a:
        assert torch.equal(batch_a[key], batch_b[key]), key
    # a row gets the same treatment alone as inside a batch (workers and processes may split batches)
    alone = a([rows[5]])
    assert torch.equal(alone["image_mask"][0], batch_a["image_mask"][5])
    # a new epoch or another seed draws anew
    a.set_epoch(1)
    assert not torch.equal(a(rows[:8])["image_mask"], batch_a["image_mask"])
    other = MMARDataCollator(processor, L, seed=8)
    assert not torch.equal(other(rows[:8])["image_mask"], batch_a["image_mask"])


def test_dataloader_workers_give_the_same_batches(processor, rows):
    collator = MMARDataCollator(processor, L, seed=5)
    loader = lambda workers: torch.utils.data.DataLoader(rows[:32], batch_size=8, collate_fn=collator,
                                                          num_workers=workers)
    in_process, in_workers = list(loader(0)), list(loader(2))
    for a, b in zip(in_process, in_workers, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_bad_settings_are_rejected(processor):
    with pytest.raises(ValueError, match="understanding_ratio"):
        MMARDataCollator(processor, L, understanding_ratio=1.5)
    with pytest.raises(ValueError, match="mask_ratio_min"):
        MMARDataCollator(processor, L, mask_ratio_min=-0.1)
    with pytest.raises(ValueError, match="tokens_per_image"):
        MMARDataCollator(processor, 64)  # the processor expands <img> to 16 tokens


def test_the_collator_owns_the_two_stage_policy(processor):
    collator = MMARDataCollator(processor, L, mask_ratio_min=0.7, stage2_start_step=100, stage2_mask_ratio_min=0.2)
    assert [collator.mask_ratio_min_at(step) for step in (0, 99, 100, math.inf)] == [0.7, 0.7, 0.2, 0.2]
    collator.set_step(150)
    assert collator.mask_ratio_min == 0.2
    one_stage = MMARDataCollator(processor, L, mask_ratio_min=0.7)
    assert one_stage.mask_ratio_min_at(math.inf) == 0.7
    with pytest.raises(ValueError, match="stage2_start_step"):
        MMARDataCollator(processor, L, stage2_start_step=-1)
    with pytest.raises(ValueError, match="stage2_mask_ratio_min"):
        MMARDataCollator(processor, L, stage2_mask_ratio_min=1.5)
