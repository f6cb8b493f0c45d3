"""Training-free sampling accelerations: each is a keyword of image generation (and of the pipelines), changes nothing
when off, and stays within a stated tolerance of the reference sampler when on.

Tolerances here are on a tiny random model with the deterministic DPM-Solver++ head, where the same x_T and the same
order let two samplers be compared image by image; what each costs in real image quality is measured on trained
models by `python -m benchmarks run --suite cpu-sampler` (README, Performance).
"""

import pytest
import torch
from conftest import tiny_config
from diffusers import DPMSolverMultistepScheduler
from test_image_generation import CallRecorder, image_prompts, randomize_head, seeds

from modeling_mmar import MMARForConditionalGeneration, MMARScheduler
from modeling_mmar.image_span_runner_mmar import ImageSpanRunner
from modeling_mmar.sampling_mmar import build_prompt_rows
from modeling_mmar.sampling_schedules_mmar import annealed_inference_steps, checkerboard, two_stage_masked_counts

CAPTIONS = [[40, 41, 42], [40, 41, 43, 44, 45]] * 4  # 8 prompts, every other one left-padded
NUM_ITER, STEPS = 8, 12


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_head(MMARForConditionalGeneration(tiny_config()).eval())


@pytest.fixture(scope="module")
def prompts(model):
    return image_prompts(model.config, CAPTIONS)


def ode_scheduler(config):
    """The head's diffusion process in DPM-Solver++ (deterministic: one x_T, one path)."""
    mmar = MMARScheduler.from_model_config(config).config
    return DPMSolverMultistepScheduler.from_config({k: v for k, v in mmar.items()
                                                    if k != "default_num_inference_steps"})


def generate(model, prompts, **kwargs):
    """The exact reference sampler (the default token cache off) unless a test turns an acceleration on."""
    kwargs = {"scheduler": ode_scheduler(model.config), "num_inference_steps": STEPS, "num_iter": NUM_ITER,
              "token_cache_interval": None, "generator": seeds(*range(len(prompts["input_ids"]))), **kwargs}
    return model.generate(**prompts, generation_mode="image", show_progress=False, output_type="latent", **kwargs)


def relative(difference: torch.Tensor, reference: torch.Tensor) -> float:
    return float(difference.abs().mean() / reference.abs().mean())


def test_every_acceleration_changes_nothing_when_off(model, prompts):
    for scheduler in (None, ode_scheduler(model.config)):  # the default head sampler and DPM-Solver++
        reference = generate(model, prompts, scheduler=scheduler)
        off = generate(model, prompts, scheduler=scheduler, final_num_inference_steps=None, reconstruction_steps=None,
                       token_cache_interval=None, guidance_cache_interval=None, compile_head=None)
        torch.testing.assert_close(off, reference, rtol=0, atol=0)
        # Interval 1 (a full step every step) and annealing to the same number of steps are the reference too.
        same = generate(model, prompts, scheduler=scheduler, final_num_inference_steps=STEPS, token_cache_interval=1,
                        guidance_cache_interval=1)
        torch.testing.assert_close(same, reference, rtol=0, atol=0)


def test_the_default_token_cache_is_interval_8_with_the_prompt_cache_and_off_without(model, prompts):
    interval_8 = generate(model, prompts, token_cache_interval=8, num_iter=12)
    exact = generate(model, prompts, num_iter=12)
    default = model.generate(**prompts, generation_mode="image", show_progress=False, output_type="latent",
                             generator=seeds(*range(len(prompts["input_ids"]))), scheduler=ode_scheduler(model.config),
                             num_inference_steps=STEPS, num_iter=12)  # token_cache_interval left at its default
    torch.testing.assert_close(default, interval_8, rtol=0, atol=0)
    assert not torch.equal(default, exact)
    # Without the prompt cache "auto" runs full steps (an explicit interval is refused there).
    torch.testing.assert_close(generate(model, prompts, token_cache_interval="auto", use_cache=False),
                               generate(model, prompts, use_cache=False), rtol=0, atol=0)


def test_an_inpainted_image_with_the_token_cache_does_not_depend_on_its_batch(model, prompts, digits):
    """Images regenerating different numbers of tokens run their partial steps apart (never padded together)."""
    from conftest import digits_to_pixel_values

    pixel_values = digits_to_pixel_values(digits[0][:8])
    masks = torch.zeros(8, 1, 8, 8)
    for i in range(8):
        masks[i, :, : 2 + (i % 4) * 2] = 1  # 4, 8, 12 and 16 tokens to regenerate
    batch = generate(model, prompts, image=pixel_values, mask_image=masks, token_cache_interval=3)
    assert not torch.equal(batch, generate(model, prompts, image=pixel_values, mask_image=masks))
    for i in (1, 2):
        alone = generate(model, {k: v[i:i + 1] for k, v in prompts.items()}, image=pixel_values[i:i + 1],
                         mask_image=masks[i:i + 1], token_cache_interval=3, generator=seeds(i))
        torch.testing.assert_close(batch[i], alone[0], rtol=1e-5, atol=1e-5)


