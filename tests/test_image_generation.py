"""Text -> image: `model.generate(..., generation_mode="image")`, the masked-AR sampler with a diffusion head."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_VAE, tiny_config
from diffusers import DDIMScheduler, DDPMScheduler

from modeling_mmar import MMARForConditionalGeneration, MMARScheduler
from modeling_mmar.sampling_mmar import cosine_masked_counts

SEVEN, THREE = [40, 41, 42], [40, 41, 43, 44, 45]  # captions as token ids of the tiny vocabulary
FAST = dict(generation_mode="image", num_iter=4, num_inference_steps=8, show_progress=False)


def randomize_head(model, std=0.05):
    """The head is zero-initialised (it predicts 0 until trained): give it random weights so outputs depend on
    the LLM states, as a trained head's do."""
    with torch.no_grad():
        for module in model.diffusion_head.zero_initialised_linears():
            torch.nn.init.normal_(module.weight, std=std)
            torch.nn.init.normal_(module.bias, std=std)
    return model


def image_prompts(config, captions):
    """Left-padded `<bos> caption <boi>` rows (what processor(text=..., generation_mode="image") returns)."""
    rows = [[config.text_config.bos_token_id, *caption, config.boi_token_id] for caption in captions]
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def seeds(*values):
    return [torch.Generator().manual_seed(v) for v in values]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_head(MMARForConditionalGeneration(tiny_config()).eval())


@pytest.fixture(scope="module")
def prompts(model):
    return image_prompts(model.config, [SEVEN, THREE])


def test_cosine_schedule_reveals_every_token_a_few_more_each_step():
    counts = cosine_masked_counts(256, 64)
    assert counts[0] == math.floor(256 * math.cos(math.pi / 2 / 64)) == 255  # the first step reveals one token
    assert counts[-1] == 0 and all(a > b for a, b in zip(counts, counts[1:]))
    assert cosine_masked_counts(16, 1) == [0]
    assert cosine_masked_counts(16, 16) == list(range(15, -1, -1))  # K = L: one token per step


def test_same_seed_same_images_different_seed_different_images(model, prompts):
    first = model.generate(**prompts, **FAST, generator=seeds(1, 2))
    again = model.generate(**prompts, **FAST, generator=seeds(1, 2))
    other = model.generate(**prompts, **FAST, generator=seeds(3, 4))
    assert first.shape == (2, 1, 8, 8) and first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - other).abs().amax(dim=(1, 2, 3)).min() > 0.05


def test_an_image_in_a_batch_equals_the_image_generated_alone(model, prompts):
    assert (prompts["attention_mask"] == 0).any(), "the prompts must be left-padded to test padding"
    batch = model.generate(**prompts, **FAST, generator=seeds(1, 2), output_type="latent")
    for i, (caption, seed) in enumerate([(SEVEN, 1), (THREE, 2)]):
        alone = model.generate(**image_prompts(model.config, [caption]), **FAST, generator=seeds(seed),
                               output_type="latent")
        torch.testing.assert_close(batch[i], alone[0], rtol=1e-5, atol=1e-5)


def test_prefix_cache_gives_the_same_images_as_rerunning_the_prompt(model, prompts):
    negative = image_prompts(model.config, [[50, 51]])
    kwargs = dict(**prompts, **FAST, guidance_scale=4.0, output_type="latent",
                  negative_prompt_ids=negative["input_ids"], negative_prompt_attention_mask=negative["attention_mask"])
    # The token cache (default "auto") approximates on purpose: off, the prefix cache alone must be exact.
    cached = model.generate(**kwargs, generator=seeds(1, 2), use_cache=True, token_cache_interval=None)
    uncached = model.generate(**kwargs, generator=seeds(1, 2), use_cache=False)
    torch.testing.assert_close(cached, uncached, rtol=1e-4, atol=1e-4)


