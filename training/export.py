"""`mmar export MODEL_DIR OUT_DIR [--push-to-hub REPO_ID] [--private]`: a Hub-ready MMAR folder.

The export holds, at its root, the transformers layout (config.json, safetensors weights, sharded above
`--max-shard-size`, generation_config.json, the processor and tokenizer files, the `*_mmar.py` remote code with
`auto_map` entries for AutoConfig / AutoModel / AutoModelForCausalLM / AutoModelForImageTextToText / AutoProcessor),
`scheduler/`, the `MMARPipeline`'s model_index.json (diffusers loads components without a subfolder from the root),
the sample grid and metrics of the run when found, and the model card (README.md). The folder is also a Gradio
Space (training/space.py): `app.py` (the `mmar serve` app), `mmar_app/`, `requirements.txt`, a screenshot, and the
Space's keys in the card's front matter. It is assembled in a hidden temporary folder and moved into place at the
end. `--push-to-hub` (the model repo) and `--push-space` (the same folder as a Gradio Space) check Hub access first:
offline or without a valid token they fail before anything is written, locally or remotely.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.utils import validate_repo_id

from modeling_mmar.input_checks_mmar import shareable_permissions

from .cli import DEFAULT_MAX_SHARD_SIZE, CommandError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class HubAccessError(RuntimeError):
    """Pushing to the Hub is impossible (offline, no token, invalid token, unreachable)."""


# ------------------------------------------------------------------------------------------------ checks
def missing_parts(model_dir: Path) -> list[str]:
    """What an MMAR model folder lacks to be exported (empty when complete)."""
    missing = []
    if not (model_dir / "config.json").is_file():
        missing.append("config.json (the model config)")
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        if any(model_dir.glob("*.bin")):
            missing.append("safetensors weights (only pickle .bin weights found; re-save with safetensors)")
        else:
            missing.append("model.safetensors or model.safetensors.index.json (the weights)")
    if not (model_dir / "processor_config.json").is_file():
        missing.append("processor_config.json (the processor: save it with processor.save_pretrained)")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer.json / tokenizer_config.json (the tokenizer)")
    return missing


def check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise ValueError(f"MODEL_DIR {str(model_dir)!r} is not a folder")
    missing = missing_parts(model_dir)
    if missing:
        raise ValueError(f"Cannot export {str(model_dir)!r}: it is missing " + "; ".join(missing))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "mmar":
        raise ValueError(f"{str(model_dir)!r} does not hold an MMAR model (model_type {config.get('model_type')!r})")


def check_hub_access(repo_id: str, option: str = "--push-to-hub") -> str:
    """Return a usable token for pushing to `repo_id`, or raise HubAccessError before anything is written."""
    try:
        validate_repo_id(repo_id)
    except Exception as error:  # HFValidationError
        raise HubAccessError(f"{option} {repo_id!r} is not a valid repo id (namespace/name): {error}") from error
    if "/" not in repo_id:
        raise HubAccessError(f"{option} {repo_id!r} needs a namespace: use <user or org>/{repo_id}")
    if constants.is_offline_mode():
        raise HubAccessError(
            "Cannot push to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1). Nothing was written; unset "
            "HF_HUB_OFFLINE to push, or export without --push-to-hub."
        )
    token = get_token()
    if not token:
        raise HubAccessError(
            "Cannot push to the Hugging Face Hub: no token found. Nothing was written; log in with `hf auth login` "
            "or set HF_TOKEN (a token with write access)."
        )
    try:
        HfApi(token=token).whoami()
    except Exception as error:  # network errors, 401 for a revoked token, ...
        raise HubAccessError(
            f"Cannot push to the Hugging Face Hub: checking the token failed ({type(error).__name__}: {error}). "
            "Nothing was written."
        ) from error
    return token


def find_run_file(model_dir: Path, name: str) -> Path | None:
    """`name` in the model folder or in the run folder around it (`mmar demo` writes model/ beside metrics.json)."""
    for folder in (model_dir, model_dir.parent):
        if (folder / name).is_file():
            return folder / name
    return None


# ------------------------------------------------------------------------------------------------ export
def load_scheduler(model_dir: Path, model_config):
    """The saved sampler (any diffusers scheduler class, e.g. a DDIM swap), else MMARScheduler of the model config."""
    import diffusers

    from modeling_mmar import MMARScheduler

    scheduler_dir = model_dir / "scheduler"
    if (scheduler_dir / "scheduler_config.json").is_file():
        class_name = json.loads((scheduler_dir / "scheduler_config.json").read_text())["_class_name"]
        scheduler_class = MMARScheduler if class_name == "MMARScheduler" else getattr(diffusers, class_name)
        return scheduler_class.from_pretrained(str(scheduler_dir))
    return MMARScheduler.from_model_config(model_config)


def write_export(model, processor, scheduler, folder: Path, max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> None:
    """Model, processor, scheduler, pipeline index and remote code into `folder` (no card)."""
    from modeling_mmar import MMARPipeline

    model.save_pretrained(str(folder), max_shard_size=max_shard_size)
    processor.save_pretrained(str(folder))
    scheduler.save_pretrained(str(folder / "scheduler"))
    # Only model_index.json: the model and processor already sit at the root, where diffusers finds them.
    MMARPipeline(model=model, processor=processor, scheduler=scheduler).save_config(str(folder))
    write_pipeline_remote_code(folder)


def write_pipeline_remote_code(folder: Path) -> None:
    """Make `folder` a diffusers custom pipeline: `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`
    then loads without this package. diffusers takes the pipeline class from `pipeline_mmar.py` at the root and a
    custom component's class from `<component>/<module>.py`; the component folders `model/` and `processor/` hold
    only that code (the one copy of the weights and processor files stays at the root, where transformers loads
    them and where MMAR's `from_pretrained` finds them for a code-only component folder)."""
    import modeling_mmar
    import processors

    model_code, processor_code = Path(modeling_mmar.__file__).parent, Path(processors.__file__).parent
    shutil.copyfile(model_code / "pipeline_mmar.py", folder / "pipeline_mmar.py")
    for component, source in (("model", model_code), ("processor", processor_code)):
        (folder / component).mkdir(exist_ok=True)
        for file in sorted(source.glob("*_mmar.py")):
            shutil.copyfile(file, folder / component / file.name)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["_class_name"] = ["pipeline_mmar", "MMARPipeline"]
    index["model"] = ["modeling_mmar", index["model"][1]]
    index["processor"] = ["processing_mmar", index["processor"][1]]
    if index["scheduler"][1] == "MMARScheduler":
        shutil.copyfile(model_code / "scheduling_mmar.py", folder / "scheduler" / "scheduling_mmar.py")
        index["scheduler"] = ["scheduling_mmar", "MMARScheduler"]
    index_path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def export_model(
    model_dir,
    out_dir,
    repo_id: str | None = None,
    private: bool = False,
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE,
    metrics=None,
    base_model: str | None = None,
    overwrite: bool = False,
    space_id: str | None = None,
    screenshot=None,
) -> Path:
    """Export the MMAR model saved in `model_dir` to `out_dir` (see the module docstring); push the model repo when
    `repo_id`, the folder as a Gradio Space when `space_id`. `screenshot`: a PNG of the app for the card (default:
    the app on the digits demo model)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_mmar  # noqa: F401  (registers the Auto classes)
    import processors  # noqa: F401
    from hub_cards import render_model_card

    from .serve import training_examples
    from .space import DEFAULT_SCREENSHOT, space_metadata, space_title, write_space_files

    model_dir, out_dir = Path(model_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    token = check_hub_access(repo_id) if repo_id else None  # before anything is written
    space_token = check_hub_access(space_id, "--push-space") if space_id else None
    if screenshot is not None and not Path(screenshot).is_file():
        raise ValueError(f"--screenshot {str(screenshot)!r} does not exist")
    check_model_dir(model_dir)
    if out_dir == model_dir or model_dir in out_dir.parents:
        raise ValueError(f"OUT_DIR {str(out_dir)!r} must not be MODEL_DIR or inside it")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ValueError(f"OUT_DIR {str(out_dir)!r} exists and is not empty (pass --overwrite to replace it)")
    metrics_path = Path(metrics) if metrics is not None else find_run_file(model_dir, "metrics.json")
    if metrics_path is not None and not metrics_path.is_file():
        raise ValueError(f"--metrics {str(metrics_path)!r} does not exist")
    samples_path = find_run_file(model_dir, "samples.png")

    model = AutoModelForImageTextToText.from_pretrained(str(model_dir))
    processor = AutoProcessor.from_pretrained(str(model_dir))
    scheduler = load_scheduler(model_dir, model.config)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        write_export(model, processor, scheduler, partial, max_shard_size)
        if samples_path is not None:
            shutil.copyfile(samples_path, partial / "samples.png")
        if metrics_path is not None:
            shutil.copyfile(metrics_path, partial / "metrics.json")
        prompts, question = training_examples(model_dir, metrics_path)
        shown = write_space_files(partial, prompts, question, Path(screenshot) if screenshot else DEFAULT_SCREENSHOT)
        title = space_title(model_dir if repo_id is None else repo_id)
        render_model_card(partial, metrics=metrics_path, base_model=base_model, repo_id=repo_id,
                          model_id=repo_id or str(out_dir), space_id=space_id, app_screenshot=shown,
                          app_screenshot_is_demo=screenshot is None, space_metadata=space_metadata(title))
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        shareable_permissions(partial)  # mkdtemp made it 0700
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if repo_id:
        push_folder(out_dir, repo_id, private=private, token=token)
    if space_id:
        push_folder(out_dir, space_id, private=private, token=space_token, repo_type="space")
    return out_dir


def push_folder(folder: Path, repo_id: str, private: bool = False, token: str | None = None,
                repo_type: str = "model") -> str:
    """Create (or reuse) the model repo (or Gradio Space) and upload the folder in one commit; return the commit
    URL."""
    api = HfApi(token=token)
    space = {"space_sdk": "gradio"} if repo_type == "space" else {}
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **space)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                               commit_message=f"Upload MMAR {'app' if repo_type == 'space' else 'model'} (mmar export)")
    return str(getattr(commit, "commit_url", commit))


# ------------------------------------------------------------------------------------------------ command line
def run_export_command(args: argparse.Namespace) -> int:
    try:
        out_dir = export_model(args.model_dir, args.out_dir, repo_id=args.push_to_hub, private=args.private,
                               max_shard_size=args.max_shard_size, metrics=args.metrics, base_model=args.base_model,
                               overwrite=args.overwrite, space_id=args.push_space, screenshot=args.screenshot)
    except HubAccessError as error:
        raise CommandError(str(error)) from error
    print(f"Exported {args.model_dir} to {out_dir}")
    if args.push_to_hub:
        print(f"Pushed to https://huggingface.co/{args.push_to_hub}")
    if args.push_space:
        print(f"Pushed the app to https://huggingface.co/spaces/{args.push_space}")
    return 0


__all__ = ["HubAccessError", "check_hub_access", "check_model_dir", "export_model", "missing_parts", "push_folder"]
