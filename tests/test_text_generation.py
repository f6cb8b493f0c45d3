"""Image -> text with `model.generate` (GenerationMixin): KV cache, static cache, beam search, left padding."""

import numpy as np
import pytest
import torch
from conftest import digits_to_pixel_values, tiny_config

from modeling_mmar import MMARForConditionalGeneration

QUESTION = [20, 21, 22, 23]  # "What digit is this?" as token ids of the tiny vocabulary


def understanding_prompt(config, question):
    """`<bos> <boi> <img>*L <eoi> question` token ids (what MMARProcessor builds for "<img>question")."""
    L = config.tokens_per_image
    return [config.text_config.bos_token_id, config.boi_token_id, *[config.image_token_id] * L,
            config.eoi_token_id, *question]


def left_padded(rows, pad_id=0):
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad_id] * (length - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    return input_ids, attention_mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MMARForConditionalGeneration(tiny_config()).eval()


@pytest.fixture(scope="module")
def images(digits):
    return digits_to_pixel_values(digits[0][:3])


def new_tokens(output, prompt_ids):
    return output[:, prompt_ids.shape[1]:]


def test_images_are_encoded_once_and_cache_matches_no_cache(model, images, monkeypatch):
    input_ids, attention_mask = left_padded([understanding_prompt(model.config, QUESTION)] * 2)
    calls = []
    encode = model.model.encode_images
    monkeypatch.setattr(model.model, "encode_images", lambda pixels: calls.append(len(pixels)) or encode(pixels))

    cached = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:2],
                            max_new_tokens=6, do_sample=False)
    assert calls == [2], "both images must be encoded once, at prefill"

    calls.clear()
    uncached = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:2],
                              max_new_tokens=6, do_sample=False, use_cache=False)
    # without a cache every step re-runs the whole sequence, on the images encoded before prefill
    assert calls == [2], "generate encodes the prompt's images once (get_image_features -> mm_encoder_outputs)"
    assert new_tokens(cached, input_ids).shape == (2, 6)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)


def test_the_answer_depends_on_the_image(model, images):
    input_ids, attention_mask = left_padded([understanding_prompt(model.config, QUESTION)])
    scores = [
        model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[i:i + 1],
                       max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True).logits[0]
        for i in range(2)
    ]
    assert (scores[0] - scores[1]).abs().max() > 1e-4


def test_static_cache_matches_dynamic_cache(model, images):
    input_ids, attention_mask = left_padded([understanding_prompt(model.config, QUESTION)] * 2)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:2], max_new_tokens=6,
                  do_sample=False, output_scores=True, return_dict_in_generate=True)
    dynamic = model.generate(**kwargs)
    static = model.generate(**kwargs, cache_implementation="static")
    torch.testing.assert_close(static.sequences, dynamic.sequences, rtol=0, atol=0)
    torch.testing.assert_close(torch.stack(static.scores), torch.stack(dynamic.scores), rtol=1e-4, atol=1e-4)


def test_static_cache_keeps_the_image_bidirectional(model, images):
    """The precomputed static-cache mask must hold the image block: compare with a causal-only prefill."""
    input_ids, attention_mask = left_padded([understanding_prompt(model.config, QUESTION)])
    full = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:1]).logits[:, -1]
    static = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:1],
                            max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True,
                            cache_implementation="static").logits[0]
    torch.testing.assert_close(static, full, rtol=1e-4, atol=1e-4)


def test_left_padded_batch_equals_each_prompt_alone(model, images):
    rows = [understanding_prompt(model.config, QUESTION), understanding_prompt(model.config, QUESTION[:1]),
            understanding_prompt(model.config, [30, 31, 32, 33, 34, 35])]
    input_ids, attention_mask = left_padded(rows)
    assert (attention_mask == 0).any(), "the batch must actually be padded"
    batch = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images,
                           max_new_tokens=5, do_sample=False)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=torch.tensor([row]), pixel_values=images[i:i + 1], max_new_tokens=5,
                               do_sample=False)
        assert new_tokens(batch, input_ids)[i].tolist() == alone[0, len(row):].tolist()


def test_beam_search_expands_each_rows_images(model, images):
    rows = [understanding_prompt(model.config, QUESTION), understanding_prompt(model.config, QUESTION[:2])]
    input_ids, attention_mask = left_padded(rows)
    batch = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:2],
                           max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False)
    assert batch.shape[0] == 4
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=torch.tensor([row]), pixel_values=images[i:i + 1], max_new_tokens=4,
                               num_beams=3, num_return_sequences=2, do_sample=False)
        assert new_tokens(batch, input_ids)[2 * i:2 * i + 2].tolist() == alone[:, len(row):].tolist()


def test_beam_search_with_two_images_in_one_prompt(model, images):
    """Two image spans in one row: beam expansion must repeat the row's pair of images, in order."""
    L = model.config.tokens_per_image
    span = [model.config.boi_token_id, *[model.config.image_token_id] * L, model.config.eoi_token_id]
    rows = [[1, *span, *span, *QUESTION], [1, *span, *span, *QUESTION[:2]]]
    input_ids, attention_mask = left_padded(rows)
    pixels = torch.cat([images[:2], images[1:3]])
    batch = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels,
                           max_new_tokens=3, num_beams=2, do_sample=False)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=torch.tensor([row]), pixel_values=pixels[2 * i:2 * i + 2],
                               max_new_tokens=3, num_beams=2, do_sample=False)
        assert new_tokens(batch, input_ids)[i].tolist() == alone[0, len(row):].tolist()