def test_tokens_leave_the_mask_on_the_cosine_schedule_and_are_never_remasked(model, prompts):
    steps = []
    model.generate(**prompts, **{**FAST, "num_iter": 6}, generator=seeds(1, 2),
                   callback_on_step_end=lambda step, tokens, still_masked: steps.append((step, tokens, still_masked)))
    L = model.config.tokens_per_image
    assert [s for s, _, _ in steps] == list(range(6))
    expected = cosine_masked_counts(L, 6)
    previous_tokens, previous_mask = torch.zeros(2, L, 4), torch.ones(2, L, dtype=torch.bool)
    for (_, tokens, still_masked), masked in zip(steps, expected):
        assert still_masked.sum(-1).tolist() == [masked, masked]
        assert not (still_masked & ~previous_mask).any(), "a revealed token was masked again"
        kept = ~previous_mask
        torch.testing.assert_close(tokens[kept], previous_tokens[kept], rtol=0, atol=0)
        assert (tokens[~still_masked].abs().sum(-1) > 0).all() and (tokens[still_masked] == 0).all()
        previous_tokens, previous_mask = tokens, still_masked
    assert not steps[-1][2].any(), "every token is revealed after the last step"
    assert steps[0][2].sum(-1).tolist() == [L - 1, L - 1]  # random order: which ones differ per image
    first_revealed = [int((~steps[0][2][i]).nonzero()) for i in range(2)]
    assert first_revealed[0] != first_revealed[1] or not torch.equal(steps[1][2][0], steps[1][2][1])


class CallRecorder:
    """Forward hook recording the batch size of every call of a module."""

    def __init__(self, module, key):
        self.rows, self.key = [], key
        self.handle = module.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        tensor = kwargs.get(self.key) if self.key in kwargs else args[0]
        self.rows.append(tensor.shape[0])

    def remove(self):
        self.handle.remove()


def test_guidance_scale_one_runs_one_row_per_prompt_and_no_unconditional_rows(model, prompts):
    llm = CallRecorder(model.model.language_model, "inputs_embeds")
    head = CallRecorder(model.diffusion_head, "noisy_tokens")
    L, K, steps = model.config.tokens_per_image, FAST["num_iter"], FAST["num_inference_steps"]
    revealed_per_step = -np.diff([L, *cosine_masked_counts(L, K)])
    try:
        model.generate(**prompts, **FAST, guidance_scale=1.0, generator=seeds(1, 2))
        assert llm.rows == [2] * (1 + K), "one prefill + one image-span pass per step, one row per prompt"
        assert head.rows == [2 * n for n in revealed_per_step for _ in range(steps)], "one head call per step"
        llm.rows.clear()
        head.rows.clear()
        model.generate(**prompts, **FAST, guidance_scale=3.0, generator=seeds(1, 2))
        assert llm.rows == [4] * (1 + K), "CFG: [cond; uncond] rows in one batch"
        assert head.rows == [2 * 2 * n for n in revealed_per_step for _ in range(steps)]
        llm.rows.clear()
        model.generate(**prompts, **FAST, guidance_scale=3.0, generator=seeds(1, 2), use_cache=False)
        assert llm.rows == [4] * K, "without the prefix cache each step re-runs the whole sequence"
    finally:
        llm.remove()
        head.remove()


def test_guidance_and_negative_prompts_steer_the_images(model, prompts):
    def run(**kwargs):
        return model.generate(**prompts, **FAST, generator=seeds(1, 2), output_type="latent", **kwargs)

    plain, guided = run(guidance_scale=1.0), run(guidance_scale=4.0)
    constant = run(guidance_scale=4.0, guidance_schedule="constant")
    negative = image_prompts(model.config, [[50, 51]])
    steered = run(guidance_scale=4.0, negative_prompt_ids=negative["input_ids"])
    for other in (guided, constant, steered):
        assert (plain - other).abs().max() > 1e-3
    assert (guided - constant).abs().max() > 1e-3 and (guided - steered).abs().max() > 1e-3


