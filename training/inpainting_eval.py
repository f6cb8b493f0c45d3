"""Inpainting figures on held-out digits: complete the lower half with the right caption, a wrong caption and none,
and let the independent judge read the completions.

    python -m training.inpainting_eval --model mmar-demo/model --output-dir inpainting
writes `inpainting.json` (the rates) and `inpainting.png` (original, mask, the three completions).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import DIGIT_WORDS, digit_caption, digits_arrays
from .judge import get_judge

CONDITIONS = ("right_caption", "wrong_caption", "no_caption")


def lower_half_mask(image_size: int) -> np.ndarray:
    """[H, W] float mask, 1 = regenerate: the lower half of the image."""
    mask = np.zeros((image_size, image_size), dtype=np.float32)
    mask[image_size // 2:] = 1.0
    return mask


def heldout_digit_images(count: int | None = None, seed: int = 0) -> tuple[list[Image.Image], np.ndarray]:
    """The first `count` held-out digits of the project's split as 8x8 RGB PIL images, and their labels."""
    pixels, labels, _, heldout = digits_arrays(seed)
    chosen = heldout if count is None else heldout[:count]
    images = [Image.fromarray(np.round(pixels[i] / 16.0 * 255).astype(np.uint8)).convert("RGB") for i in chosen]
    return images, labels[chosen]


def wrong_digits(labels: np.ndarray) -> np.ndarray:
    """A caption digit that is never the image's own: the next digit."""
    return (labels + 1) % 10


def complete_digits(pipe, images, captions: list[str], mask: np.ndarray, seed: int, batch_size: int = 64,
                    **sampling) -> np.ndarray:
    """Grayscale completions [N, H, W] in [0, 1]; image i uses generator seed + i in every condition."""
    completions = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        generators = [torch.Generator().manual_seed(seed + i) for i in range(start, stop)]
        output = pipe(captions[start:stop], image=images[start:stop], mask_image=mask, generator=generators,
                      output_type="np", **sampling).images
        completions.append(output.mean(axis=-1))
    return np.concatenate(completions)


def evaluate_inpainting(pipe, images, labels: np.ndarray, seed: int = 0, **sampling) -> tuple[dict, dict]:
    """Rates the judge reads from the lower-half completions, and the completions of each condition."""
    mask = lower_half_mask(pipe.model.config.image_size)
    wrong = wrong_digits(labels)
    captions = {
        "right_caption": [digit_caption(int(d)) for d in labels],
        "wrong_caption": [digit_caption(int(d)) for d in wrong],
        "no_caption": [""] * len(labels),
    }
    judge = get_judge(0)
    completions, reads = {}, {}
    for condition in CONDITIONS:
        completions[condition] = complete_digits(pipe, images, captions[condition], mask, seed, **sampling)
        reads[condition] = judge.predict(completions[condition])
    originals = np.stack([np.asarray(image.convert("L"), dtype=np.float64) / 255.0 for image in images])
    rates = {
        "num_images": len(labels),
        "judge_reads_originals": float(np.mean(judge.predict(originals) == labels)),
        "right_caption_accuracy": float(np.mean(reads["right_caption"] == labels)),
        "wrong_caption_follows_caption": float(np.mean(reads["wrong_caption"] == wrong)),
        "wrong_caption_keeps_original": float(np.mean(reads["wrong_caption"] == labels)),
        "no_caption_keeps_original": float(np.mean(reads["no_caption"] == labels)),
        "upper_half_max_abs_change": float(max(
            np.abs(completions[c][:, : mask.shape[0] // 2] - originals[:, : mask.shape[0] // 2]).max()
            for c in CONDITIONS)),
    }
    return rates, {"originals": originals, "mask": mask, **completions}


def plot_inpainting_grid(results: dict, labels: np.ndarray, path: str, columns: int = 10) -> None:
    """Rows: original, mask, completion with the right caption, a wrong caption ("next digit"), no caption."""
    from .plots import plot_digit_grid

    count = min(columns, len(labels))
    mask_row = [np.broadcast_to(results["mask"], results["originals"][0].shape)] * count
    rows = [results["originals"][:count], mask_row, *(results[c][:count] for c in CONDITIONS)]
    row_labels = ["original", "mask", "right caption", "wrong caption\n(next digit)", "no caption"]
    plot_digit_grid(rows, path, row_labels,
                    title="Lower-half inpainting of held-out digits: " + " ".join(DIGIT_WORDS[int(d)] for d in
                                                                               labels[:count]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.inpainting_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained MMAR folder (e.g. mmar-demo/model)")
    parser.add_argument("--output-dir", default="inpainting")
    parser.add_argument("--count", type=int, default=None, help="held-out digits to complete (default: all 360)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not Path(args.model).is_dir():
        parser.error(f"--model {args.model!r} is not a folder")
    import processors  # noqa: F401  (diffusers resolves the processor component by its module)
    from modeling_mmar import MMARInpaintPipeline

    pipe = MMARInpaintPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    images, labels = heldout_digit_images(args.count)
    started = time.perf_counter()
    rates, results = evaluate_inpainting(pipe, images, labels, seed=args.seed)
    rates["seconds"] = round(time.perf_counter() - started, 1)
    rates["torch_threads"] = torch.get_num_threads()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inpainting.json").write_text(json.dumps(rates, indent=2) + "\n")
    plot_inpainting_grid(results, labels, str(out / "inpainting.png"))
    print(json.dumps(rates, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
