"""`mmar train`: run configs and overrides, the Trainer run (loss parts, evaluation, saved folder), resumption,
and options (runs on more than one process: test_distributed.py)."""

import json
import math
import os

import pytest
import torch

from training.run_config import CONFIG_DIR, load_config
from training.train import train

TINY = CONFIG_DIR / "digits_tiny.yaml"


def tiny(*overrides):
    return load_config(TINY, list(overrides))


def train_logs(history):
    return [entry for entry in history if "loss" in entry and "train_runtime" not in entry]


# ---------------------------------------------------------------- configs
def test_shipped_configs_are_valid():
    for path in sorted(CONFIG_DIR.glob("digits*.yaml")):  # the run configs of `mmar train` / `mmar demo`
        config = load_config(path)
        assert config["data"]["dataset"] == "digits", path


def test_overrides_are_parsed_as_yaml_values():
    config = tiny("training.learning_rate=3e-4", "model.text_config.hidden_size=48", "time_budget=null",
                  "collator.caption_dropout=0", "training.output_dir=somewhere", "training.save_strategy=no")
    assert config["training"]["learning_rate"] == pytest.approx(3e-4)
    assert config["model"]["text_config"]["hidden_size"] == 48
    assert config["time_budget"] is None and config["collator"]["caption_dropout"] == 0
    assert config["training"]["save_strategy"] == "no"  # YAML 1.2: only true/false are booleans
    assert load_config(CONFIG_DIR / "digits.yaml")["training"]["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.max_stepz=3", r"training\.max_stepz"),
        ("modle.head_width=3", r"Unknown section.*modle"),
        ("model.head_widht=3", r"model\.head_widht"),
        ("collator.mask_ratio=0.5", r"collator\.mask_ratio\b.*known collator keys"),
        ("data.image_colum=img", r"data\.image_colum"),
        ("training.max_steps", r"must look like section\.key=value"),
        ("training.max_steps.x=3", r"training\.max_steps is a value, not a section"),
        ("time_budget=-5", r"time_budget must be a positive number"),
        ("pretrained_learning_rate=-1e-4", r"pretrained_learning_rate must be a positive finite number"),
        ("pretrained_learning_rate=.nan", r"pretrained_learning_rate must be a positive finite number"),
        ("pretrained_learning_rate=true", r"pretrained_learning_rate must be a positive finite number"),
        ("evaluation.wall_time_target=0", r"evaluation\.wall_time_target must be a positive number"),
        ("evaluation.wall_time_target=.inf", r"evaluation\.wall_time_target must be a positive number"),
    ],
)
def test_bad_config_keys_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        tiny(override)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_bad_model_values_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="patch_size"):
        train(tiny("model.patch_size=3"), output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "config.json").exists()


# ---------------------------------------------------------------- a run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    run = train(tiny(), output_dir=str(out))
    return run, out


def test_run_logs_text_and_image_losses_and_evaluates(tiny_run):
    run, out = tiny_run
    history = run.trainer.state.log_history
    logs = train_logs(history)
    assert [e["step"] for e in logs] == list(range(1, 7))  # logging_steps=1, max_steps=6
    for entry in logs:
        assert math.isfinite(entry["text_loss"]) and math.isfinite(entry["image_loss"])
        # one micro-batch per log: the total is exactly text + image_loss_weight (1.0) * image
        assert entry["loss"] == pytest.approx(entry["text_loss"] + entry["image_loss"], rel=1e-4)
    evals = [e for e in history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [3, 6]
    for entry in evals:
        assert entry["eval_loss"] == pytest.approx(entry["eval_text_loss"] + entry["eval_image_loss"], rel=0.05)
    assert json.loads((out / "log_history.json").read_text()) == history
    assert (out / "loss.png").stat().st_size > 1000


def test_saved_folder_loads_with_auto_classes(tiny_run):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from diffusers import DPMSolverMultistepScheduler

    run, out = tiny_run
    model = AutoModelForImageTextToText.from_pretrained(out)
    for name, tensor in run.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, msg=name)
    processor = AutoProcessor.from_pretrained(out)
    assert processor.num_image_tokens == model.config.tokens_per_image
    assert processor.tokenizer.get_vocab() == run.tokenizer.get_vocab()
    # the default sampler (DPM-Solver++ on the model's own diffusion process), which the pipeline then uses
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == \
        "DPMSolverMultistepScheduler"
    scheduler = DPMSolverMultistepScheduler.from_pretrained(out, subfolder="scheduler")
    assert scheduler.config.prediction_type == model.config.prediction_type
    assert scheduler.config.beta_schedule == model.config.noise_schedule


