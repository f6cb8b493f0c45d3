"""Attention pattern: image spans bidirectional, text causal, a later image never seen by an earlier one."""

import pytest
import torch
from conftest import digits_to_pixel_values, tiny_config
from transformers import AttentionInterface, DynamicCache

from modeling_mmar import MMARForConditionalGeneration

IMPLEMENTATIONS = ["sdpa", "eager"]


@pytest.fixture(scope="module")
def pixels():
    from sklearn.datasets import load_digits

    return digits_to_pixel_values(load_digits().images[:4].astype("float32"))


def build_model(attn_implementation):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config(attn_implementation=attn_implementation)).eval()
    assert model.model.language_model.config._attn_implementation == attn_implementation
    return model


def image_span(config):
    return [config.boi_token_id] + [config.image_token_id] * config.tokens_per_image + [config.eoi_token_id]


def hidden(model, input_ids, pixel_values, **kwargs):
    with torch.no_grad():
        return model.model(input_ids=input_ids, pixel_values=pixel_values, **kwargs).last_hidden_state


def change_last_patch(pixel_values, image_index=0):
    changed = pixel_values.clone()
    changed[image_index, :, -2:, -2:] = -changed[image_index, :, -2:, -2:] + 0.5  # the image's last token
    return changed


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_image_tokens_see_their_whole_image_and_text_stays_causal(attn_implementation, pixels):
    model = build_model(attn_implementation)
    config = model.config
    ids = torch.tensor([[1, 20, 21] + image_span(config) + [22, 23, 2]])
    first_image_token = 4  # <bos> 20 21 <boi> | <img>...
    last_image_token = first_image_token + config.tokens_per_image - 1
    base = hidden(model, ids, pixels[:1])

    # A later token of the same image changes the first image token (bidirectional span) ...
    changed = hidden(model, ids, change_last_patch(pixels[:1]))
    assert (changed[0, first_image_token] - base[0, first_image_token]).abs().max() > 1e-4
    # ... but nothing before the image, and everything after it.
    torch.testing.assert_close(changed[0, :first_image_token], base[0, :first_image_token], atol=0, rtol=0)
    assert (changed[0, last_image_token + 1 :] - base[0, last_image_token + 1 :]).abs().amax(-1).min() > 1e-4

    # Also through the mask embedding: a visible later token informs a masked earlier one.
    image_mask = torch.zeros(1, config.tokens_per_image, dtype=torch.bool)
    image_mask[0, 0] = True
    masked = hidden(model, ids, pixels[:1], image_mask=image_mask)
    masked_changed = hidden(model, ids, change_last_patch(pixels[:1]), image_mask=image_mask)
    assert (masked_changed[0, first_image_token] - masked[0, first_image_token]).abs().max() > 1e-4

    # A later text token changes no earlier position.
    later_text = ids.clone()
    later_text[0, -2] = 30
    text_changed = hidden(model, later_text, pixels[:1])
    torch.testing.assert_close(text_changed[0, :-2], base[0, :-2], atol=0, rtol=0)
    assert (text_changed[0, -2:] - base[0, -2:]).abs().max() > 1e-4


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_a_later_image_cannot_influence_an_earlier_one(attn_implementation, pixels):
    model = build_model(attn_implementation)
    config = model.config
    ids = torch.tensor([[1, 20] + image_span(config) + [21] + image_span(config) + [2]])
    second_image_start = int((ids[0] == config.image_token_id).nonzero()[config.tokens_per_image])
    base = hidden(model, ids, pixels[:2])
    changed = hidden(model, ids, change_last_patch(pixels[:2], image_index=1))
    torch.testing.assert_close(changed[0, :second_image_start], base[0, :second_image_start], atol=0, rtol=0)
    assert (changed[0, second_image_start] - base[0, second_image_start]).abs().max() > 1e-4
    # The earlier image, changed, is seen by the later one.
    earlier_changed = hidden(model, ids, change_last_patch(pixels[:2], image_index=0))
    assert (earlier_changed[0, second_image_start:] - base[0, second_image_start:]).abs().amax(-1).min() > 1e-4


