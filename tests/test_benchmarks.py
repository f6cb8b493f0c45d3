"""The benchmark harness' mechanics (never timing assertions: benchmarks are not timed unit tests).

- the naive MAR loop (the baseline) draws exactly the images of the optimised sampler with the same scheduler;
- side-by-side rounds and ratios; the judge-based quality glue;
- a whole suite at the smallest sizes writes results.json, results.md and the plots;
- the gpu suite refuses clearly without CUDA.
"""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config

from benchmarks.counters import count_calls
from benchmarks.naive_sampler import NaiveCallCounter, naive_generate
from benchmarks.sampler_bench import matched_quality, quality
from benchmarks.subjects import randomize_head
from benchmarks.suites import Suite
from benchmarks.timing import Timing, ratio, side_by_side
from modeling_mmar import MMARForConditionalGeneration, MMARScheduler

PROMPTS = torch.tensor([[1, 10, 11, 12, 4], [0, 1, 13, 14, 4]])  # `<bos> caption <boi>`, the second left-padded
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config()).eval()
    randomize_head(model)  # a zero-initialised head would make every sampler output the same thing
    return model


def generators(n=2):
    return [torch.Generator().manual_seed(seed) for seed in range(n)]


@pytest.mark.parametrize("guidance_scale", [3.0, 1.0])
def test_naive_loop_draws_the_optimised_samplers_images(model, guidance_scale):
    counter = NaiveCallCounter()
    naive = naive_generate(model, PROMPTS, MASK, num_iter=4, guidance_scale=guidance_scale, num_inference_steps=10,
                           generator=generators(), output_type="latent", counter=counter)
    with count_calls(backbone=model.model.language_model, head=model.diffusion_head) as calls:
        optimised = model.generate(PROMPTS, attention_mask=MASK, generation_mode="image", num_iter=4,
                                   guidance_scale=guidance_scale, num_inference_steps=10, generator=generators(),
                                   scheduler=MMARScheduler.from_model_config(model.config), output_type="latent",
                                   token_cache_interval=None,  # the exact steps (the default token cache is not)
                                   show_progress=False)
    torch.testing.assert_close(naive, optimised, atol=1e-5, rtol=1e-5)
    branches = 2 if guidance_scale != 1.0 else 1
    assert counter.backbone_passes == branches * 4  # the whole sequence, per branch, at every masked-AR step
    assert counter.head_calls == branches * 4 * 10
    assert calls["backbone"] == 1 + 4  # the prompt once, then the image span per step
    assert calls["head"] == 4 * 10


def test_naive_loop_images_change_with_the_seed(model):
    first = naive_generate(model, PROMPTS[:1], num_iter=2, num_inference_steps=5, generator=generators(1),
                           output_type="latent")
    other = naive_generate(model, PROMPTS[:1], num_iter=2, num_inference_steps=5,
                           generator=[torch.Generator().manual_seed(7)], output_type="latent")
    assert not torch.allclose(first, other)


def test_side_by_side_runs_every_candidate_each_round_and_pairs_ratios():
    calls = {"a": 0, "b": 0}

    def candidate(name):
        def run():
            calls[name] += 1
        return run

    timings = side_by_side({"a": candidate("a"), "b": candidate("b")}, repeats=3, warmup=1)
    assert calls == {"a": 4, "b": 4}
    assert all(len(t.seconds) == 3 for t in timings.values())
    speedup = ratio(Timing([2.0, 4.0, 6.0]), Timing([1.0, 1.0, 2.0]))
    assert speedup.values == [2.0, 4.0, 3.0] and speedup.median == 3.0
    with pytest.raises(ValueError, match="same side_by_side run"):
        ratio(Timing([1.0]), Timing([1.0, 2.0]))
    with pytest.raises(ValueError, match="repeats"):
        side_by_side({"a": candidate("a")}, repeats=0)


def test_quality_reads_real_digits_and_tells_them_from_noise(digits):
    images, labels = digits
    real = torch.from_numpy(images[:60] / 16.0).float().unsqueeze(1)  # [N, 1, 8, 8] in [0, 1], like generate()
    noise = torch.rand_like(real)
    real_quality, noise_quality = quality(real, labels[:60]), quality(noise, labels[:60])
    assert real_quality["generated_digit_accuracy"] > 0.9
    assert noise_quality["generated_digit_accuracy"] < 0.5
    assert real_quality["digit_fd"] < noise_quality["digit_fd"]
    assert matched_quality(real_quality, real_quality)
    assert not matched_quality(noise_quality, real_quality)