def test_saved_folder_loads_as_a_pipeline(tiny_run):
    import modeling_mmar

    if not hasattr(modeling_mmar, "MMARPipeline"):
        pytest.skip("MMARPipeline is not exported yet")
    _, out = tiny_run
    pipe = modeling_mmar.MMARPipeline.from_pretrained(out)
    images = pipe(["a handwritten seven"], num_inference_steps=2, num_iter=2, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0)).images
    assert images[0].size == (8, 8)


def test_resume_continues_the_same_loss_curve(tmp_path):
    overrides = ["training.eval_strategy=no", "training.save_strategy=steps", "training.save_steps=3"]
    straight = train(tiny(*overrides), output_dir=str(tmp_path / "straight"))
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert checkpoint.is_dir()
    resumed = train(tiny(*overrides), output_dir=str(tmp_path / "resumed"), resume_from_checkpoint=str(checkpoint))
    expected = {e["step"]: e for e in train_logs(straight.trainer.state.log_history)}
    got = {e["step"]: e for e in train_logs(resumed.trainer.state.log_history)}
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # the checkpoint's history, then the new steps
    for step in (4, 5, 6):
        for key in ("loss", "text_loss", "image_loss", "learning_rate"):
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)


def test_gradient_checkpointing_and_bf16_options(tmp_path):
    run = train(tiny("training.max_steps=2", "training.eval_strategy=no", "training.activation_checkpointing=true",
                     "training.bf16=true"), output_dir=str(tmp_path / "out"))
    assert run.model.model.language_model.is_gradient_checkpointing
    assert all(math.isfinite(e["loss"]) for e in train_logs(run.trainer.state.log_history))


def test_weights_from_the_llm_train_at_the_pretrained_learning_rate(tmp_path):
    run = train(tiny("training.max_steps=3", "training.eval_strategy=no", "training.warmup_steps=0",
                     "pretrained_learning_rate=1e-12"), output_dir=str(tmp_path / "out"))
    learning_rate = run.trainer.args.learning_rate
    rates = {id(p): group["initial_lr"] for group in run.trainer.optimizer.param_groups for p in group["params"]}
    trainable = {name: p for name, p in run.model.named_parameters() if p.requires_grad}
    assert set(rates) == {id(p) for p in trainable.values()}  # every trainable weight, once
    groups = [(group["lr"], len(group["params"])) for group in run.trainer.optimizer.param_groups]
    assert run.trainer.create_optimizer() is run.trainer.optimizer  # asked again: the same optimizer, split once
    assert [(group["lr"], len(group["params"])) for group in run.trainer.optimizer.param_groups] == groups
    for name, parameter in trainable.items():
        new_part = name.startswith(("diffusion_head.", "model.image_embedder."))
        assert rates[id(parameter)] == (learning_rate if new_part else 1e-12), name
    # The LLM's weights barely move, the head's do.
    state = run.trainer.optimizer.state
    llm_weight = run.model.model.language_model.layers[0].mlp.up_proj.weight
    head_weight = run.model.diffusion_head.condition_proj.weight
    assert state[llm_weight]["step"] == state[head_weight]["step"] == 3
    initial = train(tiny("training.max_steps=0", "training.eval_strategy=no"), output_dir=str(tmp_path / "init")).model
    assert torch.allclose(llm_weight, initial.model.language_model.layers[0].mlp.up_proj.weight, atol=1e-9)
    assert not torch.allclose(head_weight, initial.diffusion_head.condition_proj.weight, atol=1e-4)