def test_temperature_scales_the_head_noise_of_the_ddpm_sampler(model, prompts):
    ddpm = MMARScheduler.from_model_config(model.config)

    def run(temperature):
        return model.generate(**prompts, **FAST, generator=seeds(1, 2), temperature=temperature, output_type="latent",
                              scheduler=ddpm)

    cold, cold_again, warm = run(0.0), run(0.0), run(1.0)
    torch.testing.assert_close(cold, cold_again, rtol=0, atol=0)
    assert (cold - warm).abs().max() > 1e-3
    with pytest.raises(ValueError, match="MMARScheduler.from_model_config"):  # the default sampler injects no noise
        model.generate(**prompts, **FAST, temperature=0.5)


def test_ddim_and_ddpm_schedulers_plug_in(model, prompts):
    mmar_config = MMARScheduler().config  # all defaults: they must still reach DDIM (cosine, v-prediction)
    ddim = DDIMScheduler.from_config(mmar_config)
    assert (ddim.config.prediction_type, ddim.config.beta_schedule) == ("v_prediction", "squaredcos_cap_v2")
    default = model.generate(**prompts, **FAST, generator=seeds(1, 2), output_type="latent")
    with_ddim = model.generate(**prompts, **FAST, generator=seeds(1, 2), scheduler=ddim, output_type="latent")
    assert torch.isfinite(with_ddim).all() and (with_ddim - default).abs().max() > 1e-3
    again = model.generate(**prompts, **FAST, generator=seeds(1, 2), scheduler=ddim, output_type="latent")
    torch.testing.assert_close(with_ddim, again, rtol=0, atol=0)

    ddpm = DDPMScheduler.from_config(mmar_config)  # its step draws noise from generators itself
    batch = model.generate(**prompts, **FAST, generator=seeds(1, 2), scheduler=ddpm, output_type="latent")
    alone = model.generate(**image_prompts(model.config, [THREE]), **FAST, generator=seeds(2), scheduler=ddpm,
                           output_type="latent")
    torch.testing.assert_close(batch[1], alone[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(**prompts, **FAST, scheduler=ddpm, temperature=0.5)
    with pytest.raises(ValueError, match="prediction_type"):
        model.generate(**prompts, **FAST, scheduler=DDIMScheduler.from_config(mmar_config, prediction_type="epsilon"))
    with pytest.raises(ValueError, match="beta_schedule"):
        model.generate(**prompts, **FAST, scheduler=DDIMScheduler(prediction_type="v_prediction"))


def test_output_types(model, prompts):
    pil = model.generate(**prompts, **FAST, generator=seeds(1, 2), output_type="pil")
    array = model.generate(**prompts, **FAST, generator=seeds(1, 2), output_type="np")
    tensor = model.generate(**prompts, **FAST, generator=seeds(1, 2), output_type="pt")
    assert [(im.mode, im.size) for im in pil] == [("L", (8, 8))] * 2
    assert array.shape == (2, 8, 8, 1) and array.dtype == np.float32
    np.testing.assert_allclose(array[..., 0], tensor[:, 0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pil[0]), (array[0, ..., 0] * 255).round().astype(np.uint8))


def test_a_vae_model_decodes_through_the_vae():
    torch.manual_seed(0)
    model = randomize_head(MMARForConditionalGeneration(tiny_config(vae_config=dict(TINY_VAE))).eval())
    L = model.config.tokens_per_image  # 8x8 pixels -> 4x4 latents -> 2x2 tokens of 4*2*2 dims
    images = model.generate(**image_prompts(model.config, [SEVEN]), generation_mode="image", num_iter=L,
                            num_inference_steps=4, generator=seeds(0), show_progress=False)
    assert images.shape == (1, 1, 8, 8) and torch.isfinite(images).all()


def test_peft_model_generate_passes_image_mode_through(model, prompts):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules=r"model\.language_model\.layers\.\d+\.self_attn\.(q|v)_proj")
    peft_model = get_peft_model(model, lora)
    try:
        through_peft = peft_model.generate(**prompts, **FAST, generator=seeds(1, 2), output_type="latent")
    finally:
        peft_model.unload()  # the module-scoped model is shared by the other tests
    base = model.generate(**prompts, **FAST, generator=seeds(1, 2), output_type="latent")
    torch.testing.assert_close(through_peft, base, rtol=1e-5, atol=1e-5)  # a fresh LoRA starts as the identity


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_iter=0), "num_iter"),
        (dict(num_iter=17), "num_iter"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(guidance_schedule="cubic"), "guidance_schedule"),
        (dict(temperature=-0.1), "temperature"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(generator=[torch.Generator()]), "one generator per image"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(negative_prompt="blurry"), "negative_prompt_ids"),
        (dict(input_ids=None), "input_ids"),
        (dict(max_new_tokens=8), "does not take"),
    ],
)
def test_bad_inputs_are_named(model, prompts, overrides, message):
    kwargs = {**prompts, **FAST, **overrides}
    with pytest.raises(ValueError, match=message):
        model.generate(**kwargs)