TEST_SUITE = Suite(
    name="test",
    description="the smallest run of every section",
    repeats=1,
    sampler={"images": 1, "num_iter": 2, "guidance_scale": 3.0, "reference_steps": 2, "ddim_steps": [1],
             "dpm_steps": [1], "quality_seeds_per_digit": 1},
    janus={"tokens": [16], "images": 1, "num_iter": [2], "guidance_scale": 3.0, "scheduler": "ddim", "steps": 1},
    num_iter_scaling={"tokens": [16], "images": 1, "num_iter": [1, 2], "guidance_scale": 3.0, "scheduler": "ddim",
                      "steps": 1},
    training={"batch_size": 2, "steps_per_round": 2, "image_tokens": [16], "profile": True,
              "variants": ["head_checkpointing"]},
    training_scaling={"batch_size": 2, "steps_per_round": 1, "image_tokens": [16, 64], "profile": False},
)


def test_a_suite_writes_json_markdown_plots_and_profile(tmp_path):
    from benchmarks.runner import run_suite

    result = run_suite(TEST_SUITE, tmp_path, log=lambda *_: None)
    assert result["errors"] == {}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["sections"]) == {"sampler", "janus", "num_iter_scaling", "training", "training_scaling"}
    sampler = saved["sections"]["sampler"]
    assert sampler["quality_measured"] is False  # random model: quality is not applicable
    names = [row["variant"] for row in sampler["rows"]]
    assert names[0].startswith("naive") and any("DPM-Solver++" in name for name in names)
    by_name = {row["variant"]: row for row in sampler["rows"]}
    assert by_name[names[0]]["backbone_passes"] == 2 * 2  # separate cond / uncond passes at each of 2 steps
    assert by_name[names[2]]["backbone_passes"] == 1 + 2  # prefix once + 2 span passes
    assert by_name[names[2]]["max_abs_diff_vs_naive"] < 1e-5
    janus = saved["sections"]["janus"]["rows"][0]
    assert janus["janus_backbone_passes"] == 16 and janus["mmar_backbone_passes"] == 3
    training = saved["sections"]["training"]
    assert [r["model"] for r in training["rows"]] == ["MMAR", "MMAR, diffusion head checkpointed"]
    assert training["rows"][0]["memory_ratio"] > 0 and training["rows"][0]["overhead_parts_s"]
    assert set(training["flop_estimate"]) == {"measured geometry", "paper-0.5b geometry"}
    assert [r["image_tokens"] for r in saved["sections"]["training_scaling"]["rows"]] == [16, 64]

    markdown = (tmp_path / "results.md").read_text()
    for heading in ("### Targets", "naive MAR loop", "Janus", "Training step"):
        assert heading in markdown
    assert "Quality not applicable" in markdown
    for png in ("sampler_speedup.png", "scaling_image_tokens.png", "scaling_num_iter.png",
                "scaling_training_sequence.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "aten::" in (tmp_path / "training_profile.txt").read_text()


def test_cli_lists_suites_and_gpu_suite_refuses_without_cuda(tmp_path, capsys):
    from benchmarks.__main__ import main

    assert main(["list"]) == 0
    assert "cpu-small" in capsys.readouterr().out
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the gpu suite would run")
    assert main(["run", "--suite", "gpu", "--output-dir", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_gpu_suite_batches_and_flops_are_consistent():
    from benchmarks.gpu_bench import load_config, synthetic_training_batch, training_flops

    config = load_config({"text_config": dict(tiny_config().text_config.to_dict()), "image_size": 8,
                          "num_channels": 1, "patch_size": 2, "head_width": 32, "head_depth": 1})
    batch = synthetic_training_batch(config, batch_size=4, prompt_tokens=3)
    assert batch["input_ids"].shape == (4, 1 + 3 + 18 + 1)
    assert ((batch["input_ids"] == config.image_token_id).sum(1) == config.tokens_per_image).all()
    assert batch["image_mask"][0].any() and not batch["image_mask"][1].any()  # generation row, understanding row
    assert (batch["labels"][1] != -100).sum() == 3 + 1 and (batch["labels"][0] == -100).all()
    model = MMARForConditionalGeneration(config)
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.image_loss is not None and out.text_loss is not None
    assert training_flops(model, batch, with_image_parts=True) > training_flops(model, batch, with_image_parts=False)
    assert np.isfinite(training_flops(model, batch, with_image_parts=False))


def test_gpu_suite_code_runs_end_to_end_on_cpu_at_a_tiny_size(tmp_path):
    """The gpu suite cannot run here; its code can, on CPU, so that it does not rot before a GPU is lent."""
    from benchmarks.gpu_bench import run_gpu_benchmark
    from benchmarks.report import gpu_markdown

    config = {"text_config": tiny_config().text_config.to_dict(), "image_size": 8, "num_channels": 1,
              "patch_size": 2, "head_width": 32, "head_depth": 1}
    settings = {"config": config, "device": "cpu", "dtype": "float32", "batch_sizes": [1, 2], "num_iter": 2,
                "guidance_scale": 3.0, "scheduler": "ddim", "steps": 1, "naive_batch_size": 1, "janus_batch_size": 1,
                "train_batch_size": 2, "prompt_tokens": 2, "janus_codebook": 32}
    section = run_gpu_benchmark(settings, repeats=1, out_dir=tmp_path)
    assert [row["batch_size"] for row in section["sampling"]] == [1, 2]
    assert section["naive_speedup"]["median"] > 0 and section["janus_speedup"]["median"] > 0
    training = section["training"]
    assert training["mmar"]["tokens_per_s"] > 0 and training["lm"]["tokens_per_s"] > 0
    assert training["mmar"]["mfu"] is None  # no dense-bf16 peak is known for a CPU
    assert "LLM" in section["sampler_profile"]["regions_share"]
    assert (tmp_path / "gpu_sampler_profile.txt").exists()
    assert "vs Janus" in "\n".join(gpu_markdown(section))


def test_paper_training_section_reports_the_overhead_targets(tmp_path):
    """The cpu-paper suite's section (run here at a tiny size) reports MMAR vs the LM with the targets."""
    from conftest import TINY_VAE

    from benchmarks.runner import run_suite

    config = {"text_config": tiny_config().text_config.to_dict(), "image_size": 8, "num_channels": 1,
              "vae_config": dict(TINY_VAE), "patch_size": 1, "head_width": 32, "head_depth": 1}
    suite = Suite(name="paper-tiny", description="test", repeats=1,
                  paper_training={"config": config, "train_batch_size": 2, "prompt_tokens": 2})
    result = run_suite(suite, tmp_path, log=lambda *_: None)
    assert result["errors"] == {}
    section = result["sections"]["paper_training"]
    assert set(section["targets"]) == {"time_overhead", "memory_ratio"}
    assert section["training"]["mmar"]["peak_memory_gb"] > section["training"]["lm"]["peak_memory_gb"] > 0
    # MemTracker cannot follow the frozen VAE: every model of the comparison is then measured by the profiler
    sources = {section["training"][name]["memory_source"] for name in ("lm", "mmar", "mmar_cached_image_tokens")}
    assert sources == {"torch.profiler memory timeline"}
    markdown = (tmp_path / "results.md").read_text()
    assert "training step memory ratio (paper-0.5b geometry)" in markdown and "MMAR / LM time per step" in markdown
    assert "training step time overhead (paper-0.5b geometry, cached image tokens)" in markdown


def test_the_default_subject_ignores_a_demo_folder_in_the_working_directory(tmp_path, monkeypatch):
    from benchmarks.subjects import load_subject

    (tmp_path / "mmar-demo" / "model").mkdir(parents=True)
    (tmp_path / "mmar-demo" / "model" / "config.json").write_text("{}")  # what `mmar demo` would have left
    monkeypatch.chdir(tmp_path)
    subject = load_subject()
    assert subject.trained is False and "mmar-demo" not in subject.source
    with pytest.raises(ValueError, match="holds no config.json"):
        load_subject(tmp_path / "elsewhere")
