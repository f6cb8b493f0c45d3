"""Start the app over a saved MMAR folder: `mmar serve MODEL_DIR` and an exported folder's `app.py` both call
`launch`. The model is loaded once, before the server starts; requests then queue for it."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .engine import MMARAppEngine
from .ui import MMARApp

DEFAULT_CONCURRENCY_LIMIT = 2  # requests that use the model at once; the rest wait in the queue, in order
DEFAULT_MAX_QUEUE_SIZE = 32  # waiting requests beyond this are refused with "queue is full" instead of piling up


def app_title(model_dir) -> str:
    folder = Path(model_dir).resolve()
    name = folder.parent.name if folder.name == "model" else folder.name  # `mmar demo` writes <run>/model
    return f"MMAR · {name}"


def build_page(engine: MMARAppEngine, example_prompts=(), default_question: str | None = None,
               title: str = "MMAR", concurrency_limit: int = DEFAULT_CONCURRENCY_LIMIT,
               max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE) -> gr.Blocks:
    """The page over an engine, with its queue set up (not yet launched)."""
    app = MMARApp(engine, example_prompts=example_prompts, title=title, concurrency_limit=concurrency_limit,
                  default_question=default_question or "What is in this image?")
    page = app.build()
    page.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    return page


def launch(model_dir, host: str | None = None, port: int | None = None, example_prompts=(),
           default_question: str | None = None, concurrency_limit: int = DEFAULT_CONCURRENCY_LIMIT,
           max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE, device: str | None = None, block: bool = True,
           quiet: bool = False) -> gr.Blocks:
    """Load the model in `model_dir` and serve the app on host:port (None: gradio's GRADIO_SERVER_NAME /
    GRADIO_SERVER_PORT, else 127.0.0.1:7860, which is what a Hugging Face Space sets). `block=False` returns the
    running page (close it with `page.close()`)."""
    engine = MMARAppEngine.from_folder(model_dir, device=device)
    page = build_page(engine, example_prompts=example_prompts, default_question=default_question,
                      title=app_title(model_dir), concurrency_limit=concurrency_limit, max_queue_size=max_queue_size)
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False, quiet=quiet,
                footer_links=["api"])
    return page


__all__ = ["DEFAULT_CONCURRENCY_LIMIT", "DEFAULT_MAX_QUEUE_SIZE", "app_title", "build_page", "launch"]
