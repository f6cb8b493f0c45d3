"""`mmar serve` from the command line, and the exported folder as a Hugging Face Space: `mmar export` writes app.py
(the same app), mmar_app/, pinned requirements.txt and the Space's front matter; the card links the Space and shows
a screenshot; and the exported app starts with `python app.py` in a fresh virtualenv that has only the packages of
requirements.txt."""

import filecmp
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest
from app_server import free_port, tiny_model_folder
from conftest import pretend_logged_in_to_the_hub
from gradio_client import Client, handle_file
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from trained_demo import trained_demo_run

import training.export as export
from training.cli import main as mmar
from training.data import first_named_digit
from training.inpainting_eval import heldout_digit_images
from training.judge import get_judge
from training.serve import training_examples
from training.space import APP_SOURCE, pinned_requirements

MODULES = sorted(path.name for path in APP_SOURCE.glob("*.py"))


def run_mmar(*args, timeout=120):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.25)
    raise AssertionError(f"nothing listened on port {port} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A random tiny model in a run folder whose metrics.json says it trained on the digits (as `mmar demo`'s)."""
    run = tmp_path_factory.mktemp("tiny-run")
    tiny_model_folder(run / "model")
    (run / "metrics.json").write_text(json.dumps({"dataset": "digits", "caption_accuracy": 0.5}))
    return run


@pytest.mark.parametrize(("args", "named"), [
    (("serve", "no-such-folder"), "no-such-folder"),
    (("serve", ".", "--port", "0"), "--port"),
    (("serve", ".", "--port", "seventy"), "--port"),
    (("serve", ".", "--concurrency-limit", "0"), "--concurrency-limit"),
    (("serve", "."), "no config.json"),
])
def test_serve_refuses_bad_arguments_in_one_line(args, named, tmp_path):
    result = subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert named in result.stderr.strip().splitlines()[-1]


def test_serve_refuses_a_folder_that_is_not_mmar(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = run_mmar("serve", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "does not hold an MMAR model" in result.stderr


def test_mmar_serve_serves_until_stopped_and_names_a_busy_port(tiny_run):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", str(tiny_run / "model"), "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_for_port(port, server, timeout=240)
        gallery, seeds = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            "a handwritten seven", 2, 3, 3.0, 4, 5, 1.0, api_name="/generate")
        assert seeds == "3, 4" and len(gallery) == 2
        busy = run_mmar("serve", str(tiny_run / "model"), "--port", str(port), timeout=240)
        assert busy.returncode == 2 and "Traceback" not in busy.stderr
        assert f"cannot serve on 127.0.0.1:{port}" in busy.stderr.strip().splitlines()[-1]
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    assert server.returncode in (0, 128 + signal.SIGTERM), output[-2000:]
    assert f"serving it on http://127.0.0.1:{port}" in output


def test_export_writes_the_space_around_the_model(tiny_run, tmp_path):
    out = tmp_path / "export"
    assert mmar(["export", str(tiny_run / "model"), str(out)]) == 0

    assert sorted(path.name for path in (out / "mmar_app").glob("*.py")) == MODULES
    assert all(filecmp.cmp(APP_SOURCE / name, out / "mmar_app" / name, shallow=False) for name in MODULES)
    app = (out / "app.py").read_text()
    prompts, question = training_examples(tiny_run / "model")
    assert f"EXAMPLE_PROMPTS = {prompts!r}" in app and f"DEFAULT_QUESTION = {question!r}" in app
    assert "from mmar_app import launch" in app
    requirements = [line for line in (out / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert requirements == pinned_requirements()
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", requirements[0])  # no local build label such as +cpu
    assert any(re.fullmatch(r"gradio==6\.\d+\.\d+", line) for line in requirements)

    card = ModelCard.load(out / "README.md")
    assert (card.data.sdk, card.data.app_file) == ("gradio", "app.py")
    assert card.data.sdk_version == requirements[-1].split("==")[1] and card.data.title
    assert card.data.license == "apache-2.0" and "mmar" in card.data.tags  # still the model's card
    assert "![The app's Generate tab (on the digits demo model)](app_screenshot.png)" in card.text
    assert Image.open(out / "app_screenshot.png").size[0] >= 1000
    assert "python app.py" in card.text and "huggingface.co/spaces" not in card.text  # no Space pushed: no link
    assert len(re.findall(r"```python\n", card.text)) == 3  # the usage snippets are unchanged


def test_export_pushes_the_space_and_the_card_links_it(tiny_run, tmp_path, monkeypatch):
    calls = []
    pretend_logged_in_to_the_hub(monkeypatch, export, calls)

    def upload_folder(self, folder_path, repo_id, **kwargs):
        calls.append(("upload", repo_id, kwargs["repo_type"], "app.py" in os.listdir(folder_path)))
        return "https://huggingface.co/spaces/someone/mmar-app/commit/0"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    screenshot = tmp_path / "mine.png"
    Image.new("RGB", (640, 400), "white").save(screenshot)
    out = export.export_model(tiny_run / "model", tmp_path / "out", space_id="someone/mmar-app",
                              screenshot=screenshot)

    assert calls == [("create", "someone/mmar-app", {"repo_type": "space", "private": False, "exist_ok": True,
                                                    "space_sdk": "gradio"}),
                     ("upload", "someone/mmar-app", "space", True)]
    card = (out / "README.md").read_text()
    assert "(https://huggingface.co/spaces/someone/mmar-app)" in card
    assert "![A screenshot of the app](app_screenshot.png)" in card and "digits demo model" not in card
    assert filecmp.cmp(screenshot, out / "app_screenshot.png", shallow=False)
    with pytest.raises(export.HubAccessError, match="--push-space"):
        export.export_model(tiny_run / "model", tmp_path / "out2", space_id="no-namespace")


def test_the_exported_app_starts_in_a_fresh_virtualenv(tmp_path_factory, tmp_path):
    """Only requirements.txt is installed (pip as configured on the machine: torch==X takes its build for X)."""
    model_dir = trained_demo_run(tmp_path_factory) / "model"
    out = tmp_path / "space"
    assert mmar(["export", str(model_dir), str(out)]) == 0
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    python = environment / "bin" / "python"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "VIRTUAL_ENV", "PYTEST", "GRADIO"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1",
               HF_HOME=str(tmp_path / "hf"), PATH=f"{environment / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-compile", "-r",
                              str(out / "requirements.txt")], env=env, capture_output=True, text=True, timeout=1200,
                             stdin=subprocess.DEVNULL)
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print([u.find_spec(n) is None for n in "
                            "('training', 'processors', 'hub_cards')])"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "[True, True, True]", probe  # mmar-hf is not installed there

    port = free_port()
    server = subprocess.Popen([str(python), "app.py"], cwd=out, env={**env, "GRADIO_SERVER_PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, server, timeout=300)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        gallery, _ = client.predict("a handwritten seven", 4, 0, 3.0, 16, 50, 1.0, api_name="/generate")
        digits = np.stack([np.asarray(Image.open(item["image"]).convert("L"), dtype=np.float64) / 255 for item in
                           gallery])
        assert (get_judge(0).predict(digits) == 7).sum() >= 3
        images, labels = heldout_digit_images()
        seven = images[int(np.flatnonzero(labels == 7)[0])]
        seven.resize((64, 64), Image.Resampling.NEAREST).save(tmp_path / "seven.png")
        image = handle_file(str(tmp_path / "seven.png"))
        messages = client.predict({"background": image, "layers": [], "composite": image}, "What digit is this?",
                                  8, False, api_name="/describe")
        assert first_named_digit(messages[-1]["content"][0]["text"]) == 7
    finally:
        server.terminate()
        log = server.communicate(timeout=60)[0]
    assert "Running on local URL" in log and "Traceback" not in log, log[-3000:]