def test_a_prompt_that_already_holds_an_image_span_is_rejected(model):
    cfg = model.config
    row = [cfg.text_config.bos_token_id, *SEVEN, cfg.boi_token_id, *[cfg.image_token_id] * cfg.tokens_per_image,
           cfg.eoi_token_id]
    with pytest.raises(ValueError, match="already contains an image span"):
        model.generate(input_ids=torch.tensor([row]), **FAST)


def test_num_images_per_prompt_pairs_each_image_with_its_prompt_and_negative(model, prompts):
    images = model.generate(**prompts, **FAST, num_images_per_prompt=2, generator=seeds(1, 2, 3, 4), output_type="pt")
    one_by_one = [model.generate(**{k: v[row:row + 1] for k, v in prompts.items()}, **FAST, generator=seeds(seed),
                                 output_type="pt") for row, seed in ((0, 1), (0, 2), (1, 3), (1, 4))]
    torch.testing.assert_close(images, torch.cat(one_by_one))

    negatives = image_prompts(model.config, [THREE, SEVEN])
    steered = model.generate(**prompts, **FAST, num_images_per_prompt=2, generator=seeds(1, 2, 3, 4),
                             negative_prompt_ids=negatives["input_ids"],
                             negative_prompt_attention_mask=negatives["attention_mask"])
    alone = model.generate(**{k: v[1:] for k, v in prompts.items()}, **FAST, generator=seeds(3),
                           negative_prompt_ids=negatives["input_ids"][1:],
                           negative_prompt_attention_mask=negatives["attention_mask"][1:])
    torch.testing.assert_close(steered[2:3], alone)  # prompt 1's first image was steered away from its own negative


def test_right_padded_prompts_and_prompts_without_boi_give_the_same_images(model, prompts):
    expected = model.generate(**prompts, **FAST, generator=seeds(1, 2))
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    lengths = mask.sum(-1)
    right_ids, right_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    for row, length in enumerate(lengths.tolist()):
        right_ids[row, :length], right_mask[row, :length] = ids[row, -length:], 1
    torch.testing.assert_close(model.generate(input_ids=right_ids, attention_mask=right_mask, **FAST,
                                              generator=seeds(1, 2)), expected)
    without_boi = model.generate(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], **FAST, generator=seeds(1, 2))
    torch.testing.assert_close(without_boi, expected)


def test_masked_ar_steps_skip_the_checked_forward(model, prompts, monkeypatch):
    """The sampler checks its inputs once; its steps call the unchecked inner path, never `MMARModel.forward`."""
    calls = {"forward": 0, "inner": 0}
    inner = type(model.model).forward_embedded

    def counting_inner(self, *args, **kwargs):
        calls["inner"] += 1
        return inner(self, *args, **kwargs)

    def refuse_forward(self, *args, **kwargs):
        calls["forward"] += 1
        raise AssertionError("the masked-AR loop went through the checked forward")

    monkeypatch.setattr(type(model.model), "forward_embedded", counting_inner)
    monkeypatch.setattr(type(model.model), "forward", refuse_forward)
    model.generate(**prompts, **FAST, generator=seeds(1, 2))
    assert calls == {"forward": 0, "inner": FAST["num_iter"]}
