"""`mmar generate` (text -> image) and `mmar describe` (image -> text) with a saved MMAR model folder.

    mmar generate --model DIR "a handwritten seven" --seed 0 -o seven.png
    mmar describe --model DIR seven.png --question "What digit is this?"

DIR is what `save_pretrained` wrote for the model and the processor (a `mmar demo` / `mmar train` output folder,
optionally with a `scheduler/` subfolder), or a saved MMARPipeline (a folder with `model_index.json`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from .cli import CommandError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_pipeline(model_dir: str, device: str | None = None, dtype: str = "float32", trust_remote_code: bool = False):
    """An MMARPipeline from a pipeline folder or from a model + processor folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_mmar
    import processors  # noqa: F401  (registers the Auto classes)
    from modeling_mmar import MMARPipeline
    from training.export import load_scheduler

    folder = Path(model_dir)
    if not folder.is_dir():
        raise CommandError(f"--model {model_dir!r} is not a folder holding a saved MMAR model")
    if (folder / "model_index.json").is_file():
        pipe = MMARPipeline.from_pretrained(folder, dtype=DTYPES[dtype])
    else:
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=DTYPES[dtype],
                                                            trust_remote_code=trust_remote_code)
        if not isinstance(model, modeling_mmar.MMARForConditionalGeneration) and not trust_remote_code:
            raise CommandError(f"--model {model_dir} does not hold an MMAR model (got {type(model).__name__})")
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
        scheduler = load_scheduler(folder, model.config)  # the saved one, else the default sampler
        pipe = MMARPipeline(model=model, processor=processor, scheduler=scheduler)
    pipe.model.eval()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return pipe.to(device)


def output_paths(output: str, count: int) -> list[Path]:
    """`seven.png` for one image; `seven-0.png`, `seven-1.png`, ... for several."""
    path = Path(output)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix or '.png'}") for i in range(count)]


def run_generate(args: argparse.Namespace) -> int:
    from diffusers import DDIMScheduler

    from modeling_mmar import MMARScheduler

    pipe = load_pipeline(args.model, args.device, args.dtype, args.trust_remote_code)
    if args.scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    elif args.scheduler == "mmar":
        pipe.scheduler = MMARScheduler.from_model_config(pipe.model.config)
    if args.temperature != 1.0 and not isinstance(pipe.scheduler, MMARScheduler):
        raise CommandError(f"--temperature {args.temperature} scales the noise of MAR's DDPM sampler; the "
                           f"{type(pipe.scheduler).__name__} sampler injects none: add --scheduler mmar")
    count = len(args.prompt) * args.num_images
    # One generator per image, seeded seed, seed+1, ...: every image can be reproduced on its own.
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(count)]
    pipe.set_progress_bar_config(disable=args.quiet)
    images = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_images_per_prompt=args.num_images,
        num_iter=args.num_iter,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        guidance_schedule=args.guidance_schedule,
        temperature=args.temperature,
        generator=generators,
        output_type="pil",
    ).images
    for image, path in zip(images, output_paths(args.output, count)):
        if args.upscale > 1:  # tiny digits are easier to look at with big, sharp pixels
            image = image.resize((image.width * args.upscale, image.height * args.upscale), resample=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        print(path)
    return 0


def run_describe(args: argparse.Namespace) -> int:
    from PIL import Image

    pipe = load_pipeline(args.model, args.device, args.dtype, args.trust_remote_code)
    model, processor = pipe.model, pipe.processor
    images = []
    for path in args.image:
        if not os.path.isfile(path):
            raise CommandError(f"image {path!r} does not exist")
        with Image.open(path) as image:
            images.append(image.copy())
    prompts = [f"{processor.image_token}{args.question}"] * len(images)
    inputs = processor(images=images, text=prompts, padding=True, padding_side="left", return_tensors="pt")
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    answers = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    for path, answer in zip(args.image, answers):
        print(f"{path}: {answer.strip()}" if len(images) > 1 else answer.strip())
    return 0