def test_step_annealing_runs_fewer_head_steps_later_and_stays_close(model, prompts):
    assert [annealed_inference_steps(12, 4, k, 5) for k in range(5)] == [12, 10, 8, 6, 4]
    head = CallRecorder(model.diffusion_head, "noisy_tokens")
    per_step = []
    try:
        annealed = generate(model, prompts, final_num_inference_steps=4,
                            callback_on_step_end=lambda *_: per_step.append(len(head.rows)))
    finally:
        head.remove()
    calls = [b - a for a, b in zip([0, *per_step], per_step)]  # one batched head call per diffusion step
    assert calls == [annealed_inference_steps(STEPS, 4, k, NUM_ITER) for k in range(NUM_ITER)] == \
        [12, 11, 10, 9, 7, 6, 5, 4]
    # Tolerance: the later tokens' coarser ODE solve moves the tokens by at most 10 % of their mean magnitude.
    reference = generate(model, prompts)
    assert 0 < relative(annealed - reference, reference) < 0.10


def test_condition_cache_skips_the_unconditional_rows_between_full_steps(model, prompts):
    llm = CallRecorder(model.model.language_model, "inputs_embeds")
    try:
        cached = generate(model, prompts, guidance_cache_interval=3)
    finally:
        llm.remove()
    rows = len(prompts["input_ids"])
    # prefill, then [cond; uncond] at steps 0, 3, 6 and the conditional rows alone in between
    assert llm.rows == [2 * rows] + [2 * rows if step % 3 == 0 else rows for step in range(NUM_ITER)]
    # Tolerance: the reused (uncond - cond) difference moves no token by more than 5 % of the mean magnitude.
    reference = generate(model, prompts)
    difference = cached - reference
    assert 0 < float(difference.abs().max() / reference.abs().mean()) < 0.05


def test_token_cache_runs_only_changed_and_sampled_tokens_between_full_steps(model, prompts):
    span_lengths = []
    hook = model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, output: span_lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        cached = generate(model, prompts, token_cache_interval=4, guidance_scale=1.0)
    finally:
        hook.remove()
    L = model.config.tokens_per_image
    assert span_lengths[1] == L and span_lengths[5] == L  # full steps 0 and 4 (after the prompt's prefill)
    assert all(0 < n < L for k, n in enumerate(span_lengths[1:]) if k % 4)
    reference = generate(model, prompts, guidance_scale=1.0)
    assert 0 < float((cached - reference).abs().max() / reference.abs().mean()) < 0.05


def test_a_partial_step_on_current_keys_and_values_equals_a_full_step(model, prompts):
    """The token cache's partial step is exact when nothing changed since the cached step: the approximation is only
    in the staleness that the refresh interval bounds."""
    prefix_ids, prefix_mask = build_prompt_rows(prompts["input_ids"][:2], prompts["attention_mask"][:2], None, None,
                                                model.config, 1, with_uncond=True)
    L, D = model.config.tokens_per_image, model.config.token_dim
    tokens = torch.randn(2, L, D, generator=torch.Generator().manual_seed(0))
    still_masked = torch.rand(2, L, generator=torch.Generator().manual_seed(1)) > 0.5
    runner = ImageSpanRunner(model, prefix_ids, prefix_mask, True, 2, token_cache_interval=4)
    with torch.no_grad():
        full = runner.hidden_states(0, tokens, still_masked)
        sampled = torch.zeros(2, L, dtype=torch.bool)
        sampled[0, [1, 5]], sampled[1, 3] = True, True
        partial = runner.hidden_states(1, tokens, still_masked, sampled)
        uncached = ImageSpanRunner(model, prefix_ids, prefix_mask, False, 2).hidden_states(0, tokens, still_masked)
    for a, b, c in zip(full, partial, uncached):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)


