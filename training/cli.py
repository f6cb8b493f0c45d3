"""The `mmar` command line: `mmar demo | train | train-vae | finetune | generate | describe | export | serve`.

Arguments are parsed with the standard library only, so `mmar --help` and argument errors answer at once; each
sub-command imports torch, transformers and the rest when it runs. A refusal is one line on stderr naming the
problem, with exit status 2 (argparse's convention); `--debug` (or MMAR_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_RUN_CONFIG = CONFIG_DIR / "digits.yaml"
DEFAULT_FINETUNE_CONFIG = CONFIG_DIR / "lora-digits.yaml"
DEFAULT_VAE_CONFIG = CONFIG_DIR / "vae-mnist.yaml"
DEFAULT_TIME_BUDGET = 480.0
DEFAULT_MAX_SHARD_SIZE = "5GB"
DEFAULT_QUESTION = "What digit is this?"
DEFAULT_UPSCALE = 8  # 8x8 digits become 64x64 PNGs a person can see; --no-upscale keeps the exact size
DTYPE_NAMES = ("bfloat16", "float16", "float32")

# Sub-command -> "module:function" run with the parsed arguments (imported only when that command runs).
COMMANDS = {
    "demo": "training.demo:run_demo_command",
    "train": "training.train:run_train_command",
    "train-vae": "training.vae:run_train_vae_command",
    "finetune": "training.finetune:run_finetune_command",
    "generate": "training.generate_cli:run_generate",
    "describe": "training.generate_cli:run_describe",
    "export": "training.export:run_export_command",
    "serve": "training.serve:run_serve_command",
    "ablate": "benchmarks.ablations:run_command",
}


class CommandError(Exception):
    """A refusal the command line prints as one line (exit status 2)."""


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 1..65535, got {text!r}")
    return value


def _existing_folder(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"folder {text!r} does not exist")
    return text


def _existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist")
    return text


def _add_overrides(parser, example: str) -> None:
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help=f"config overrides, e.g. {example}")


def _add_model_arguments(parser) -> None:
    parser.add_argument("--model", required=True, type=_existing_folder, help="folder of a saved MMAR model + processor (or pipeline)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="load the model code saved in the folder instead of the installed modeling_mmar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmar", description="MMAR-HF: train, fine-tune, sample and export MMAR models")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or MMAR_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="train the tiny default on handwritten digits (CPU) and report what it "
                                            "learned")
    demo.add_argument("--output-dir", default="./mmar-demo", help="where the results go (default ./mmar-demo)")
    demo.add_argument("--max-steps", type=_positive_int, default=None, help="training steps (default: the config's)")
    demo.add_argument("--time-budget", type=_positive_float, default=None,
                      help="stop training cleanly after this many seconds; evaluation still runs "
                           f"(default: the config's time_budget, else {DEFAULT_TIME_BUDGET:.0f})")
    demo.add_argument("--config", default=str(DEFAULT_RUN_CONFIG), type=_existing_file, help="run config YAML (default: digits.yaml)")
    demo.add_argument("--vae", default=None, type=_existing_folder,
                      help="a trained diffusers AutoencoderKL folder (e.g. from `mmar train-vae`) for a config over "
                           "VAE latents; without it such a config trains its VAE first")
    _add_overrides(demo, "model.head_width=256 training.max_steps=4000")

    train = commands.add_parser("train", help="train MMAR with transformers' Trainer from a YAML run config; writes "
                                              "the model folder, loss.png and log_history.json")
    train.add_argument("--config", default=str(DEFAULT_RUN_CONFIG), type=_existing_file,
                       help="run config YAML (default: the embedded digits config)")
    _add_overrides(train, "training.max_steps=200 model.head_width=128")
    train.add_argument("--output-dir", default=None, help="overrides training.output_dir")

    train_vae = commands.add_parser("train-vae", help="train a diffusers AutoencoderKL on real MNIST digits as MMAR's "
                                                      "image tokenizer; writes a folder AutoencoderKL loads")
    train_vae.add_argument("--config", default=str(DEFAULT_VAE_CONFIG), type=_existing_file,
                           help="VAE run config YAML (default: vae-mnist.yaml)")
    _add_overrides(train_vae, "training.max_steps=200 vae.latent_channels=8")
    train_vae.add_argument("--output-dir", default=None, help="overrides training.output_dir")

    finetune = commands.add_parser("finetune", help="LoRA fine-tuning (peft + trl) of a trained MMAR model")
    finetune.add_argument("--config", default=str(DEFAULT_FINETUNE_CONFIG), type=_existing_file,
                          help="fine-tuning YAML (default: lora-digits.yaml)")
    _add_overrides(finetune, "base_model=DIR output_dir=DIR max_steps=200 trainer=trainer lora.r=8")

    generate = commands.add_parser("generate", help="generate images from captions (text -> image)")
    _add_model_arguments(generate)
    generate.add_argument("prompt", nargs="+", help='caption(s), e.g. "a handwritten seven"')
    generate.add_argument("-o", "--output", default="image.png",
                          help="output PNG; several images are written as NAME-0.png, NAME-1.png, ...")
    generate.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    generate.add_argument("--num-images", type=_positive_int, default=1, help="images per caption")
    generate.add_argument("--negative-prompt", default=None)
    generate.add_argument("--num-iter", type=_positive_int, default=None,
                          help="masked-AR steps (default min(64, tokens))")
    generate.add_argument("--num-inference-steps", type=_positive_int, default=None, help="diffusion steps per token")
    generate.add_argument("--guidance-scale", type=_finite_float, default=3.0)
    generate.add_argument("--guidance-schedule", choices=("linear", "constant"), default="linear")
    generate.add_argument("--temperature", type=_finite_float, default=1.0, help="needs --scheduler mmar")
    generate.add_argument("--scheduler", choices=("saved", "mmar", "ddim"), default="saved",
                          help="diffusion sampler of the head: the folder's (saved: DPM-Solver++ for folders trained "
                               "now), MAR's DDPM (mmar, 100 steps, takes --temperature) or DDIM")
    scale = generate.add_mutually_exclusive_group()
    scale.add_argument("--upscale", type=_positive_int, default=DEFAULT_UPSCALE,
                       help=f"enlarge the saved images N times, nearest neighbour (default {DEFAULT_UPSCALE})")
    scale.add_argument("--no-upscale", dest="upscale", action="store_const", const=1,
                       help="save the images at the model's exact size")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")

    describe = commands.add_parser("describe", help="answer a question about image(s) (image -> text)")
    _add_model_arguments(describe)
    describe.add_argument("image", nargs="+", type=_existing_file, help="image file(s)")
    describe.add_argument("--question", default=DEFAULT_QUESTION)
    describe.add_argument("--max-new-tokens", type=_positive_int, default=16)

    export = commands.add_parser("export", help="export a trained MMAR folder for the Hugging Face Hub")
    export.add_argument("model_dir", metavar="MODEL_DIR", type=_existing_folder, help="saved model folder (e.g. ./mmar-demo/model)")
    export.add_argument("out_dir", metavar="OUT_DIR", help="where the export goes")
    export.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also upload to this Hub model repo")
    export.add_argument("--push-space", metavar="SPACE_ID", default=None,
                        help="also upload the folder as a Gradio Space (it holds app.py), linked from the card")
    export.add_argument("--private", action="store_true", help="create the Hub repo (and Space) as private")
    export.add_argument("--screenshot", default=None, type=_existing_file,
                        help="PNG of the app shown on the card (default: the app on the digits demo model)")
    export.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE,
                        help=f"largest safetensors shard (default {DEFAULT_MAX_SHARD_SIZE})")
    export.add_argument("--metrics", default=None,
                        help="metrics.json for the card (default: next to MODEL_DIR or in its parent)")
    export.add_argument("--base-model", default=None, help="Hub id of the backbone, for the card's base_model")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")

    serve = commands.add_parser("serve", help="serve a Gradio app over a saved MMAR folder: generate, describe (chat) "
                                              "and inpaint in the browser")
    serve.add_argument("model_dir", metavar="MODEL_DIR", type=_existing_folder,
                       help="saved model folder (e.g. ./mmar-demo/model, or an export)")
    serve.add_argument("--port", type=_port, default=7860, help="TCP port (default 7860)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; 0.0.0.0 serves other machines too)")
    serve.add_argument("--concurrency-limit", type=_positive_int, default=2,
                       help="requests that use the model at once; the others wait in the queue (default 2)")
    serve.add_argument("--max-queue-size", type=_positive_int, default=32,
                       help="waiting requests beyond this are refused with 'queue is full' (default 32)")
    serve.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available, else cpu)")

    from benchmarks.ablations import add_arguments as add_ablation_arguments  # stdlib imports only: help stays fast

    add_ablation_arguments(commands.add_parser(
        "ablate", help="train and compare the paper's ablations (= python -m benchmarks ablations)"))
    return parser


def _raise_on_sigterm(signum, frame):
    # SystemExit unwinds `finally` blocks and context managers, so partial folders are removed on a SIGTERM too.
    raise SystemExit(128 + signum)


def _quiet_library_noise() -> None:
    import warnings

    # bitsandbytes reports optional CPU kernels it did not find at import; nothing a command here needs.
    warnings.filterwarnings("ignore", message=".*kernels-community.*")
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("kernels").setLevel(logging.ERROR)  # "Skipping publisher trust check" when offline


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("MMAR_DEBUG", "") not in ("", "0")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    _quiet_library_noise()
    module_name, function_name = COMMANDS[args.command].split(":")
    try:
        run = getattr(importlib.import_module(module_name), function_name)
        return int(run(args) or 0)
    except (CommandError, ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
            PermissionError, ImportError) as error:
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"mmar {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m training.cli` runs this file as __main__; the sub-commands raise `training.cli.CommandError`, so run
    # the main of that module (a refusal is then one line with status 2 here too).
    from training.cli import main as package_main

    sys.exit(package_main())
