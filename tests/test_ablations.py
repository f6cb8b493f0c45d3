"""The ablation harness (`python -m benchmarks ablations`): the bf16-vs-float64 x0-error function on a case with a
known answer, the VQ codebook, the verdict logic, and every variant built, trained and reported on a tiny config."""

import json
import math

import numpy as np
import pytest
import torch

from benchmarks.__main__ import main as benchmarks_main
from benchmarks.ablations import BASELINE, SUITES, VARIANTS, RunSettings, choose_steps, run_ablations, variant_named
from benchmarks.ablations_numerics import default_timesteps, x0_estimate_error, x0_from_prediction
from benchmarks.ablations_report import compare
from benchmarks.ablations_run import resolve_config
from benchmarks.ablations_vq import TokenCodebook, fit_codebook
from modeling_mmar import MMARScheduler
from modeling_mmar.diffusion_head_mmar import MMARDiffusionHead
from training.cli import CONFIG_DIR
from training.run_config import load_config

OFF_BY_BF16 = 1.0 + 2.0**-9  # rounds to exactly 1.0 in bfloat16 (8 significant bits): an error of 2**-9


def constant_head(value: float, token_dim: int = 4, condition_dim: int = 8) -> MMARDiffusionHead:
    """A real diffusion head whose output is `value` for every input (zero output weight, bias `value`)."""
    head = MMARDiffusionHead(token_dim, condition_dim, width=16, depth=1)
    with torch.no_grad():
        head.final_layer.linear.weight.zero_()
        head.final_layer.linear.bias.fill_(value)
    return head


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_x0_error_of_a_head_off_by_one_bf16_rounding_is_that_error_times_the_formulas_factor(prediction_type):
    # The head predicts 1 + 2^-9 in float64 and exactly 1.0 under bf16 autocast: its x0 estimate is off by
    # sigma_t * 2^-9 (v), sigma_t / alpha_t * 2^-9 (epsilon) or 2^-9 (x0), whatever x_t and the condition are.
    scheduler = MMARScheduler()
    alphas = scheduler.alphas_cumprod.double()
    timesteps = [0, 500, 900, 990, 999]
    conditions, clean = torch.randn(50, 8), torch.randn(50, 4)
    result = x0_estimate_error(constant_head(OFF_BY_BF16), conditions, clean, alphas, prediction_type, timesteps)
    alpha, sigma = alphas[timesteps].sqrt().numpy(), (1 - alphas[timesteps]).sqrt().numpy()
    factor = {"v_prediction": sigma, "epsilon": sigma / alpha, "sample": np.ones_like(alpha)}[prediction_type]
    np.testing.assert_allclose(result["rms_error"], factor * 2.0**-9, rtol=1e-6)
    assert result["timesteps"] == timesteps


def test_epsilon_x0_error_blows_up_as_alphabar_goes_to_zero_while_v_stays_bounded():
    scheduler = MMARScheduler()
    conditions, clean = torch.randn(20, 8), torch.randn(20, 4)
    errors = {kind: x0_estimate_error(constant_head(OFF_BY_BF16), conditions, clean, scheduler.alphas_cumprod, kind,
                                      [0, 999])["rms_error"] for kind in ("v_prediction", "epsilon")}
    assert errors["v_prediction"][1] <= 2.0**-9 * (1 + 1e-6)
    assert errors["epsilon"][1] > 1e4 * errors["epsilon"][0]


def test_a_head_exact_in_bf16_has_no_x0_error():
    result = x0_estimate_error(constant_head(0.5), torch.randn(10, 8), torch.randn(10, 4),
                               MMARScheduler().alphas_cumprod, "epsilon", [0, 999])
    assert result["rms_error"] == [0.0, 0.0]


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_x0_from_prediction_inverts_the_training_targets(prediction_type):
    scheduler = MMARScheduler(prediction_type=prediction_type)
    clean, noise = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    t = torch.full((6,), 700)
    alpha_bar = float(scheduler.alphas_cumprod[700])
    noisy = math.sqrt(alpha_bar) * clean + math.sqrt(1 - alpha_bar) * noise
    target = {"v_prediction": math.sqrt(alpha_bar) * noise - math.sqrt(1 - alpha_bar) * clean, "epsilon": noise,
              "sample": clean}[prediction_type]
    torch.testing.assert_close(x0_from_prediction(target, noisy, alpha_bar, prediction_type), clean)
    assert scheduler.get_velocity(clean.float(), noise.float(), t).shape == clean.shape


def test_x0_estimate_error_refuses_bad_input():
    head = constant_head(0.5)
    with pytest.raises(ValueError, match="timesteps"):
        x0_estimate_error(head, torch.randn(3, 8), torch.randn(3, 4), MMARScheduler().alphas_cumprod, "epsilon", [1000])
    with pytest.raises(ValueError, match="same M"):
        x0_estimate_error(head, torch.randn(3, 8), torch.randn(2, 4), MMARScheduler().alphas_cumprod, "epsilon", [0])
    with pytest.raises(ValueError, match="prediction_type"):
        x0_from_prediction(torch.zeros(1), torch.zeros(1), 0.5, "noise")


def test_default_timesteps_reach_the_end_of_the_schedule():
    steps = default_timesteps(1000)
    assert steps[0] == 0 and steps[-1] == 999 and {990, 996, 998} <= set(steps)


