"""The `mmar` command line: fast help, one-line refusals with exit status 2, tracebacks only with --debug."""

import os
import subprocess
import sys
import time

import pytest


def run_mmar(*args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, text=True, env=env,
                            timeout=120, stdin=subprocess.DEVNULL)
    return result, time.monotonic() - start


def test_help_answers_at_once_without_library_noise():
    result, seconds = run_mmar("--help")
    assert result.returncode == 0 and "demo" in result.stdout and "generate" in result.stdout
    assert seconds < 2.0, seconds  # no torch / transformers import before a command runs (generous for CI)
    assert result.stderr == ""


@pytest.mark.parametrize(("args", "named"), [
    (("demo", "--time-budget", "-3"), "--time-budget"),
    (("demo", "--max-steps", "0"), "--max-steps"),
    (("demo", "--config", "no-such.yaml"), "no-such.yaml"),
    (("train", "--config", "no-such.yaml"), "no-such.yaml"),
    (("generate", "--model", "no-such-folder", "a seven"), "no-such-folder"),
    (("generate", "--model", ".", "a seven", "--guidance-scale", "nan"), "--guidance-scale"),
    (("generate", "--model", ".", "a seven", "--upscale", "0"), "--upscale"),
    (("describe", "--model", ".", "no-such.png"), "no-such.png"),
    (("export", "no-such-folder", "out"), "no-such-folder"),
    (("ablate", "--seeds", "0"), "--seeds"),
    (("ablate", "--only", "no-such-variant"), "no-such-variant"),
    (("frobnicate",), "frobnicate"),
])
def test_argument_errors_are_one_line_with_status_2(args, named):
    result, seconds = run_mmar(*args)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert named in last and "Traceback" not in result.stderr
    assert seconds < 2.0, seconds


def test_a_refusal_from_inside_a_command_is_one_line_and_debug_shows_the_traceback(tmp_path):
    args = ("finetune", f"base_model={tmp_path / 'missing'}", f"output_dir={tmp_path / 'out'}")
    result, _ = run_mmar(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("mmar finetune: error:") and "mmar demo" in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error:" in line]) == 1
    debug, _ = run_mmar(*args, env_extra={"MMAR_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr
