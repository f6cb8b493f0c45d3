"""Training data: the embedded digits (split, captions, images) and generic image-text datasets."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from training.data import (
    CAPTION_TEMPLATES,
    DIGIT_WORDS,
    DIGITS_QUESTION,
    decode_image,
    digit_caption,
    digits_corpus,
    load_digits_dataset,
    load_image_text_dataset,
)


@pytest.fixture(scope="module")
def digit_splits():
    return load_digits_dataset()


def test_digits_split_is_stratified_80_20_and_deterministic(digit_splits):
    train, heldout = digit_splits["train"], digit_splits["heldout"]
    assert (len(train), len(heldout)) == (1437, 360)
    assert set(train["sample_index"]).isdisjoint(heldout["sample_index"])
    per_digit = Counter(heldout["label"])
    assert sorted(per_digit) == list(range(10))
    assert all(35 <= count <= 37 for count in per_digit.values())  # about 20 % of each digit's ~180 images
    again = load_digits_dataset()
    assert again["heldout"]["sample_index"] == heldout["sample_index"]
    other_seed = load_digits_dataset(seed=1)
    assert other_seed["heldout"]["sample_index"] != heldout["sample_index"]


def test_digit_images_are_real_8x8_grayscale_with_ink_255(digit_splits, digits):
    images, labels = digits
    row = digit_splits["train"][0]
    image = row["image"]
    assert image.mode == "L" and image.size == (8, 8)
    expected = np.rint(images[row["sample_index"]] * 255 / 16)
    np.testing.assert_array_equal(np.asarray(image), expected)
    assert row["label"] == labels[row["sample_index"]]


def test_captions_and_answers_name_the_digit(digit_splits):
    rows = digit_splits["train"][:300]
    templates_used = set()
    for caption, answer, label, question in zip(rows["caption"], rows["answer"], rows["label"], rows["question"]):
        word = DIGIT_WORDS[label]
        assert word in caption.split() or str(label) in caption.split()
        assert answer == word and question == DIGITS_QUESTION
        templates_used.update(t for t in CAPTION_TEMPLATES if caption == digit_caption(label, t))
    assert len(templates_used) >= 5  # several templates, not one
    assert digit_caption(8, "{a_word} {word}") == "an eight" and digit_caption(1, "{a_word} {word}") == "a one"


def test_digits_corpus_covers_every_text(digit_splits):
    corpus = set(digits_corpus())
    rows = digit_splits["heldout"]
    assert set(rows["caption"]) <= corpus and set(rows["answer"]) <= corpus and DIGITS_QUESTION in corpus


def test_digits_resized_to_a_larger_image_size():
    splits = load_digits_dataset(image_size=16)
    assert splits["heldout"][0]["image"].size == (16, 16)
    with pytest.raises(ValueError, match="image_size must be >= 8"):
        load_digits_dataset(image_size=4)


# ---------------------------------------------------------------- generic image-text datasets
def _write_image_folder(folder, digits, count=6, metadata="jsonl", caption_key="text"):
    images, labels = digits
    rows = []
    for i in range(count):
        name = f"digit_{i}.png"
        Image.fromarray(np.uint8(images[i] * 255 / 16)).save(folder / name)
        rows.append({"file_name": name, caption_key: f"a handwritten {DIGIT_WORDS[labels[i]]}"})
    if metadata == "jsonl":
        (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    else:
        lines = [f"file_name,{caption_key}"] + [f"{r['file_name']},{r[caption_key]}" for r in rows]
        (folder / "metadata.csv").write_text("\n".join(lines))
    return rows


@pytest.mark.parametrize("metadata", ["jsonl", "csv"])
def test_image_folder_with_metadata(tmp_path, digits, metadata):
    rows = _write_image_folder(tmp_path, digits, metadata=metadata)
    dataset = load_image_text_dataset(str(tmp_path), caption_column="text")
    assert len(dataset) == len(rows)
    example = dataset[0]
    assert example["caption"] == rows[0]["text"]
    assert example["question"] == "" and example["answer"] == example["caption"]  # captioning as understanding
    assert example["sample_index"] == 0
    assert decode_image(example["image"]).size == (8, 8)


def test_streaming_image_folder_yields_standard_rows(tmp_path, digits):
    rows = _write_image_folder(tmp_path, digits)
    stream = load_image_text_dataset(str(tmp_path), caption_column="text", streaming=True)
    seen = list(stream)
    assert [r["caption"] for r in seen] == [r["text"] for r in rows]
    assert [r["sample_index"] for r in seen] == list(range(len(rows)))
    assert decode_image(seen[0]["image"]).mode == "L"


def test_missing_caption_column_is_named(tmp_path, digits):
    _write_image_folder(tmp_path, digits, caption_key="description")
    with pytest.raises(ValueError, match=r"no caption column 'text'.*description"):
        load_image_text_dataset(str(tmp_path), caption_column="text")


def test_unreadable_image_is_named(tmp_path, digits):
    _write_image_folder(tmp_path, digits)
    (tmp_path / "digit_3.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"Unreadable image .*digit_3\.png"):
        load_image_text_dataset(str(tmp_path), caption_column="text")
    # Streaming cannot check up front: the error comes, as clearly, when the row is read.
    stream = load_image_text_dataset(str(tmp_path), caption_column="text", streaming=True)
    with pytest.raises(ValueError, match=r"Unreadable image .*digit_3\.png"):
        for row in stream:
            decode_image(row["image"])