def test_two_stage_sampling_reveals_the_checkerboard_first(model, prompts):
    L = model.config.tokens_per_image
    board = checkerboard(L)
    assert board.sum() == L // 2 and board[:2].tolist() == [True, False]
    assert two_stage_masked_counts(8, 8, 5, 2) == [14, 12, 8, 4, 0]  # cosine over 3 steps, then 2 x 4
    masks = []
    two_stage = generate(model, prompts, reconstruction_steps=2,
                         callback_on_step_end=lambda step, tokens, still_masked: masks.append(still_masked))
    for step, still_masked in enumerate(masks):
        revealed_detail = (~still_masked & ~board).any(-1)
        assert not revealed_detail.any() if step < NUM_ITER - 2 else True
        if step == NUM_ITER - 3:  # end of the structure stage: the whole checkerboard and nothing else
            assert (still_masked == ~board).all()
    assert not masks[-1].any()
    # Tolerance (a different order draws different images): token mean within 0.1, spread within 10 %.
    reference = generate(model, prompts)
    assert abs(float(two_stage.mean() - reference.mean())) < 0.1
    assert abs(float(two_stage.std() / reference.std()) - 1) < 0.10


def test_an_image_in_a_batch_equals_the_image_alone_with_every_acceleration_on(model, prompts):
    accelerated = dict(final_num_inference_steps=4, reconstruction_steps=2, token_cache_interval=3,
                       guidance_cache_interval=2)
    batch = generate(model, prompts, **accelerated)
    for i in (0, 1):
        alone = model.generate(**{k: v[i:i + 1] for k, v in prompts.items()}, generation_mode="image",
                               show_progress=False, output_type="latent", generator=seeds(i),
                               scheduler=ode_scheduler(model.config), num_inference_steps=STEPS, num_iter=NUM_ITER,
                               **accelerated)
        torch.testing.assert_close(batch[i], alone[0], rtol=1e-5, atol=1e-5)


def test_inpainting_with_every_acceleration_keeps_the_known_tokens_exactly(model, prompts, digits):
    from conftest import digits_to_pixel_values

    images, _ = digits
    pixel_values = digits_to_pixel_values(images[:8])
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1  # regenerate the left half: 8 of the 16 tokens, 4 of them on the checkerboard
    known = model.model.encode_images(pixel_values)
    out = generate(model, prompts, image=pixel_values, mask_image=mask, num_iter=4, reconstruction_steps=1,
                   final_num_inference_steps=4, token_cache_interval=2, guidance_cache_interval=2)
    regenerated = torch.zeros(4, 4, dtype=torch.bool)
    regenerated[:, :2] = True
    regenerated = regenerated.flatten()
    assert torch.equal(out[:, ~regenerated], known[:, ~regenerated])
    assert (out[:, regenerated] - known[:, regenerated]).abs().amax(dim=(1, 2)).min() > 0


def test_the_compiled_head_equals_the_eager_head(model, prompts):
    """torch.compile of the head (static: rows padded to a power of two) gives the eager head's tokens. One masked-AR
    step: one shape to compile (tens of seconds on a CPU)."""
    reference = generate(model, prompts, num_iter=1, num_inference_steps=2)
    compiled = generate(model, prompts, num_iter=1, num_inference_steps=2, compile_head="static")
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("overrides, message", [
    (dict(final_num_inference_steps=0), "final_num_inference_steps"),
    (dict(reconstruction_steps=0), "reconstruction_steps"),
    (dict(reconstruction_steps=NUM_ITER), "reconstruction_steps"),
    (dict(token_cache_interval=0), "token_cache_interval"),
    (dict(token_cache_interval="always"), "token_cache_interval"),
    (dict(guidance_cache_interval=2.5), "guidance_cache_interval"),
    (dict(token_cache_interval=2, use_cache=False), "use_cache"),
    (dict(compile_head="max-autotune"), "compile_head"),
])
def test_bad_acceleration_settings_are_named(model, prompts, overrides, message):
    with pytest.raises(ValueError, match=message):
        generate(model, prompts, **overrides)


def test_the_pipelines_pass_the_accelerations_through(monkeypatch):
    from test_pipeline import PROMPTS, build_pipeline

    from modeling_mmar import MMARInpaintPipeline

    pipe = build_pipeline()
    received = []
    monkeypatch.setattr(type(pipe.model), "generate", lambda self, **kwargs: received.append(kwargs) or [])
    accelerations = dict(final_num_inference_steps=5, reconstruction_steps=1, token_cache_interval=4,
                         guidance_cache_interval=2, compile_head="static")
    pipe(PROMPTS, **accelerations)
    inpaint = MMARInpaintPipeline(model=pipe.model, processor=pipe.processor, scheduler=pipe.scheduler)
    inpaint(PROMPTS[0], image=torch.zeros(8, 8).numpy(), mask_image=torch.ones(8, 8).numpy(), **accelerations)
    for kwargs in received:
        assert {k: kwargs[k] for k in accelerations} == accelerations
