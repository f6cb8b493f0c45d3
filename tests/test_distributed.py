"""Training on more than one process: `accelerate launch` with the shipped configs (DDP, FSDP2, DeepSpeed ZeRO-2 and
ZeRO-3), 2 CPU processes talking over gloo, trains what one process trains over the same global batch.

2 processes x batch b against 1 process x batch 2b, same data order (tiny digits run, 6 steps): the loss curve and
its text / image parts agree to LOSS_TOLERANCE and the final weights to WEIGHT_TOLERANCE (measured: <= 2e-7 for
every engine; what is left is float32 summation order). The steps hold processes with only understanding rows (no
diffusion loss), only generation rows (no text loss) and both. Checkpoints resume across world sizes (2 -> 1 and
1 -> 2) and continue the same curve; FSDP checkpoints are checked sharded and as full state dicts.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.distributed import (ENGINE_CHECKPOINT_WEIGHTS, check_launch, check_resume, choose_fsdp_units,
                                  every_parameter_gets_a_gradient, global_batch_loss, loss_part_counts)
from training.row_noise import ROW_SEEDS, RowSeedCollator, row_generators
from training.run_config import CONFIG_DIR, load_config
from training.train import build_run, train

ROOT = Path(__file__).resolve().parents[1]
TINY = CONFIG_DIR / "digits_tiny.yaml"
ACCELERATE = CONFIG_DIR / "accelerate"
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5
STEPS = ["training.eval_strategy=no", "training.max_steps=6", "training.save_strategy=steps", "training.save_steps=3"]
# FSDP is checked on the hazards it meets in MMAR: a frozen VAE inside the model and an LM head tied to the embeddings.
VAE_AND_TIED = ["model.vae_config={in_channels: 1, out_channels: 1, down_block_types: [DownEncoderBlock2D, "
                "DownEncoderBlock2D], up_block_types: [UpDecoderBlock2D, UpDecoderBlock2D], block_out_channels: "
                "[8, 16], layers_per_block: 1, latent_channels: 4, norm_num_groups: 4, sample_size: 8}",
                "model.patch_size=1", "model.tie_word_embeddings=true"]
needs_deepspeed = pytest.mark.skipif(
    __import__("importlib").util.find_spec("deepspeed") is None, reason="deepspeed is not installed (pip install -e '.[dev]')")


def tiny(*overrides):
    return load_config(TINY, list(overrides))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config_file: str, out: Path, *overrides, num_processes: int = 2, launch_args=()) -> dict:
    """`accelerate launch --config_file training/configs/accelerate/<config_file> ... mmar train` as a user runs it
    on a machine without GPUs (fp32: --mixed_precision no); returns the run summary of its log history."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / config_file),
               "--num_processes", str(num_processes), "--mixed_precision", "no",
               "--main_process_port", str(free_port()), *launch_args,
               "-m", "training.train", "--config", str(TINY), "--output-dir", str(out), *overrides]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return summary(out)


def history(out: Path) -> list[dict]:
    return json.loads((out / "log_history.json").read_text())


def summary(out: Path) -> dict:
    return next(e for e in history(out) if "train_runtime" in e)


def curve(out: Path, key: str = "loss") -> dict[int, float]:
    return {e["step"]: e[key] for e in history(out) if key in e and "train_runtime" not in e}


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def assert_same_run(out: Path, reference: Path, steps=range(1, 7)):
    """Same loss curve (and parts) at `steps` and the same final weights as the reference run."""
    for key in ("loss", "text_loss", "image_loss"):  # a part is missing at steps whose rows all lack it
        got, want = curve(out, key), curve(reference, key)
        logged = [s for s in steps if s in want]
        assert [s for s in steps if s in got] == logged and (key != "loss" or logged == list(steps)), (key, got)
        assert max(abs(got[s] - want[s]) for s in logged) <= LOSS_TOLERANCE, (key, got, want)
    got, want = weights(out), weights(reference)
    assert sorted(got) == sorted(want)
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= WEIGHT_TOLERANCE


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """1 process x batch 4, 6 steps, checkpoints at 3 and 6: the run every engine is compared with."""
    out = tmp_path_factory.mktemp("one") / "run"
    os.environ["MMAR_NUM_THREADS"] = "1"  # the launched processes run one thread each too
    try:
        run = train(tiny("training.per_device_train_batch_size=4", *STEPS), output_dir=str(out))
        # What each of 2 processes holds at each step: rows 0-1 and 2-3 of the global batch (accelerate gives
        # process r the sampler's batches r, r + 2, ... of size 2, i.e. the 1-process batch cut in two).
        kinds = []
        for _, batch in zip(range(6), run.trainer.get_train_dataloader()):
            kinds.append(tuple(row_kind(batch, rows) for rows in (slice(0, 2), slice(2, 4))))
    finally:
        del os.environ["MMAR_NUM_THREADS"]
    return out, kinds


