"""The Gradio Space inside an exported folder: `app.py`, `requirements.txt`, the app's code (`mmar_app/`) and a
screenshot; the Space's keys for the README front matter come from `space_metadata`.

`python app.py` in the folder starts the same app as `mmar serve` (training/app, copied as `mmar_app/`), over the
folder's own weights, with the model code of the installed `mmar-hf` packages when they are importable, else the
folder's remote code. requirements.txt pins the versions the export ran with, so a fresh virtualenv (or a Space)
gets the combination that was tested; torch is pinned without its local build label (`2.13.0`, not `2.13.0+cpu`):
pip then takes the build its index offers for that version (the CPU wheel from this project's wheel folder, the
default CUDA build from PyPI on a GPU Space).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

import hub_cards

APP_PACKAGE = "mmar_app"
APP_FILE = "app.py"
SCREENSHOT_NAME = "app_screenshot.png"
APP_SOURCE = Path(__file__).resolve().parent / "app"
DEFAULT_SCREENSHOT = Path(hub_cards.__file__).resolve().parent / SCREENSHOT_NAME  # the app on the digits demo
# What app.py imports, directly or through the model's remote code (distribution names).
REQUIREMENTS = ("torch", "transformers", "diffusers", "tokenizers", "safetensors", "huggingface_hub", "numpy",
                "pillow", "gradio")

APP_TEMPLATE = '''"""The Gradio app of this MMAR model (the README's front matter makes this folder a HF Space).

    pip install -r requirements.txt
    python app.py            # then open http://127.0.0.1:7860 (GRADIO_SERVER_PORT / GRADIO_SERVER_NAME change it)

The app's code is in mmar_app/ (the same app as `mmar serve`); the model code is the installed mmar-hf package when
it is importable, else the remote code saved in this folder.
"""

from pathlib import Path

from mmar_app import launch

# The model's own training captions (read from its training run by `mmar export`), offered as example prompts.
EXAMPLE_PROMPTS = {prompts!r}
DEFAULT_QUESTION = {question!r}

if __name__ == "__main__":
    launch(Path(__file__).resolve().parent, example_prompts=EXAMPLE_PROMPTS, default_question=DEFAULT_QUESTION)
'''


GRADIO_RANGE = "gradio>=6,<7"  # written when the export runs without gradio (mmar-hf installed without [serve])


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name).split("+")[0]  # 2.13.0+cpu -> 2.13.0: see the module docstring
    except importlib.metadata.PackageNotFoundError:
        return None


def pinned_requirements() -> list[str]:
    """`name==version` of every package the app needs, as installed where the export runs."""
    lines = []
    for name in REQUIREMENTS:
        version = installed_version(name)
        lines.append(f"{name}=={version}" if version else GRADIO_RANGE if name == "gradio" else name)
    return lines


def space_title(model_dir_or_repo_id) -> str:
    """`MMAR · digits-run` for `digits-run/model` (what `mmar demo` writes), `MMAR · name` for `user/name`."""
    parts = [part for part in str(model_dir_or_repo_id).replace("\\", "/").split("/") if part]
    name = parts[-2] if len(parts) > 1 and parts[-1] == "model" else parts[-1] if parts else "model"
    return f"MMAR · {name}"


def space_metadata(title: str) -> dict:
    """The Hugging Face Space keys of the README front matter (sdk_version: the gradio the export ran with)."""
    metadata = {"title": title[:60], "emoji": "🔢", "colorFrom": "indigo", "colorTo": "gray", "sdk": "gradio",
                "sdk_version": installed_version("gradio"), "app_file": APP_FILE, "pinned": False,
                "python_version": f"{sys.version_info.major}.{sys.version_info.minor}"}
    return {key: value for key, value in metadata.items() if value is not None}


def write_space_files(folder: Path, example_prompts=(), default_question: str | None = None,
                      screenshot: Path | None = DEFAULT_SCREENSHOT) -> str | None:
    """Write app.py, requirements.txt and mmar_app/ into `folder`; copy the screenshot (return its file name)."""
    folder = Path(folder)
    target = folder / APP_PACKAGE
    target.mkdir(exist_ok=True)
    for source in sorted(APP_SOURCE.glob("*.py")):
        shutil.copyfile(source, target / source.name)
    (folder / APP_FILE).write_text(APP_TEMPLATE.format(prompts=list(example_prompts), question=default_question),
                                   encoding="utf-8")
    header = ("# The app's packages, pinned to the versions `mmar export` ran (and was tested) with.\n"
              "# torch: pip takes the build its index offers for this version (CPU or CUDA).\n")
    (folder / "requirements.txt").write_text(header + "\n".join(pinned_requirements()) + "\n", encoding="utf-8")
    if screenshot is not None and Path(screenshot).is_file():
        shutil.copyfile(screenshot, folder / SCREENSHOT_NAME)
        return SCREENSHOT_NAME
    return None


__all__ = ["APP_FILE", "APP_PACKAGE", "pinned_requirements", "space_metadata", "space_title", "write_space_files"]
