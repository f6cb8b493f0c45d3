"""`mmar demo` (tiny config, few steps): every artefact, the printed table, and no complete-looking folder after a
failure."""

import json

import pytest
from PIL import Image

import training.demo as demo
from training.cli import main as mmar
from training.run_config import CONFIG_DIR

TINY = str(CONFIG_DIR / "digits_tiny.yaml")
ARTEFACTS = ("metrics.json", "samples.png", "heldout_predictions.png", "loss.png", "model")


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    parent = tmp_path_factory.mktemp("demo")
    out = parent / "mmar-demo"
    code = mmar(["demo", "--output-dir", str(out), "--config", TINY, "--max-steps", "3"])
    assert code == 0
    return out


def test_demo_writes_every_artefact(demo_output):
    for name in ARTEFACTS:
        assert (demo_output / name).exists(), name
    assert leftovers(demo_output.parent) == []  # the temporary folder was moved into place
    grid = Image.open(demo_output / "samples.png")
    assert grid.width > 200 and grid.height > 400  # 10 rows of digits
    for png in ("heldout_predictions.png", "loss.png"):
        assert Image.open(demo_output / png).width > 200
    model_dir = demo_output / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "model_index.json",
                 "scheduler/scheduler_config.json"):
        assert (model_dir / name).is_file(), name
    auto_map = json.loads((model_dir / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText"} <= set(auto_map)


def test_demo_metrics_are_complete_and_consistent(demo_output):
    metrics = json.loads((demo_output / "metrics.json").read_text())
    for key in ("caption_accuracy", "generated_digit_accuracy", "judge_heldout_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["num_heldout_images"] == 360
    assert metrics["num_generated_images"] == 20  # 10 digits x 2 seeds in the tiny config
    assert sorted(metrics["per_digit_generated_accuracy"]) == sorted(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    # the FD of real digits is far below that of noise; a 3-step model lies in between or near noise
    assert metrics["digit_fd_floor_all_train_vs_heldout"] < 1.0 < 10.0 < metrics["digit_fd_ceiling_noise"]
    # the same-size floor (20 real train digits) is higher: FD grows as samples shrink
    assert metrics["digit_fd_floor_all_train_vs_heldout"] < metrics["digit_fd_floor_train_vs_heldout"]
    assert metrics["digit_fd"] > metrics["digit_fd_floor_train_vs_heldout"]
    assert metrics["train_steps"] == 3 and metrics["total_seconds"] >= metrics["train_seconds"] > 0
    assert metrics["targets"] == {"caption_accuracy": 0.95, "generated_digit_accuracy": 0.9}
    assert set(metrics["targets_met"]) == set(metrics["targets"])
    # does drawing read the caption: the image loss with the true caption, a wrong one and none (same noise)
    losses = [metrics[f"image_loss_{k}_caption"] for k in ("true", "wrong", "no")]
    assert all(0.0 < loss < 10.0 for loss in losses)


def test_image_loss_by_caption_uses_the_same_noise_for_every_caption(demo_output):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.data import load_digit_dataset

    model = AutoModelForImageTextToText.from_pretrained(demo_output / "model").eval()
    processor = AutoProcessor.from_pretrained(demo_output / "model")
    heldout = load_digit_dataset("digits", seed=0)["heldout"]
    first = demo.image_loss_by_caption(model, processor, heldout, batch_size=8, seed=0, num_images=12)
    assert demo.image_loss_by_caption(model, processor, heldout, batch_size=5, seed=0, num_images=12) == \
        pytest.approx(first, rel=1e-5)  # a function of the weights and the images alone, whatever the batching


def test_demo_prints_a_table(tmp_path, capsys):
    metrics = {"caption_accuracy": 0.97, "generated_digit_accuracy": 0.9, "digit_fd": 2.0,
               "digit_fd_floor_train_vs_heldout": 1.6, "digit_fd_floor_all_train_vs_heldout": 0.3,
               "digit_fd_ceiling_noise": 36.0, "judge_heldout_accuracy": 0.99, "num_generated_images": 100,
               "train_steps": 10, "planned_steps": 10, "train_seconds": 5.0, "total_seconds": 9.0}
    table = demo.format_table(metrics)
    assert "all 10 planned steps" in table
    assert "97.0%" in table and "36.00" in table and ">= 95%" in table and "100 noise images" in table
    assert "<= 600 s on 2 CPU cores" in table  # the digits default's target
    metrics.update(image_loss_true_caption=0.3231, image_loss_wrong_caption=0.4874, image_loss_no_caption=0.386)
    assert "0.323/0.487/0.386" in demo.format_table(metrics)
    metrics.update(dataset="mnist")
    assert "<= 1200 s on 2 CPU cores" in demo.format_table(metrics)
    metrics.update(evaluation={"wall_time_target": 3600})  # a config's own, e.g. smollm2-digits.yaml
    assert "<= 3600 s on 2 CPU cores" in demo.format_table(metrics)


def test_failed_demo_leaves_the_previous_output_untouched(demo_output, monkeypatch):
    before = sorted(p.name for p in demo_output.iterdir())
    metrics_before = (demo_output / "metrics.json").read_text()

    def broken_evaluation(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(demo, "evaluate_run", broken_evaluation)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        demo.run_demo(str(demo_output), TINY, max_steps=1)
    assert sorted(p.name for p in demo_output.iterdir()) == before
    assert (demo_output / "metrics.json").read_text() == metrics_before
    assert leftovers(demo_output.parent) == []  # the partial folder is gone


def test_failed_demo_into_a_new_folder_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "evaluate_run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        demo.run_demo(str(tmp_path / "fresh"), TINY, max_steps=1)
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and is not a previous `mmar demo` output"):
        demo.run_demo(str(precious), TINY, max_steps=1)
    assert (precious / "thesis.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_demo_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="max-steps"):
        demo.run_demo(str(tmp_path / "out"), TINY, max_steps=0)
    with pytest.raises(ValueError, match=r"training\.max_stepz"):
        demo.run_demo(str(tmp_path / "out"), TINY, overrides=["training.max_stepz=3"])
    with pytest.raises(ValueError, match=r"data.dataset must be one of \('digits', 'mnist'\)"):
        demo.run_demo(str(tmp_path / "out"), TINY, overrides=["data.dataset=some/other"])
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_an_exported_copy_of_a_demo(demo_output, tmp_path):
    """An export carries the demo's metrics.json, but it is a published model, not a demo's scratch folder."""
    import shutil

    exported = tmp_path / "exported"
    exported.mkdir()
    shutil.copyfile(demo_output / "metrics.json", exported / "metrics.json")
    (exported / "README.md").write_text("model card")
    with pytest.raises(ValueError, match="is not a previous `mmar demo` output"):
        demo.run_demo(str(exported), TINY, max_steps=1)
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "metrics.json"]


def test_demo_output_is_readable_by_others(demo_output):
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert demo_output.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0700
    assert (demo_output / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_time_budget_stop_is_said_with_the_steps_trained(tmp_path, capsys):
    metrics = demo.run_demo(str(tmp_path / "budget"), TINY, time_budget=0.001)
    assert metrics["stopped_by_time_budget"] and metrics["train_steps"] == 1 and metrics["planned_steps"] > 1
    assert f"trained 1 of {metrics['planned_steps']} planned steps" in capsys.readouterr().out
    assert "STOPPED BY THE TIME BUDGET" in demo.format_table(metrics)
