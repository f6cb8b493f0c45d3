"""`boi_condition`: the diffusion head also reads each image's `<boi>` state (the prompt, read by the LLM) through a
zero-initialised projection, the same way in training and in the masked-AR sampler."""

import pytest
import torch
from conftest import digits_to_pixel_values, generation_batch, tiny_config
from huggingface_hub.errors import StrictDataclassError
from test_image_generation import FAST, SEVEN, THREE, image_prompts, randomize_head, seeds

from modeling_mmar import MMARConfig, MMARForConditionalGeneration
from modeling_mmar.image_span_runner_mmar import ImageSpanRunner


def boi_model(seed=0):
    torch.manual_seed(seed)
    return randomize_head(MMARForConditionalGeneration(tiny_config(boi_condition=True))).eval()


def drawing_batch(config, digits, count=4, prompt_ids=(10, 11, 12)):
    images, _ = digits
    batch = generation_batch(config, digits_to_pixel_values(images[:count]), prompt_ids)
    batch["pixel_values"] = digits_to_pixel_values(images[:count])
    batch["image_mask"] = torch.ones(count, config.tokens_per_image, dtype=torch.bool)  # every token drawn
    return batch


def head_conditions(model, batch):
    """The conditions the forward hands to the diffusion loss."""
    seen = []
    original = model.diffusion_loss

    def spy(conditions, targets, **kwargs):
        seen.append(conditions.detach())
        return original(conditions, targets, **kwargs)

    model.diffusion_loss = spy
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        del model.diffusion_loss
    return seen[0]


def test_a_new_model_starts_as_the_papers_head(digits):
    torch.manual_seed(0)
    plain = MMARForConditionalGeneration(tiny_config()).eval()
    with_boi = MMARForConditionalGeneration(tiny_config(boi_condition=True)).eval()
    assert (with_boi.diffusion_head.boi_proj.weight == 0).all() and (with_boi.diffusion_head.boi_proj.bias == 0).all()
    missing, unexpected = with_boi.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["diffusion_head.boi_proj.bias", "diffusion_head.boi_proj.weight"]
    randomize_head(plain)
    with_boi.diffusion_head.load_state_dict(plain.diffusion_head.state_dict(), strict=False)
    batch = drawing_batch(plain.config, digits)
    torch.testing.assert_close(with_boi(**batch).image_loss, plain(**batch).image_loss, rtol=0, atol=0)


def test_each_token_is_conditioned_on_its_own_state_plus_its_images_boi_state(digits):
    model = boi_model()
    batch = drawing_batch(model.config, digits)
    with torch.no_grad():
        hidden = model.model(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    image_positions = batch["input_ids"] == model.config.image_token_id
    boi_position = (batch["input_ids"][0] == model.config.boi_token_id).nonzero().item()
    expected = hidden[image_positions] + model.diffusion_head.boi_proj(
        hidden[:, boi_position]).repeat_interleave(model.config.tokens_per_image, dim=0)
    torch.testing.assert_close(head_conditions(model, batch), expected)


def test_the_caption_reaches_the_head_through_the_boi_state(digits):
    model = boi_model()
    seven, three = (drawing_batch(model.config, digits, prompt_ids=caption) for caption in (SEVEN, THREE))
    with torch.no_grad():
        model.diffusion_head.boi_proj.weight.mul_(0)
        model.diffusion_head.boi_proj.bias.mul_(0)
    zero_path = head_conditions(model, seven) - head_conditions(model, three)
    randomize_head(model)
    boi_path = head_conditions(model, seven) - head_conditions(model, three)
    assert boi_path.abs().mean() > zero_path.abs().mean()


def test_training_gives_the_projection_a_gradient_from_zero(digits):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config(boi_condition=True)).train()
    randomize_head(model)
    with torch.no_grad():
        model.diffusion_head.boi_proj.weight.zero_()
    model(**drawing_batch(model.config, digits), generator=torch.Generator().manual_seed(0)).loss.backward()
    assert model.diffusion_head.boi_proj.weight.grad.abs().sum() > 0


def test_the_sampler_conditions_a_fully_masked_image_as_training_does(digits):
    model = boi_model()
    prompt = image_prompts(model.config, [SEVEN])
    runner = ImageSpanRunner(model, prompt["input_ids"], prompt["attention_mask"], use_cache=True, num_conditional=1)
    length = model.config.tokens_per_image
    with torch.no_grad():  # the first masked-AR step: every token masked, as in a training row with a full mask
        first_step, _ = runner.hidden_states(0, torch.zeros(1, length, model.config.token_dim),
                                             torch.ones(1, length, dtype=torch.bool))
    training = head_conditions(model, drawing_batch(model.config, digits, count=1, prompt_ids=SEVEN))
    torch.testing.assert_close(first_step[0], training, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("caches", [dict(use_cache=True, token_cache_interval=None),
                                    dict(use_cache=True, token_cache_interval=2, guidance_cache_interval=2)])
def test_cached_sampling_matches_the_reference_path_and_uses_the_boi_path(caches):
    model = boi_model()
    prompts = image_prompts(model.config, [SEVEN, THREE])
    kwargs = dict(**prompts, **FAST, guidance_scale=3.0, output_type="latent")
    reference = model.generate(**kwargs, generator=seeds(1, 2), use_cache=False)
    cached = model.generate(**kwargs, generator=seeds(1, 2), **caches)
    if caches.get("token_cache_interval") is None:
        torch.testing.assert_close(cached, reference, rtol=1e-4, atol=1e-4)
    else:  # LazyMAR's caches approximate: close, not equal
        assert (cached - reference).abs().mean() < 0.5 * reference.abs().mean()
    with torch.no_grad():
        model.diffusion_head.boi_proj.weight.zero_()
        model.diffusion_head.boi_proj.bias.zero_()
    without = model.generate(**kwargs, generator=seeds(1, 2), **caches)
    assert (without - cached).abs().amax() > 1e-3


def test_save_and_load_keep_the_projection(tmp_path):
    model = boi_model()
    model.save_pretrained(tmp_path)
    loaded = MMARForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.boi_condition is True
    torch.testing.assert_close(loaded.diffusion_head.boi_proj.weight, model.diffusion_head.boi_proj.weight)


def test_boi_condition_must_be_a_bool():
    with pytest.raises(StrictDataclassError, match="boi_condition"):
        MMARConfig(boi_condition="yes")