def test_eager_attention_weights_show_the_pattern(pixels):
    model = build_model("eager")
    config = model.config
    ids = torch.tensor([[1, 20] + image_span(config) + [21, 2]])
    with torch.no_grad():
        weights = model.model(input_ids=ids, pixel_values=pixels[:1], output_attentions=True).attentions[0][0]
    is_image = ids[0] == config.image_token_id
    allowed = torch.ones(ids.shape[1], ids.shape[1]).tril().bool() | (is_image[:, None] & is_image[None, :])
    assert (weights[:, ~allowed] == 0).all()  # every head: no weight outside causal + own image span
    assert (weights[:, allowed] > 0).all()


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_left_padded_batch_matches_each_row_alone(attn_implementation, pixels):
    model = build_model(attn_implementation)
    config = model.config
    long_row = [1, 20, 21, 22] + image_span(config) + [2]
    short_row = [1, 20] + image_span(config) + [2]
    pad = len(long_row) - len(short_row)
    ids = torch.tensor([long_row, [config.text_config.pad_token_id] * pad + short_row])
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :pad] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    image_mask = torch.zeros(2, config.tokens_per_image, dtype=torch.bool)
    image_mask[:, 0:-1:3] = True  # the last token stays visible (it is changed below)

    batched = hidden(model, ids, pixels[:2], attention_mask=attention_mask, position_ids=position_ids,
                     image_mask=image_mask)
    assert torch.isfinite(batched).all()
    for row, (token_ids, offset) in enumerate([(long_row, 0), (short_row, pad)]):
        alone = hidden(model, torch.tensor([token_ids]), pixels[row : row + 1], image_mask=image_mask[row : row + 1])
        torch.testing.assert_close(batched[row, offset:], alone[0], atol=1e-5, rtol=1e-4)

    # The bidirectional span still holds in the padded row, and the padding is never attended to. A masked token's
    # value never reaches the LLM.
    masked_token_changed = pixels[:2].clone()
    masked_token_changed[1, :, :2, :2] += 1.0  # token 0 of image 1, which is masked
    unchanged = hidden(model, ids, masked_token_changed, attention_mask=attention_mask, position_ids=position_ids,
                       image_mask=image_mask)
    torch.testing.assert_close(unchanged, batched, atol=0, rtol=0)
    changed = hidden(model, ids, change_last_patch(pixels[:2], image_index=1), attention_mask=attention_mask,
                     position_ids=position_ids, image_mask=image_mask)
    first_image_token = pad + 3
    assert (changed[1, first_image_token] - batched[1, first_image_token]).abs().max() > 1e-4
    other_pad = ids.clone()
    other_pad[1, :pad] = 30
    repadded = hidden(model, other_pad, pixels[:2], attention_mask=attention_mask, position_ids=position_ids,
                      image_mask=image_mask)
    torch.testing.assert_close(repadded[1, pad:], batched[1, pad:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_image_span_on_top_of_a_cached_prefix_equals_the_full_sequence(attn_implementation, pixels):
    # The sampler's fast path: run `prompt <boi>` once, then the (bidirectional) image span on its KV cache.
    model = build_model(attn_implementation)
    config = model.config
    prefix = torch.tensor([[1, 20, 21, config.boi_token_id]] * 2)
    span = torch.full((2, config.tokens_per_image), config.image_token_id)
    image_mask = torch.zeros(2, config.tokens_per_image, dtype=torch.bool)
    image_mask[:, 1::2] = True
    full = hidden(model, torch.cat([prefix, span], 1), pixels[:2], image_mask=image_mask)

    cache = DynamicCache(config=config.get_text_config())
    with torch.no_grad():
        model.model(input_ids=prefix, cache=cache, use_cache=True)
        cached = model.model(input_ids=span, pixel_values=pixels[:2], image_mask=image_mask, cache=cache,
                             use_cache=True).last_hidden_state
    torch.testing.assert_close(cached, full[:, prefix.shape[1]:], atol=1e-5, rtol=1e-4)


def test_an_attention_kernel_that_cannot_take_the_span_mask_is_refused(pixels):
    def causal_only_attention(module, query, key, value, attention_mask, **kwargs):  # ignores any mask
        return AttentionInterface._global_mapping["sdpa"](module, query, key, value, None, is_causal=True, **kwargs)

    AttentionInterface.register("mmar_test_causal_only", causal_only_attention)
    model = build_model("sdpa")
    model.set_attn_implementation("mmar_test_causal_only")
    config = model.config
    ids = torch.tensor([[1, 20] + image_span(config) + [2]])
    with pytest.raises(ValueError, match="bidirectional"):
        hidden(model, ids, pixels[:1])
    # Text alone never needs the span mask.
    hidden(model, torch.tensor([[1, 20, 21, 2]]), None)
