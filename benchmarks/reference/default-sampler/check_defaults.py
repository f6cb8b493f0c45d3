"""Re-check of image generation's defaults on a trained model: the head sampler (DPM-Solver++ 10 vs MAR's DDPM 100)
and the token cache ("auto" = 8 vs exact full steps), on several seed sets, plus lower-half inpainting with and
without the token cache. Run from the repository root:

    python benchmarks/reference/default-sampler/check_defaults.py --model mmar-demo/model --output results.json
"""

import argparse
import json
import subprocess
import time

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling_mmar  # noqa: F401  (registers MMAR with the Auto classes)
import processors  # noqa: F401
from modeling_mmar import MMARInpaintPipeline, MMARScheduler
from training.data import digit_caption
from training.demo import load_metric
from training.inpainting_eval import evaluate_inpainting, heldout_digit_images

CONFIGURATIONS = {
    "DDPM 100, full steps (MAR's head)": lambda cfg: dict(scheduler=MMARScheduler.from_model_config(cfg),
                                                         num_inference_steps=100, token_cache_interval=None),
    "DPM-Solver++ 50, full steps": lambda cfg: dict(num_inference_steps=50, token_cache_interval=None),
    "DPM-Solver++ 10, full steps": lambda cfg: dict(token_cache_interval=None),
    "defaults (DPM-Solver++ 10, token cache auto = 8)": lambda cfg: dict(),
}


@torch.no_grad()
def generate(model, processor, seeds_per_digit: int, seed_offset: int, batch_size: int, **sampling) -> np.ndarray:
    digits = np.repeat(np.arange(10), seeds_per_digit)
    images = []
    for start in range(0, len(digits), batch_size):
        chunk = digits[start:start + batch_size]
        inputs = processor(text=[digit_caption(int(d)) for d in chunk], generation_mode="image", return_tensors="pt")
        generators = [torch.Generator().manual_seed(seed_offset + i) for i in range(start, start + len(chunk))]
        images.append(model.generate(**inputs, generation_mode="image", num_iter=16, guidance_scale=3.0,
                                     generator=generators, output_type="pt", show_progress=False, **sampling))
    return torch.cat(images).float().mean(dim=1).numpy(), digits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--seeds-per-digit", type=int, default=30)
    parser.add_argument("--seed-sets", type=int, default=3)
    parser.add_argument("--inpainting-count", type=int, default=360)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    accuracy, fd = load_metric("generated_digit_accuracy"), load_metric("digit_fd")
    results = {"load_at_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
               "images_per_seed_set": 10 * args.seeds_per_digit, "generation": {}, "inpainting": {}}
    for name, make in CONFIGURATIONS.items():
        rows = []
        for seed_set in tqdm(range(args.seed_sets), desc=name):
            start = time.perf_counter()
            images, digits = generate(model, processor, args.seeds_per_digit, 10_000 * seed_set, 50,
                                      **make(model.config))
            seconds = time.perf_counter() - start
            rows.append({"seed_set": seed_set, "seconds": seconds,
                         "generated_digit_accuracy": accuracy.compute(predictions=images, references=digits.tolist(),
                                                                      judge_seed=0)["generated_digit_accuracy"],
                         "digit_fd": fd.compute(predictions=images, judge_seed=0)["digit_fd"]})
            print(name, rows[-1], flush=True)
        results["generation"][name] = rows
    pipe = MMARInpaintPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    images, labels = heldout_digit_images(args.inpainting_count)
    for name, sampling in {"token cache off": dict(token_cache_interval=None), "defaults (token cache auto)": {}}.items():
        start = time.perf_counter()
        rates, _ = evaluate_inpainting(pipe, images, labels, **sampling)
        results["inpainting"][name] = {**rates, "seconds": time.perf_counter() - start}
        print(name, results["inpainting"][name], flush=True)
    results["load_at_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
