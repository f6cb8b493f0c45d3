"""MMARScheduler: the diffusion identities, respacing, and sampling a known distribution with an oracle denoiser."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from modeling_mmar import MMARScheduler

# A 1-D two-component Gaussian mixture with a known mean and standard deviation.
WEIGHTS = torch.tensor([0.25, 0.75], dtype=torch.float64)
MEANS = torch.tensor([-1.0, 2.0], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5], dtype=torch.float64)
MIXTURE_MEAN = float((WEIGHTS * MEANS).sum())
MIXTURE_STD = float(((WEIGHTS * (STDS**2 + MEANS**2)).sum() - MIXTURE_MEAN**2).sqrt())


def oracle_model_output(scheduler, sample: torch.Tensor, timestep) -> torch.Tensor:
    """The exact E[x0 | x_t] of the mixture under q(x_t | x0) = N(alpha x0, sigma^2), as the scheduler's target."""
    alpha_prod = scheduler.alphas_cumprod[int(timestep)].double()
    alpha, sigma = alpha_prod.sqrt(), (1 - alpha_prod).sqrt()
    x = sample.double().unsqueeze(-1)  # [..., 1] against the components [K]
    variance = alpha**2 * STDS**2 + sigma**2
    log_weight = WEIGHTS.log() - 0.5 * (x - alpha * MEANS) ** 2 / variance - 0.5 * variance.log()
    posterior = log_weight.softmax(-1)
    component_mean = MEANS + alpha * STDS**2 / variance * (x - alpha * MEANS)
    x0 = (posterior * component_mean).sum(-1)
    eps = (sample.double() - alpha * x0) / sigma
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "v_prediction":
        out = alpha * eps - sigma * x0
    elif prediction_type == "epsilon":
        out = eps
    else:
        out = x0
    return out.float()


def sample_mixture(scheduler, num_samples=20000, num_inference_steps=100, seed=0, **step_kwargs):
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(num_inference_steps)
    sample = torch.randn(num_samples, 1, generator=generator) * scheduler.init_noise_sigma  # [N, 1]: one 1-D token per row
    for t in scheduler.timesteps:
        output = oracle_model_output(scheduler, scheduler.scale_model_input(sample, t), t)
        sample = scheduler.step(output, t, sample, generator=generator, **step_kwargs).prev_sample
    return sample


def assert_matches_mixture(samples):
    mean, std = samples.mean().item(), samples.std().item()
    assert abs(mean - MIXTURE_MEAN) < 0.05 * abs(MIXTURE_MEAN), (mean, MIXTURE_MEAN)
    assert abs(std - MIXTURE_STD) < 0.05 * MIXTURE_STD, (std, MIXTURE_STD)


def test_defaults_are_mmar_defaults():
    scheduler = MMARScheduler()
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.prediction_type == "v_prediction"
    scheduler.set_timesteps()
    assert len(scheduler.timesteps) == 100 and scheduler.timesteps[0] == 999  # trailing: starts at T - 1
    with pytest.raises(ValueError, match="prediction_type"):
        MMARScheduler(prediction_type="flow")
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="variance_type"):
        MMARScheduler(variance_type="learned_range")  # the head predicts no variance
    with pytest.raises(ValueError, match="timestep 500 is not one of the 100 steps"):
        scheduler.step(torch.zeros(1, 4), 500, torch.zeros(1, 4))