def row_kind(batch, rows) -> str:
    text = bool((batch["labels"][rows, 1:] != -100).any())
    image = bool(batch["image_mask"][rows].any())
    return "both" if text and image else ("text only" if text else "image only")


@pytest.fixture(scope="module")
def single_process_vae_tied(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-vae") / "run"
    os.environ["MMAR_NUM_THREADS"] = "1"
    try:
        train(tiny("training.per_device_train_batch_size=4", *STEPS, *VAE_AND_TIED), output_dir=str(out))
    finally:
        del os.environ["MMAR_NUM_THREADS"]
    return out


# ---------------------------------------------------------------- the arithmetic, in one process
def _split_gradients(model, batch, halves):
    """Gradients of the global-batch loss computed whole (1 process) and as `halves` (the rows each of 2
    processes holds), averaged as DDP / FSDP / ZeRO average them."""
    every_parameter_gets_a_gradient(model)
    params = [p for p in model.parameters() if p.requires_grad]

    def part(rows, num_processes, totals):
        inputs = {k: v[rows] for k, v in batch.items()}
        outputs = model(**inputs, generator=row_generators(inputs.pop(ROW_SEEDS)))
        loss, _ = global_batch_loss(outputs, inputs, model.config, num_processes, lambda t: totals)
        return torch.autograd.grad(loss, params, allow_unused=False)

    whole = part(slice(None), 1, None)
    totals = sum(torch.stack(loss_part_counts({k: v[rows] for k, v in batch.items()})) for rows in halves)
    split = [part(rows, 2, totals) for rows in halves]
    return whole, [sum(g) / 2 for g in zip(*split)]


@pytest.mark.parametrize("understanding_ratio, halves_hold", [
    (0.5, "both kinds of rows"),
    (1.0, "only understanding rows (no diffusion loss anywhere)"),
    (0.0, "only generation rows (no text loss anywhere)"),
])
def test_two_halves_of_a_batch_give_the_gradient_of_the_whole_batch(understanding_ratio, halves_hold, tmp_path):
    run = build_run(tiny("training.per_device_train_batch_size=8", f"collator.understanding_ratio={understanding_ratio}"),
                    output_dir=str(tmp_path))
    model = run.model.train()
    rows = [run.train_dataset[i] for i in range(8)]
    batch = RowSeedCollator(run.collator)(rows)
    understanding = (batch["labels"][:, 1:] != -100).any(1)
    if understanding_ratio == 0.5:  # one half only understanding rows, the other only generation rows
        order = torch.argsort(understanding.int(), stable=True)
        batch = {k: v[order] for k, v in batch.items()}
        halves = [slice(0, int((~understanding).sum())), slice(int((~understanding).sum()), 8)]
        assert 0 < halves[0].stop < 8
    else:
        halves = [slice(0, 3), slice(3, 8)]  # unequal halves: a mean per process would weigh rows unequally
    whole, split = _split_gradients(model, batch, halves)
    for name, a, b in zip([n for n, p in model.named_parameters() if p.requires_grad], whole, split):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (halves_hold, name, (a - b).abs().max())


def test_every_trainable_parameter_gets_a_gradient_whatever_the_rows(tmp_path):
    from modeling_mmar import MMARForConditionalGeneration

    run = build_run(tiny("collator.understanding_ratio=1.0"), output_dir=str(tmp_path))
    model = MMARForConditionalGeneration(run.model.config).train()  # not yet through MMARTrainer, which adds the hook
    batch = run.collator([run.train_dataset[i] for i in range(4)])  # understanding rows only: no diffusion loss
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model(**batch).loss.backward()
    without_hook = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    assert any(n.startswith("diffusion_head.") for n in trainable - without_hook)  # the hazard is real
    model.zero_grad(set_to_none=True)
    every_parameter_gets_a_gradient(model)
    model(**batch).loss.backward()
    assert {n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None} == trainable
    assert all(model.get_parameter(n).grad.abs().max() == 0 for n in trainable if n.startswith("diffusion_head."))


def test_a_rows_diffusion_noise_does_not_depend_on_its_batch(tmp_path):
    run = build_run(tiny(), output_dir=str(tmp_path))
    rows = [run.train_dataset[i] for i in range(6)]
    together = RowSeedCollator(run.collator)(rows)
    apart = [RowSeedCollator(run.collator)([row]) for row in rows[::-1]][::-1]
    assert together[ROW_SEEDS].tolist() == [b[ROW_SEEDS].item() for b in apart]
    assert torch.equal(together["image_mask"], torch.cat([b["image_mask"] for b in apart]))
    run.collator.set_epoch(1)
    assert RowSeedCollator(run.collator)(rows[:1])[ROW_SEEDS].item() != apart[0][ROW_SEEDS].item()


# ---------------------------------------------------------------- DDP
def test_ddp_two_processes_train_what_one_process_trains(single_process, tmp_path):
    reference, kinds = single_process
    # The steps put processes in every situation: only understanding rows, only generation rows, both.
    assert {"text only", "image only", "both"} <= {kind for step in kinds for kind in step}
    assert any(set(step) == {"text only", "image only"} for step in kinds)
    out = tmp_path / "ddp"
    run = launch("cpu_2proc.yaml", out, "training.per_device_train_batch_size=2", *STEPS)
    assert (run["engine"], run["num_processes"]) == ("DDP", 2)
    assert_same_run(out, reference)
    # One epoch is 360 steps either way: 1437 rows in global batches of 4.
    assert curve(out, "epoch")[6] == pytest.approx(6 / 360)
    assert (out / "scheduler" / "scheduler_config.json").is_file() and (out / "loss.png").is_file()
    assert len(run["peak_memory_mib_per_process"]) == 2

    # Resume across world sizes: the 2-process checkpoint continues in 1 process...
    resumed = tmp_path / "2-to-1"
    os.environ["MMAR_NUM_THREADS"] = "1"
    try:
        train(tiny("training.per_device_train_batch_size=4", *STEPS,
                   f"training.resume_from_checkpoint={out / 'checkpoint-3'}"), output_dir=str(resumed))
    finally:
        del os.environ["MMAR_NUM_THREADS"]
    assert_same_run(resumed, reference, steps=range(4, 7))
    # ...and the 1-process checkpoint continues in 2 processes.
    resumed = tmp_path / "1-to-2"
    launch("cpu_2proc.yaml", resumed, "training.per_device_train_batch_size=2", *STEPS,
           f"training.resume_from_checkpoint={reference / 'checkpoint-3'}")
    assert_same_run(resumed, reference, steps=range(4, 7))


# ---------------------------------------------------------------- FSDP
def test_fsdp_sharded_state_dict_with_a_frozen_vae_and_tied_embeddings(single_process_vae_tied, tmp_path):
    from transformers import AutoModelForImageTextToText
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    reference = single_process_vae_tied
    out = tmp_path / "fsdp"
    run = launch("fsdp.yaml", out, "training.per_device_train_batch_size=2", *STEPS, *VAE_AND_TIED,
                 launch_args=["--fsdp_state_dict_type", "SHARDED_STATE_DICT"])
    assert (run["engine"], run["num_processes"]) == ("FSDP2", 2)
    assert run["sharded_parameters"][0] == run["sharded_parameters"][1]  # every parameter, the frozen VAE's too
    assert_same_run(out, reference)

    # Checkpoints are sharded; the output folder is a plain one: the model's own class and remote code, full
    # weights that from_pretrained loads and that equal the shards training wrote at its last step.
    checkpoint = out / "checkpoint-6"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and not (checkpoint / "model.safetensors").exists()
    config = json.loads((out / "config.json").read_text())
    assert all(not target.startswith("_fsdp") for target in config["auto_map"].values())
    assert not list(out.glob("_fsdp*.py")) and (out / "modeling_mmar.py").is_file()
    dcp_to_torch_save(checkpoint / "pytorch_model_fsdp_0", tmp_path / "shards.pt")
    shards = torch.load(tmp_path / "shards.pt", weights_only=True)
    shards = shards.get("model", shards)
    loaded = AutoModelForImageTextToText.from_pretrained(out)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, shards[name]), name
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight  # still tied

    # The VAE stayed frozen (sharded with the root unit, never updated): its weights are those it started with.
    initial = build_run(tiny(*VAE_AND_TIED), output_dir=str(tmp_path / "initial")).model.state_dict()
    vae = {k: v for k, v in loaded.state_dict().items() if k.startswith("model.vae.")}
    assert vae and all(torch.equal(v, initial[k]) for k, v in vae.items())
    assert not any(p.requires_grad for p in loaded.model.vae.parameters())

    # The sharded checkpoint of 2 processes resumes in 1 (FSDP re-shards it on load) and continues the curve.
    resumed = tmp_path / "2-to-1"
    run = launch("fsdp.yaml", resumed, "training.per_device_train_batch_size=4", *STEPS, *VAE_AND_TIED,
                 f"training.resume_from_checkpoint={out / 'checkpoint-3'}", num_processes=1,
                 launch_args=["--fsdp_state_dict_type", "SHARDED_STATE_DICT"])
    assert run["engine"] == "FSDP2"
    assert_same_run(resumed, reference, steps=range(4, 7))


