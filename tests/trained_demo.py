"""One shortened `mmar demo` run shared by every test module that needs a trained model (the end-to-end checks, the
app): trained once per test session, also under pytest-xdist, where a file lock in the session's shared temporary
folder lets the first worker train while the others wait for it.

For quick local reruns, MMAR_TEST_DEMO_RUN=FOLDER reuses a finished run of exactly this shortened demo (its
metrics.json must record the same overrides); the suite itself always trains its own.
"""

import json
import os
from pathlib import Path

from filelock import FileLock

from training.cli import main as mmar

# The demo's model and mask policy with half of its steps: under two minutes on 2 CPU cores.
SHORT_TRAINING = ["training.max_steps=500", "training.warmup_steps=50", "training.eval_strategy=no",
                  "mask_schedule.stage2_start_step=250", "evaluation.seeds_per_digit=1", "training.disable_tqdm=true"]


def trained_demo_run(tmp_path_factory):
    """The run folder (`metrics.json`, `model/`, ...) of the session's shortened demo."""
    reused = os.environ.get("MMAR_TEST_DEMO_RUN")
    if reused:
        metrics = json.loads((Path(reused) / "metrics.json").read_text())
        assert metrics["mmar_demo"]["overrides"] == SHORT_TRAINING, f"{reused} is not this shortened demo's run"
        return Path(reused)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker has its own basetemp inside the session's folder
        root = root.parent
    run = root / "trained-demo" / "mmar-demo"
    with FileLock(str(root / "trained-demo.lock")):
        if not (run / "metrics.json").is_file():
            assert mmar(["demo", "--output-dir", str(run), "--time-budget", "900", *SHORT_TRAINING]) == 0
    return run