def test_codebook_snaps_tokens_to_their_nearest_codeword():
    centres = np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
    rng = np.random.default_rng(0)
    tokens = np.concatenate([c + 0.01 * rng.standard_normal((40, 2)) for c in centres])
    codebook = fit_codebook(tokens, size=3)
    assert codebook.size == 3 and codebook.dim == 2
    snapped = codebook.quantize(torch.tensor([[0.1, -0.1], [0.9, 1.2]]))
    torch.testing.assert_close(snapped, torch.tensor([[0.0, 0.0], [1.0, 1.0]]), atol=0.01, rtol=0)
    assert fit_codebook(np.zeros((5, 2)), size=256).size == 1  # never more codewords than distinct tokens
    with pytest.raises(ValueError, match="dimension"):
        TokenCodebook(centres).quantize(torch.zeros(2, 3))


def test_resolved_configs_keep_the_split_and_scale_stage_two():
    base = load_config(CONFIG_DIR / "digits.yaml")
    settings = RunSettings(steps=200, evaluation={"seeds_per_digit": 2})
    first = resolve_config(base, variant_named("eps-bf16"), 0, settings)
    second = resolve_config(base, variant_named("eps-bf16"), 1, settings)
    assert (first["seed"], second["seed"]) == (0, 1)
    assert first["data"]["split_seed"] == second["data"]["split_seed"] == 0
    assert first["model"]["prediction_type"] == "epsilon" and first["training"]["bf16"] is True
    assert first["mask_schedule"]["stage2_start_step"] == 100  # 500 of 1,000 steps -> 100 of 200
    stage1 = resolve_config(base, variant_named("stage1-only"), 0, settings)
    assert stage1["mask_schedule"]["stage2_start_step"] is None and stage1["training"]["bf16"] is False


def fake_results(better: list[float], worse: list[float], metric="caption_accuracy") -> dict:
    runs = lambda xs: {str(i): {metric: x} for i, x in enumerate(xs)}  # noqa: E731
    return {"variants": {"a": {"runs": runs(better)}, "b": {"runs": runs(worse)}}}


@pytest.mark.parametrize("better,worse,verdict", [
    ([0.90, 0.92], [0.80, 0.81], "reproduced (beyond the seeds' spread)"),
    ([0.90, 0.80], [0.85, 0.84], "direction reproduced, within the seeds' spread"),
    ([0.70, 0.72], [0.80, 0.81], "not reproduced (opposite direction)"),
])
def test_verdicts_weigh_the_effect_against_the_seeds_spread(better, worse, verdict):
    assert compare(fake_results(better, worse), "a", "b", "caption_accuracy")["verdict"] == verdict


def test_lower_is_better_metrics_count_a_decrease_as_the_papers_direction():
    result = compare(fake_results([10.0, 11.0], [20.0, 21.0], "digit_fd"), "a", "b", "digit_fd")
    assert result["effect"] == pytest.approx(10.0) and result["verdict"].startswith("reproduced")


def test_steps_shrink_only_where_bf16_is_not_native():
    native = {BASELINE: {"median_s": 0.1}, "v-bf16": {"median_s": 0.11}}
    emulated = {BASELINE: {"median_s": 0.1}, "v-bf16": {"median_s": 1.1}}
    assert choose_steps(1000, native, VARIANTS)[0] == 1000
    steps, reason = choose_steps(1000, emulated, VARIANTS)
    assert steps == 260 and "no native bf16" in reason  # 11 runs cost 8 + 3 x 11 = 41 fp32 runs


def test_bad_arguments_are_one_line_and_exit_status_2(capsys):
    assert benchmarks_main(["ablations", "--only", "no-such-variant"]) == 2
    assert benchmarks_main(["ablations", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_every_variant_builds_trains_and_is_reported_on_a_tiny_config(tmp_path):
    assert SUITES["full"]["seeds"] >= 2 and SUITES["quick"]["seeds"] >= 2
    results = run_ablations(tmp_path, CONFIG_DIR / "digits_tiny.yaml", seeds=1, steps=2, timing_repeats=1,
                            evaluation_overrides={"seeds_per_digit": 1, "num_inference_steps": 2, "batch_size": 64},
                            suite_overrides={"inpainting_images": 10, "numerics_images": 10})
    assert set(results["variants"]) == {v.name for v in VARIANTS}
    for variant in VARIANTS:
        run = results["variants"][variant.name]["runs"]["0"]
        assert run["train_steps"] == 2
        config = json.loads((tmp_path / run["config"]).read_text())
        assert config["training"]["bf16"] is variant.bf16 and config["training"]["max_steps"] == 2
        assert (tmp_path / f"samples_{variant.name}.png").is_file()
        assert 0.0 <= run["caption_accuracy"] <= 1.0 and run["digit_fd"] >= 0.0
    assert results["variants"]["vq-256"]["runs"]["0"]["codebook_size"] > 1
    for name in ("results.json", "results.md", "x0_error_bf16.png", "caption_accuracy.png", "digit_fd.png",
                 "generated_digit_accuracy.png", "heldout_image_loss.png", "inpainting_hole_rate.png"):
        assert (tmp_path / name).is_file(), name
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["verdicts"]["v_vs_eps"] and "step_timing" in written
    assert "Claim 1" in (tmp_path / "results.md").read_text()


def test_the_mnist_vae_config_resolves_for_every_variant():
    base = load_config(CONFIG_DIR / "mnist.yaml", ["model.vae=some/vae/folder"])
    settings = RunSettings(steps=3000, evaluation={"seeds_per_digit": 2})
    for variant in VARIANTS:
        config = resolve_config(base, variant, 1, settings)
        assert "vae_training" not in config and config["data"]["cache_image_tokens"] is True
        assert config["data"]["dataset"] == "mnist" and config["mask_schedule"]["stage2_start_step"] in (1500, None)
