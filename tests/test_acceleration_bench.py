"""The acceleration benchmark's mechanics (benchmarks/acceleration_bench.py): configurations against the naive loop,
the matched-quality rule, the Pareto front, peak memory, and the report it writes. No timing assertions."""

import json

import torch

from benchmarks.acceleration_bench import (
    DEFAULTS,
    NAIVE,
    LiveTensorMemory,
    is_matched,
    peak_memory_bytes,
    run_acceleration_benchmark,
)
from benchmarks.acceleration_report import pareto_front
from benchmarks.report import write_report
from benchmarks.timing import machine_state


def test_matched_means_fd_within_ten_percent_and_accuracy_within_two_points():
    naive = {"digit_fd": 2.0, "generated_digit_accuracy": 0.90}
    assert is_matched({"digit_fd": 2.2, "generated_digit_accuracy": 0.88}, naive)
    assert not is_matched({"digit_fd": 2.21, "generated_digit_accuracy": 0.95}, naive)
    assert not is_matched({"digit_fd": 1.0, "generated_digit_accuracy": 0.87}, naive)


def test_the_pareto_front_keeps_what_nothing_beats_on_both_axes():
    # (FD, images/s): lower FD and higher speed are better
    points = [(2.0, 1.0), (2.5, 10.0), (3.0, 5.0), (1.9, 0.5), (2.5, 10.0)]
    assert pareto_front(points) == [0, 1, 3, 4]


def test_peak_memory_follows_live_tensors():
    def allocate():
        a = torch.zeros(1000, dtype=torch.float32)  # 4,000 bytes
        b = torch.ones(500, dtype=torch.float32)  # +2,000 live at once
        del a, b
        c = torch.zeros(250, dtype=torch.float32)  # 1,000 after both were freed
        return c.sum()

    assert peak_memory_bytes(allocate) == 6000
    tracker = LiveTensorMemory()
    with tracker:
        kept = torch.zeros(10, dtype=torch.float64)
    assert tracker.live == 80 and kept.shape == (10,)


def test_a_run_compares_configurations_with_the_naive_loop_and_writes_the_report(tmp_path):
    tiny = {"text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "num_key_value_heads": 1}, "head_width": 32, "head_depth": 1}
    settings = {"images": 2, "num_iter": 8, "batch_sizes": [1, 2], "memory": False, "random_model": tiny,
                "configurations": ["DPM-Solver++ 5", "DPM-Solver++ 10 + token cache 4", "DPM-Solver++ 10, num_iter / 4 + GtR 1"]}
    section = run_acceleration_benchmark(settings, repeats=1)
    model = section["models"][0]
    names = [row["configuration"] for row in model["rows"]]
    assert names[0] == NAIVE.name and DEFAULTS.name in names and len(names) == 5
    assert model["rows"][0]["speedup_vs_naive"]["median"] == 1.0
    assert [r["num_iter"] for r in model["rows"]] == [8, 8, 8, 8, 2]  # the last: a quarter of num_iter
    assert model["quality_measured"] is False  # random weights: speed only
    throughput = model["throughput"]
    assert {r["batch_size"] for r in throughput} == {1, 2}
    assert all(r["images_per_s"] > 0 for r in throughput)

    write_report(tmp_path, "test", machine_state(), {"acceleration": section}, loaded=False)
    assert (tmp_path / "sampler_pareto.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "results.md").read_text()
    assert "Sampling accelerations" in markdown and "batch 2" in markdown
    assert json.loads((tmp_path / "results.json").read_text())["sections"]["acceleration"]["models"]
