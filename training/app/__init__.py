"""The Gradio app of a saved MMAR model (`mmar serve MODEL_DIR`, and `app.py` of an exported folder / Hub Space).

This folder is self-contained: it imports only installed libraries (gradio, torch, transformers, PIL, numpy) and
its own modules, relatively, so `mmar export` copies it beside the model as `mmar_app/`. The model code comes from
the installed `modeling_mmar` / `processors` packages when present, else from the model folder's remote code.

    from training.app import launch
    launch("mmar-demo/model", port=7860, example_prompts=["a handwritten seven"])
"""

from .engine import ChatTurn, Generated, GenerationSettings, MMARAppEngine, load_components
from .inputs import InputError
from .launch import DEFAULT_CONCURRENCY_LIMIT, DEFAULT_MAX_QUEUE_SIZE, app_title, build_page, launch
from .ui import MMARApp

__all__ = ["ChatTurn", "DEFAULT_CONCURRENCY_LIMIT", "DEFAULT_MAX_QUEUE_SIZE", "Generated", "GenerationSettings",
           "InputError", "MMARApp", "MMARAppEngine", "app_title", "build_page", "launch", "load_components"]