def test_v_prediction_identities_with_one_timestep_per_token():
    scheduler = MMARScheduler()
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(30, 4, generator=generator)  # [tokens, token_dim], as the diffusion loss flattens them
    noise = torch.randn(30, 4, generator=generator)
    timesteps = torch.randint(0, 1000, (30,), generator=generator)  # a different timestep for every token
    alpha_prod = scheduler.alphas_cumprod[timesteps].unsqueeze(-1)
    alpha, sigma = alpha_prod.sqrt(), (1 - alpha_prod).sqrt()

    noisy = scheduler.add_noise(clean, noise, timesteps)
    torch.testing.assert_close(noisy, alpha * clean + sigma * noise)
    velocity = scheduler.get_velocity(clean, noise, timesteps)
    torch.testing.assert_close(velocity, alpha * noise - sigma * clean)
    # x0 = alpha_t * x_t - sigma_t * v (and the velocity is orthogonal-rotation consistent: eps = sigma x_t + alpha v)
    t = int(timesteps[0])  # the head is sampled with one timestep for all tokens of a step
    torch.testing.assert_close(scheduler.predict_original_sample(velocity[:1], t, noisy[:1]), clean[:1], atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(sigma * noisy + alpha * velocity, noise, atol=1e-5, rtol=0)

    eps_scheduler = MMARScheduler(prediction_type="epsilon")
    mid = torch.full_like(timesteps, 600)  # epsilon's x0 estimate divides by alpha_t, which vanishes at t -> T
    noisy_mid = eps_scheduler.add_noise(clean, noise, mid)
    torch.testing.assert_close(eps_scheduler.predict_original_sample(noise, 600, noisy_mid), clean, atol=1e-4, rtol=0)
    sample_scheduler = MMARScheduler(prediction_type="sample")
    assert torch.equal(sample_scheduler.predict_original_sample(clean, t, noisy), clean)


def test_one_constructor_from_the_model_config():
    from modeling_mmar import MMARConfig

    config = MMARConfig(prediction_type="epsilon", noise_schedule="linear", num_train_timesteps=500)
    scheduler = MMARScheduler.from_model_config(config)
    assert (scheduler.config.prediction_type, scheduler.config.beta_schedule,
            scheduler.config.num_train_timesteps) == ("epsilon", "linear", 500)
    assert MMARScheduler.from_model_config(config, default_num_inference_steps=20).config.default_num_inference_steps == 20


def test_step_returns_the_posterior_mean_plus_tempered_noise():
    scheduler = MMARScheduler()
    scheduler.set_timesteps(10)
    t, t_prev = int(scheduler.timesteps[3]), int(scheduler.timesteps[4])
    generator = torch.Generator().manual_seed(1)
    sample, output, noise = torch.randn(3, 8, 4, generator=generator).unbind(0)
    a_t, a_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t_prev]
    x0 = a_t.sqrt() * sample - (1 - a_t).sqrt() * output
    beta = 1 - a_t / a_prev  # the respaced chain's beta between t and t_prev
    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * sample
    std = ((1 - a_prev) / (1 - a_t) * beta).sqrt()
    for temperature in (0.0, 0.5, 1.0):
        out = scheduler.step(output, t, sample, temperature=temperature, variance_noise=noise)
        torch.testing.assert_close(out.pred_original_sample, x0)
        torch.testing.assert_close(out.prev_sample, mean + temperature * std * noise)
    with pytest.raises(ValueError, match="temperature"):
        scheduler.step(output, t, sample, temperature=-1.0)


