"""CPU thread policy: training uses the cores other processes leave free, unless the user fixed the count."""

import subprocess
import sys
import time

import torch
from transformers import TrainerState, TrainingArguments

from training.threads import CpuThreadsCallback, cores_busy_elsewhere, cpu_has_native_bf16, threads_for


def test_threads_are_the_cores_left_over():
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 1.1) == 1  # another process keeps one core busy
    assert threads_for(2, 7.5) == 1  # never fewer than one
    assert threads_for(16, 3.2) == 13


def test_a_busy_process_is_seen_and_training_steps_aside(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MMAR_NUM_THREADS", raising=False)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert cores_busy_elsewhere(0.5) > 0.6  # one spinning process, whatever else runs
        before = torch.get_num_threads()
        callback = CpuThreadsCallback(verbose=False)
        callback.cores = 2  # as on a 2-core machine
        callback.on_train_begin(TrainingArguments(str(tmp_path), use_cpu=True), TrainerState(), None)
        assert torch.get_num_threads() == 1 and callback.history[-1][1] == 1
    finally:
        busy.kill()
        torch.set_num_threads(before)


def test_a_fixed_thread_count_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    callback = CpuThreadsCallback(verbose=False)
    before = torch.get_num_threads()
    callback.on_train_begin(TrainingArguments(str(tmp_path), use_cpu=True), TrainerState(), None)
    assert not callback.enabled and callback.history == [] and torch.get_num_threads() == before


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert cpu_has_native_bf16(str(with_bf16)) is True
    assert cpu_has_native_bf16(str(without)) is False
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is None


def test_bf16_on_a_cpu_without_it_says_what_it_costs(monkeypatch, capsys, tmp_path):
    from training import train

    monkeypatch.setattr(train.torch.accelerator, "is_available", lambda: False)
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    args = train.build_training_arguments({"bf16": True, "max_steps": 1}, output_dir=str(tmp_path))
    assert args.bf16 and "training.bf16=false trains in fp32" in capsys.readouterr().out
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    train.build_training_arguments({"bf16": True, "max_steps": 1}, output_dir=str(tmp_path))
    assert "without native bf16" not in capsys.readouterr().out