def test_sampling_is_reproducible_with_a_seed(model, images):
    input_ids, attention_mask = left_padded([understanding_prompt(model.config, QUESTION)])
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:1],
                                   max_new_tokens=8, do_sample=True, top_k=0, temperature=1.5))
    assert runs[0].tolist() == runs[1].tolist()


def test_image_special_tokens_are_never_generated_in_text_mode(images):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config()).eval()
    cfg = model.config
    input_ids, attention_mask = left_padded([understanding_prompt(cfg, QUESTION)])
    first = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:1],
                           max_new_tokens=1, do_sample=False)[0, -1]
    with torch.no_grad():  # make the image tokens the model's favourite continuation
        for token in (cfg.boi_token_id, cfg.image_token_id, cfg.eoi_token_id):
            model.lm_head.weight[token] = 3 * model.lm_head.weight[first]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:1]).logits[0, -1]
    assert int(logits.argmax()) in (cfg.boi_token_id, cfg.image_token_id, cfg.eoi_token_id)

    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:1],
                         max_new_tokens=6, do_sample=False, suppress_tokens=[7])
    generated = new_tokens(out, input_ids)[0].tolist()
    assert not {cfg.boi_token_id, cfg.image_token_id, cfg.eoi_token_id, 7} & set(generated)


def test_token_type_ids_from_a_processor_are_accepted(model, images):
    input_ids, attention_mask = left_padded([understanding_prompt(model.config, QUESTION)])
    token_type_ids = (input_ids == model.config.image_token_id).long()
    with_types = model.generate(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                pixel_values=images[:1], max_new_tokens=4, do_sample=False)
    without = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:1],
                             max_new_tokens=4, do_sample=False)
    assert with_types.tolist() == without.tolist()


def test_text_mode_rejects_image_mode_arguments(model):
    with pytest.raises(ValueError, match="num_iter"):
        model.generate(input_ids=torch.tensor([[1, 20]]), max_new_tokens=2, num_iter=4)
    with pytest.raises(ValueError, match="generation_mode"):
        model.generate(input_ids=torch.tensor([[1, 20]]), generation_mode="video")


def test_peft_model_generates_text_like_the_base_model(model, images):
    from peft import LoraConfig, get_peft_model

    input_ids, attention_mask = left_padded([understanding_prompt(model.config, QUESTION)])
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:1], max_new_tokens=4,
                  do_sample=False)
    base = model.generate(**kwargs)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    try:
        assert peft_model.generate(**kwargs).tolist() == base.tolist()  # a fresh LoRA starts as the identity
    finally:
        peft_model.unload()


def test_processor_batch_generates_like_each_prompt_alone(model, digits):
    """The user-facing path: `model.generate(**processor(images=..., text=[...]))` with the processor's defaults,
    which pad on the left; the same batch padded on the right is the silently different answer it avoids."""
    from PIL import Image

    from processors import MMARProcessor, build_tokenizer

    processor = MMARProcessor.from_model_config(model.config, build_tokenizer(["What digit is this? a seven"]))
    images = [Image.fromarray((digits[0][i] * 255 / 16).astype(np.uint8), mode="L") for i in range(2)]
    texts = ["<img>What digit is this?", "<img>digit?"]
    batch = processor(images=images, text=texts)
    assert batch["attention_mask"][1, 0] == 0, "the shorter prompt is padded on the left"
    together = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1]:]
    for i in range(2):
        alone = processor(images=images[i:i + 1], text=texts[i:i + 1])
        answer = model.generate(**alone, max_new_tokens=4, do_sample=False)[:, alone["input_ids"].shape[1]:]
        assert together[i].tolist() == answer[0].tolist()


def test_image_tokens_answer_like_pixel_values_and_are_not_resent_after_prefill(model, images):
    input_ids, attention_mask = left_padded([understanding_prompt(model.config, QUESTION)] * 2)
    image_tokens = model.model.encode_images(images[:2])
    from_pixels = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images[:2],
                                 max_new_tokens=5, do_sample=False)
    from_tokens = model.generate(input_ids=input_ids, attention_mask=attention_mask, image_tokens=image_tokens,
                                 max_new_tokens=5, do_sample=False)
    torch.testing.assert_close(from_tokens, from_pixels, rtol=0, atol=0)


def test_the_pre_5_24_cache_name_still_works_with_a_deprecation_warning(model, images):
    input_ids, _ = left_padded([understanding_prompt(model.config, QUESTION)])
    prefill = model(input_ids=input_ids, pixel_values=images[:1], use_cache=True)
    next_token = prefill.logits[:, -1:].argmax(-1)
    with pytest.warns(FutureWarning, match="past_key_values"):
        old_name = model(input_ids=next_token, past_key_values=prefill.past_key_values)
    assert old_name.logits.shape[:2] == (1, 1)