def test_fsdp_full_state_dict_config_as_shipped(single_process, tmp_path):
    reference, _ = single_process
    out = tmp_path / "fsdp-full"
    run = launch("fsdp.yaml", out, "training.per_device_train_batch_size=2", *STEPS)
    assert run["engine"] == "FSDP2"
    assert_same_run(out, reference)
    checkpoint = out / "checkpoint-3"
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "model.safetensors").is_file()
    resumed = tmp_path / "2-to-1"
    launch("fsdp.yaml", resumed, "training.per_device_train_batch_size=4", *STEPS,
           f"training.resume_from_checkpoint={checkpoint}", num_processes=1)
    assert_same_run(resumed, reference, steps=range(4, 7))


# ---------------------------------------------------------------- DeepSpeed (its CPU accelerator, gloo)
@needs_deepspeed
def test_deepspeed_zero2_two_processes_train_what_one_process_trains(single_process, tmp_path):
    reference, _ = single_process
    out = tmp_path / "zero2"
    run = launch("deepspeed_zero2.yaml", out, "training.per_device_train_batch_size=2", *STEPS)
    assert (run["engine"], run["num_processes"]) == ("DeepSpeed ZeRO-2", 2)
    assert_same_run(out, reference)
    with pytest.raises(ValueError, match=r"written by DeepSpeed on 2 processes.*--num_processes 2"):
        check_resume(out / "checkpoint-3", env={"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "1"})


# ZeRO-3 keeps parameters under 100,000 values whole on every process: a width of 320 makes it partition the
# decoder layer's and the diffusion head's matrices.
WIDE = ["model.text_config.hidden_size=320", "model.text_config.intermediate_size=640", "model.head_width=320"]


@needs_deepspeed
def test_deepspeed_zero3_two_processes_train_what_one_process_trains(tmp_path):
    reference = tmp_path / "one"
    os.environ["MMAR_NUM_THREADS"] = "1"
    try:
        train(tiny("training.per_device_train_batch_size=4", *STEPS, *WIDE), output_dir=str(reference))
    finally:
        del os.environ["MMAR_NUM_THREADS"]
    out = tmp_path / "zero3"
    run = launch("deepspeed_zero3.yaml", out, "training.per_device_train_batch_size=2", *STEPS, *WIDE)
    assert (run["engine"], run["num_processes"]) == ("DeepSpeed ZeRO-3", 2)
    assert run["sharded_parameters"][0] >= 8  # partitioned, not only replicated
    assert_same_run(out, reference)
    with pytest.raises(ValueError, match=r"written by DeepSpeed on 2 processes.*--num_processes 2"):
        check_resume(out / "checkpoint-3", env={"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "1"})


# ---------------------------------------------------------------- configs and bad launches
def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"cpu_2proc": "MULTI_GPU", "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED",
                "deepspeed_zero3": "DEEPSPEED"}
    assert {p.stem for p in ACCELERATE.glob("*.yaml")} == set(expected)
    for name, distributed_type in expected.items():
        config = load_config_from_file(str(ACCELERATE / f"{name}.yaml"))
        assert config.distributed_type.value == distributed_type, name
    assert load_config_from_file(str(ACCELERATE / "cpu_2proc.yaml")).num_processes == 2
    fsdp = load_config_from_file(str(ACCELERATE / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and "fsdp_transformer_layer_cls_to_wrap" not in fsdp
    zero3 = load_config_from_file(str(ACCELERATE / "deepspeed_zero3.yaml")).deepspeed_config
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True


def test_an_engine_that_is_not_installed_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    from training import distributed
    from training.cli import main as mmar

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(distributed, "engine_is_installed", lambda engine: engine != "deepspeed")
    out = tmp_path / "out"
    assert mmar(["train", "--config", str(TINY), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "asks for DEEPSPEED but deepspeed is not installed" in err, err
    assert "pip install deepspeed" in err and not out.exists()


@pytest.mark.parametrize("world_size, batch, ok", [(2, 8, True), (3, 8, False), (4, 6, False), (1, 7, True)])
def test_a_world_size_that_does_not_divide_a_split_batch_is_refused(world_size, batch, ok):
    training = {"per_device_train_batch_size": batch, "accelerator_config": {"split_batches": True}}
    env = {"WORLD_SIZE": str(world_size)}
    if ok:
        check_launch(training, env=env)
    else:
        with pytest.raises(ValueError, match=rf"{world_size} does not divide {batch}"):
            check_launch(training, env=env)
    check_launch({**training, "accelerator_config": {}}, env=env)  # per-device batches: any world size


def test_a_split_batch_refusal_comes_before_training(tmp_path, monkeypatch, capsys):
    from training.cli import main as mmar

    monkeypatch.setenv("WORLD_SIZE", "3")
    out = tmp_path / "out"
    assert mmar(["train", "--config", str(TINY), "--output-dir", str(out),
                 "training.accelerator_config={split_batches: true}"]) == 2
    assert "3 does not divide 8" in capsys.readouterr().err and not out.exists()


def test_forward_per_task_is_refused_on_more_than_one_process(tmp_path, monkeypatch, capsys):
    check_launch({}, env={"WORLD_SIZE": "1"}, forward_per_task=True)
    from training.cli import main as mmar

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    assert mmar(["train", "--config", str(TINY), "--output-dir", str(out), "forward_per_task=true"]) == 2
    assert "forward_per_task runs two forwards per step, which 2 processes" in capsys.readouterr().err
    assert not out.exists()


def test_fsdp_units_are_the_decoder_layers(tmp_path):
    model = build_run(tiny(), output_dir=str(tmp_path)).model
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}
    assert choose_fsdp_units(model, env) == ["Qwen2DecoderLayer"]
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "Qwen2DecoderLayer"
    assert choose_fsdp_units(model, {**env, "FSDP_TRANSFORMER_CLS_TO_WRAP": "Qwen2DecoderLayer"}) is None
    with pytest.raises(ValueError, match="MMARDiffusionHead.*deadlocks"):
        choose_fsdp_units(model, {**env, "FSDP_TRANSFORMER_CLS_TO_WRAP": "Qwen2DecoderLayer,MMARDiffusionHead"})
    assert choose_fsdp_units(model, {"WORLD_SIZE": "2"}) is None  # DDP: nothing to choose


@pytest.mark.parametrize("files, env, message", [
    (["latest", "global_step3/zero_pp_rank_0_mp_rank_00_optim_states.pt",
      "global_step3/zero_pp_rank_1_mp_rank_00_optim_states.pt"], {"WORLD_SIZE": "2"}, "DeepSpeed checkpoint"),
    (["pytorch_model_fsdp_0/.metadata"], {"WORLD_SIZE": "2"}, "FSDP checkpoint"),
    (["pytorch_model_fsdp.bin"], {}, "FSDP checkpoint"),
    (["model.safetensors", "optimizer.pt"], {"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2"}, "without FSDP"),
])
def test_a_checkpoint_resumes_only_under_the_engine_that_wrote_it(tmp_path, files, env, message):
    folder = tmp_path / "checkpoint-3"
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    with pytest.raises(ValueError, match=message):
        check_resume(folder, env=env)
    assert set(ENGINE_CHECKPOINT_WEIGHTS) >= {"pytorch_model_fsdp_0", "pytorch_model_fsdp.bin", "latest"}
