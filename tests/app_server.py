"""Running the app in the test process: a free local port, the page launched on it, closed afterwards."""

import contextlib
import socket

from training.app import build_page, launch


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(model_dir=None, engine=None, **options):
    """Yield (url, page) of the app over `model_dir` (as `mmar serve` loads it) or over an `engine` object."""
    port = free_port()
    if engine is None:
        page = launch(model_dir, host="127.0.0.1", port=port, block=False, quiet=True, **options)
    else:
        page = build_page(engine, **options)
        page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", page
    finally:
        page.close()


def tiny_model_folder(folder):
    """A random tiny MMAR model + processor saved as `mmar train` saves them (fast; its outputs mean nothing)."""
    from test_pipeline import build_pipeline

    pipe = build_pipeline()
    pipe.model.save_pretrained(folder)
    pipe.processor.save_pretrained(folder)
    return folder
