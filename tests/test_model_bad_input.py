"""Bad input reaches the user as a ValueError that names the problem."""

import pytest
import torch
from conftest import digits_to_pixel_values, generation_batch, tiny_config

from modeling_mmar import MMARForConditionalGeneration


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MMARForConditionalGeneration(tiny_config()).eval()


@pytest.fixture(scope="module")
def pixels():
    from sklearn.datasets import load_digits

    return digits_to_pixel_values(load_digits().images[:3].astype("float32"))


@pytest.fixture
def batch(model, pixels):
    inputs = generation_batch(model.config, pixels[:2])  # two rows, one image span each
    return {**inputs, "pixel_values": pixels[:2]}


def mask(num_images, tokens, dtype=torch.bool):
    return torch.ones(num_images, tokens, dtype=dtype)


def test_a_good_batch_runs(model, batch):
    assert torch.isfinite(model(**batch, image_mask=mask(2, 16)).loss)


@pytest.mark.parametrize("num_images", [1, 3])
def test_image_count_must_match_the_image_spans(model, batch, pixels, num_images):
    batch["pixel_values"] = pixels[:num_images]
    with pytest.raises(ValueError, match=rf"Got {num_images} image\(s\) but the sequence holds 2 image span"):
        model(**batch)


def test_image_spans_without_images_are_ordinary_text_tokens(model, batch):
    # As transformers' VLMs treat image placeholders when no images come: the <img> tokens keep their own embedding
    # and attend causally, exactly as the backbone LLM alone would run them.
    del batch["pixel_values"]
    model.eval()
    with torch.no_grad():
        states = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        llm_alone = model.model.language_model(input_ids=batch["input_ids"],
                                               attention_mask=batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(states, llm_alone, rtol=0, atol=0)


def test_image_span_of_the_wrong_length(model, batch):
    ids = batch["input_ids"].clone()
    ids[:, ids[0].tolist().index(model.config.image_token_id)] = 20  # the first span loses a token
    batch["input_ids"] = ids
    with pytest.raises(ValueError, match="exactly tokens_per_image=16 .*lengths \\[15\\]"):
        model(**batch)


def test_wrong_image_size(model, batch):
    batch["pixel_values"] = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"images are \(16, 16\) but the model expects image_size=8"):
        model(**batch)


def test_wrong_channel_count(model, batch):
    batch["pixel_values"] = batch["pixel_values"].expand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="3 channels but the model expects num_channels=1"):
        model(**batch)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(2, 8, 8), r"shape \[num_images, channels, height, width\]"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "floating-point"),
        ([[0.0]], "must be a torch.Tensor"),
    ],
    ids=["3d", "integer", "list"],
)
def test_malformed_pixel_values(model, batch, bad, message):
    batch["pixel_values"] = bad
    with pytest.raises(ValueError, match=message):
        model(**batch)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixel_values(model, batch, bad_value):
    batch["pixel_values"] = batch["pixel_values"].clone()
    batch["pixel_values"][1, 0, 3, 3] = bad_value
    with pytest.raises(ValueError, match="pixel_values contains NaN or inf"):
        model(**batch)


@pytest.mark.parametrize(
    "image_mask, message",
    [
        (mask(2, 15), r"image_mask must have shape \[num_images, tokens_per_image\] = \[2, 16\], got \(2, 15\)"),
        (mask(1, 16), r"= \[2, 16\], got \(1, 16\)"),
        (mask(32, 1), r"= \[2, 16\], got \(32, 1\)"),
        (mask(2, 16, dtype=torch.float32), "image_mask must be a bool tensor .* got torch.float32"),
        (mask(2, 16, dtype=torch.long), "image_mask must be a bool tensor .* got torch.int64"),
    ],
    ids=["short", "few-images", "flat", "float", "long"],
)
def test_bad_image_mask(model, batch, image_mask, message):
    with pytest.raises(ValueError, match=message):
        model(**batch, image_mask=image_mask)


def test_image_mask_without_images(model):
    with pytest.raises(ValueError, match="image_mask was given without images"):
        model(input_ids=torch.tensor([[1, 20, 2]]), image_mask=mask(1, 16))


def test_image_tokens_instead_of_pixels_are_checked_too(model, batch):
    tokens = model.model.encode_images(batch.pop("pixel_values"))
    assert torch.isfinite(model(**batch, image_tokens=tokens).logits).all()
    with pytest.raises(ValueError, match=r"image_tokens must have shape \[num_images, 16, 4\]"):
        model(**batch, image_tokens=tokens[:, :, :3])
    bad = tokens.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="image_tokens contains NaN or inf"):
        model(**batch, image_tokens=bad)
    with pytest.raises(ValueError, match="Pass images once, as pixel_values, image_tokens or mm_encoder_outputs"):
        model(**batch, image_tokens=tokens, pixel_values=torch.zeros(2, 1, 8, 8))


def test_ambiguous_or_missing_inputs(model, batch):
    embeds = model.get_input_embeddings()(batch["input_ids"])
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(input_ids=batch["input_ids"], inputs_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()
    with pytest.raises(ValueError, match="Got 1 image\\(s\\) but the sequence holds 2 image span"):
        model(inputs_embeds=embeds, pixel_values=batch["pixel_values"][:1])  # spans found from the <img> embedding


def test_labels_need_all_logits(model, batch):
    with pytest.raises(ValueError, match="logits_to_keep=0"):
        model(**batch, logits_to_keep=1)


@pytest.mark.parametrize("generation_mode", ["text", "image"])
def test_an_empty_prompt_is_named(model, generation_mode):
    with pytest.raises(ValueError, match="input_ids holds no tokens"):
        model.generate(input_ids=torch.zeros(1, 0, dtype=torch.long), generation_mode=generation_mode)