def test_mmar_train_command_with_a_time_budget(tmp_path, capsys):
    from training.cli import main as mmar

    out = tmp_path / "budget"
    assert mmar(["train", "--config", str(TINY), "--output-dir", str(out), "time_budget=0.001",
                 "training.eval_strategy=no"]) == 0
    logs = train_logs(json.loads((out / "log_history.json").read_text()))
    assert [e["step"] for e in logs] == [1]  # stopped cleanly after the first step, and saved
    assert (out / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "Training stopped by the time budget (0.001 s): trained 1 of 6 planned steps." in printed
    assert f"Saved model, processor and scheduler to {out}" in printed


def test_saved_model_folder_holds_no_pickles_and_is_readable_by_others(tiny_run):
    _, out = tiny_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p.name for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert json.loads((out / "training_args.json").read_text())["max_steps"] == 6
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert out.stat().st_mode & 0o777 == 0o777 & ~current_umask()


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_short_run_still_draws_its_loss_curve(tmp_path):
    from training.train import build_training_arguments

    args = build_training_arguments({"max_steps": 20, "logging_steps": 50}, output_dir=str(tmp_path))
    assert args.logging_steps == 1  # 20 points instead of none
    assert build_training_arguments({"max_steps": 1000, "logging_steps": 50}, str(tmp_path)).logging_steps == 50


def test_resume_picks_the_newest_complete_checkpoint(tmp_path, capsys):
    overrides = ["training.eval_strategy=no", "training.save_strategy=steps", "training.save_steps=2"]
    out = tmp_path / "run"
    straight = train(tiny(*overrides), output_dir=str(out))
    (out / "checkpoint-6" / "trainer_state.json").unlink()  # killed while saving its last checkpoint
    with pytest.raises(ValueError, match="checkpoint-6.* is incomplete"):
        train(tiny(*overrides), output_dir=str(out), resume_from_checkpoint=str(out / "checkpoint-6"))
    capsys.readouterr()
    resumed = train(tiny(*overrides), output_dir=str(out), resume_from_checkpoint=True)
    printed = capsys.readouterr().out
    assert "Skipping incomplete checkpoint-6" in printed and f"Resuming from {out / 'checkpoint-4'}" in printed
    expected = {e["step"]: e["loss"] for e in train_logs(straight.trainer.state.log_history)}
    got = {e["step"]: e["loss"] for e in train_logs(resumed.trainer.state.log_history)}
    assert got == pytest.approx(expected, rel=1e-5)


def test_resume_without_any_complete_checkpoint_says_so(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(ValueError, match="holds no complete checkpoint .*checkpoint-2"):
        train(tiny("training.eval_strategy=no"), output_dir=str(tmp_path), resume_from_checkpoint=True)


def _write_split(folder, digits, indices):
    import numpy as np
    from PIL import Image

    from training.data import DIGIT_WORDS

    folder.mkdir(parents=True)
    images, labels = digits
    lines = []
    for i in indices:
        Image.fromarray(np.uint8(images[i] * 255 / 16)).resize((16, 16)).convert("RGB").save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a scan of a {DIGIT_WORDS[labels[i]]}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines))


@pytest.mark.parametrize("streaming", [False, True])
def test_training_on_an_image_folder(tmp_path, digits, streaming):
    """RGB 16x16 images with captions in metadata.jsonl; the processor brings them to the model's 8x8 grayscale."""
    _write_split(tmp_path / "data" / "train", digits, range(0, 24))
    _write_split(tmp_path / "data" / "test", digits, range(24, 32))
    run = train(tiny(f"data.dataset={tmp_path / 'data'}", "data.caption_column=text", "data.eval_split=test",
                     f"data.streaming={str(streaming).lower()}", "training.max_steps=2", "training.eval_steps=2"),
                output_dir=str(tmp_path / "out"))
    logs = train_logs(run.trainer.state.log_history)
    assert [e["step"] for e in logs] == [1, 2] and all(math.isfinite(e["loss"]) for e in logs)
    assert any("eval_loss" in e for e in run.trainer.state.log_history)
    assert "scan" in run.tokenizer.get_vocab()  # the tokenizer was built from this dataset's captions


def test_streamed_dataset_needs_an_eval_split(tmp_path, digits):
    _write_split(tmp_path / "data" / "train", digits, range(0, 8))
    with pytest.raises(ValueError, match="eval_split"):
        train(tiny(f"data.dataset={tmp_path / 'data'}", "data.streaming=true"), output_dir=str(tmp_path / "out"))


def test_bad_datasets_fail_by_name_before_any_output(tmp_path, digits):
    _write_split(tmp_path / "data" / "train", digits, range(0, 8))
    (tmp_path / "data" / "train" / "3.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"Unreadable image .*3\.png"):
        train(tiny(f"data.dataset={tmp_path / 'data'}"), output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"no caption column 'caption'.*'text'"):
        train(tiny(f"data.dataset={tmp_path / 'data'}", "data.caption_column=caption"),
              output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
