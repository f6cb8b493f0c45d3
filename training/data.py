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
    images = [Image.fromarray(p) for p in pixels]  # uint8 [8, 8] -> mode "L"
    if image_size != 8:
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
    "digits_arrays",
    "digits_corpus",
    "first_named_digit",
    "load_digits_dataset",
    "load_image_text_dataset",
]