def test_respaced_schedule_is_consistent_with_the_full_one():
    full = MMARScheduler()
    respaced = MMARScheduler()
    respaced.set_timesteps(50)
    steps = respaced.timesteps
    assert steps[0] == 999 and (steps[:-1] > steps[1:]).all()
    # The respaced chain uses the full chain's cumulative alphas at its own timesteps: the marginals q(x_t | x0) agree.
    for t, t_prev in zip(steps[:-1].tolist(), steps[1:].tolist()):
        assert respaced.previous_timestep(t) == t_prev
    assert respaced.previous_timestep(int(steps[-1])) == -1  # the last step lands on x0
    torch.testing.assert_close(respaced.alphas_cumprod[steps], full.alphas_cumprod[steps])
    # Its one-step betas compose to the full chain's alpha-bar products.
    alpha_bars = torch.cat([respaced.alphas_cumprod[steps], torch.ones(1)])
    step_alphas = alpha_bars[:-1] / alpha_bars[1:]
    torch.testing.assert_close(step_alphas.flip(0).cumprod(0).flip(0)[0], full.alphas_cumprod[999], rtol=1e-4, atol=0)

    # 1000 steps respaced to 1000 is the original chain, step for step.
    respaced.set_timesteps(1000)
    assert torch.equal(respaced.timesteps, torch.arange(999, -1, -1))
    generator = torch.Generator().manual_seed(0)
    sample, output, noise = torch.randn(3, 2, 8, generator=generator).unbind(0)
    unrespaced = DDPMScheduler.from_config(full.config)  # no set_timesteps: previous timestep is t - 1
    for t in (999, 500, 1):
        reference = unrespaced.step(output, t, sample, generator=torch.Generator().manual_seed(t))
        same_noise = torch.randn(2, 8, generator=torch.Generator().manual_seed(t))  # what DDPM drew
        ours = respaced.step(output, t, sample, variance_noise=same_noise)
        # (ours computes the step coefficients in float64, diffusers in float32)
        torch.testing.assert_close(ours.prev_sample, reference.prev_sample, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.pred_original_sample, reference.pred_original_sample, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_oracle_sampling_reproduces_a_gaussian_mixture(prediction_type):
    scheduler = MMARScheduler(prediction_type=prediction_type)
    assert_matches_mixture(sample_mixture(scheduler))


def test_temperature_zero_is_deterministic_and_one_is_not():
    scheduler = MMARScheduler()
    cold_a = sample_mixture(scheduler, num_samples=64, num_inference_steps=20, seed=0, temperature=0.0)
    # Same x_T (seed 0), but a different stream for the per-step noise must not matter at temperature 0.
    generator = torch.Generator().manual_seed(0)
    scheduler.set_timesteps(20)
    sample = torch.randn(64, 1, generator=generator)
    other = torch.Generator().manual_seed(123)
    for t in scheduler.timesteps:
        output = oracle_model_output(scheduler, sample, t)
        sample = scheduler.step(output, t, sample, temperature=0.0, generator=other).prev_sample
    assert torch.equal(cold_a, sample)
    warm = sample_mixture(scheduler, num_samples=64, num_inference_steps=20, seed=0, temperature=1.0)
    assert not torch.allclose(warm, cold_a)
    # Without injected noise, the probability mass collapses: the spread shrinks below the mixture's.
    assert cold_a.std() < warm.std()


def test_ddpm_from_config_is_an_equivalent_scheduler():
    ours = MMARScheduler()
    ddpm = DDPMScheduler.from_config(ours.config)
    assert ddpm.config.prediction_type == "v_prediction" and ddpm.config.timestep_spacing == "trailing"
    ours.set_timesteps(100)
    ddpm.set_timesteps(100)
    assert torch.equal(ours.timesteps, ddpm.timesteps)
    generator = torch.Generator().manual_seed(0)
    sample, output = torch.randn(2, 4, 8, generator=generator).unbind(0)
    for t in ours.timesteps[[0, 37, 99]]:
        mine = ours.step(output, t, sample, generator=torch.Generator().manual_seed(7))
        theirs = ddpm.step(output, t, sample, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(mine.prev_sample, theirs.prev_sample, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mine.pred_original_sample, theirs.pred_original_sample, atol=1e-4, rtol=1e-4)
    assert_matches_mixture(sample_mixture(ddpm))


def test_ddim_from_config_samples_the_mixture():
    ddim = DDIMScheduler.from_config(MMARScheduler().config)
    assert ddim.config.prediction_type == "v_prediction"
    assert_matches_mixture(sample_mixture(ddim, num_inference_steps=50))


def test_save_and_load_round_trip(tmp_path):
    scheduler = MMARScheduler(prediction_type="epsilon", default_num_inference_steps=40)
    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").exists()
    loaded = MMARScheduler.from_pretrained(tmp_path)
    assert dict(loaded.config) == dict(scheduler.config)
    assert torch.equal(loaded.alphas_cumprod, scheduler.alphas_cumprod)
    loaded.set_timesteps()
    assert len(loaded.timesteps) == 40
