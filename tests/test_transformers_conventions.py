"""MMAR follows the conventions transformers' own VLMs (Llava, Janus) keep, on real handwritten digits:
`get_image_features` returns a model output, embedded inputs may carry images, `<img>` tokens without images are
ordinary text, eval-mode losses are a function of the inputs, and the tensor-parallel plan shards the tied head."""

import pytest
import torch
from conftest import TINY_VAE, digits_to_pixel_values, generation_batch, tiny_config

from modeling_mmar import MMARForConditionalGeneration, MMARModel
from modeling_mmar.modeling_mmar import EVAL_DIFFUSION_SEED
from modeling_mmar.outputs_mmar import MMARImageFeaturesOutput


@pytest.fixture(scope="module")
def pixels():
    from sklearn.datasets import load_digits

    return digits_to_pixel_values(load_digits().images[:3].astype("float32"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MMARForConditionalGeneration(tiny_config(embedder_depth=2)).eval()


def half_masked(num_images, tokens_per_image):
    image_mask = torch.zeros(num_images, tokens_per_image, dtype=torch.bool)
    image_mask[:, ::2] = True
    return image_mask


# ------------------------------------------------------------------------------------------ get_image_features
def test_get_image_features_returns_the_embeddings_that_fill_the_image_spans(model, pixels):
    config = model.config
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels, return_dict=True)
    assert isinstance(features, MMARImageFeaturesOutput)
    assert features.pooler_output.shape == (3, config.tokens_per_image, config.text_config.hidden_size)
    torch.testing.assert_close(features.image_tokens, model.model.encode_images(pixels))

    # what generate() does: encode once, then forward with mm_encoder_outputs instead of pixels
    batch = generation_batch(config, pixels)
    with torch.no_grad():
        from_pixels = model(**batch, pixel_values=pixels).logits
        from_features = model(**batch, mm_encoder_outputs={"image": features}).logits
    torch.testing.assert_close(from_features, from_pixels, rtol=0, atol=0)


def test_get_image_features_reports_the_embedder_blocks_and_returns_tuples_on_request(model, pixels):
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
        as_tuple = model.get_image_features(pixel_values=pixels, return_dict=False)
    assert len(features.hidden_states) == model.config.embedder_depth + 1  # the blocks' input and each block's output
    assert [tuple(a.shape) for a in features.attentions] == [(3, 4, 16, 16)] * model.config.embedder_depth
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], features.last_hidden_state)


def test_an_image_mask_hides_tokens_behind_the_mask_embedding(model, pixels):
    image_mask = half_masked(3, model.config.tokens_per_image)
    with torch.no_grad():
        plain = model.get_image_features(pixel_values=pixels).last_hidden_state
        masked = model.get_image_features(pixel_values=pixels, image_mask=image_mask).last_hidden_state
    assert not torch.allclose(plain, masked)
    with pytest.raises(ValueError, match="exactly one of pixel_values or image_tokens"):
        model.get_image_features()


# ------------------------------------------------------------------------------------------ embedded inputs
def test_inputs_embeds_with_images_equal_input_ids_with_images(pixels):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config())  # training mode: the diffusion loss draws from `generator`
    batch = generation_batch(model.config, pixels)
    image_mask = half_masked(3, model.config.tokens_per_image)
    embeds = model.get_input_embeddings()(batch["input_ids"])  # the <img> positions keep the <img> embedding
    by_ids = model(**batch, pixel_values=pixels, image_mask=image_mask, generator=torch.Generator().manual_seed(1))
    by_embeds = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"],
                      pixel_values=pixels, image_mask=image_mask, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(by_embeds.logits, by_ids.logits)
    torch.testing.assert_close(by_embeds.image_loss, by_ids.image_loss)
    torch.testing.assert_close(by_embeds.text_loss, by_ids.text_loss)


# ------------------------------------------------------------------------------------------ <img> without images
@pytest.mark.parametrize("with_images", [True, False])
def test_eager_and_sdpa_agree_with_and_without_images_under_padding(pixels, with_images):
    batch = generation_batch(tiny_config(), pixels)
    batch["attention_mask"][0, :2] = 0  # a left-padded row
    outputs = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = MMARForConditionalGeneration(tiny_config(attn_implementation=implementation)).eval()
        with torch.no_grad():
            outputs[implementation] = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                            pixel_values=pixels if with_images else None).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(outputs["eager"][real], outputs["sdpa"][real], atol=1e-5, rtol=1e-4)


def test_img_tokens_without_images_attend_causally_unlike_an_image_span(model, pixels):
    # An image span is bidirectional: its first token sees the last one. Without images, <img> tokens are text.
    batch = generation_batch(model.config, pixels[:1])
    first = batch["input_ids"][0].tolist().index(model.config.image_token_id)
    changed = batch["input_ids"].clone()
    changed[0, first + model.config.tokens_per_image - 1] = 20  # the span's last token becomes a word
    with torch.no_grad():
        text_only = [model.model(input_ids=ids).last_hidden_state[0, first] for ids in (batch["input_ids"], changed)]
    torch.testing.assert_close(text_only[0], text_only[1], rtol=0, atol=0)  # causal: the earlier position is blind


# ------------------------------------------------------------------------------------------ reproducible losses
def test_an_eval_mode_loss_is_a_function_of_the_inputs(model, pixels):
    batch = {**generation_batch(model.config, pixels), "pixel_values": pixels,
             "image_mask": half_masked(3, model.config.tokens_per_image)}
    with torch.no_grad():
        first, second = model(**batch).image_loss, model(**batch).image_loss
        seeded = model(**batch, generator=torch.Generator().manual_seed(EVAL_DIFFUSION_SEED)).image_loss
        other_seed = model(**batch, generator=torch.Generator().manual_seed(EVAL_DIFFUSION_SEED + 1)).image_loss
    assert torch.equal(first, second)
    assert torch.equal(first, seeded)  # eval mode without a generator = the documented fixed seed
    assert not torch.equal(first, other_seed)


def test_training_draws_fresh_noise_unless_given_a_generator(pixels):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config()).train()
    batch = {**generation_batch(model.config, pixels), "pixel_values": pixels,
             "image_mask": half_masked(3, model.config.tokens_per_image)}
    assert not torch.equal(model(**batch).image_loss, model(**batch).image_loss)
    seeded = [model(**batch, generator=torch.Generator().manual_seed(3)).image_loss for _ in range(2)]
    assert torch.equal(*seeded)


def test_one_generator_per_image_makes_an_images_loss_independent_of_its_batch(model, pixels):
    """As diffusers pipelines take one generator per image: with a list, image i's timesteps and noise come from
    generator i alone, so a batch split in two (as over two processes) gives the same per-image losses."""
    config = model.config
    image_mask = half_masked(3, config.tokens_per_image)
    image_mask[2, 1::4] = True  # images with different numbers of masked tokens: the batch loss weighs by tokens

    def image_loss(rows, seeds):
        batch = generation_batch(config, pixels[rows])
        with torch.no_grad():
            return model(**batch, pixel_values=pixels[rows], image_mask=image_mask[rows],
                         generator=[torch.Generator().manual_seed(s) for s in seeds]).image_loss

    whole = image_loss([0, 1, 2], [10, 11, 12])
    counts = image_mask.sum(1).double()
    parts = torch.stack([image_loss([0], [10]).double(), image_loss([1, 2], [11, 12]).double()])
    weights = torch.stack([counts[0], counts[1:].sum()])
    torch.testing.assert_close(whole.double(), (parts * weights).sum() / weights.sum(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(whole, image_loss([0, 1, 2], [10, 11, 13]))  # image 2's own generator matters
    with pytest.raises(ValueError, match="list of 2 generators but 3 images"):
        image_loss([0, 1, 2], [10, 11])


def test_shift_labels_replace_labels_in_the_text_loss(model, pixels):
    # Sequence/context parallel training hands the model targets already aligned with the logits
    batch = {**generation_batch(model.config, pixels), "pixel_values": pixels}
    shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    with torch.no_grad():
        reference = model(**batch).text_loss
        from_shifted = model(**{**batch, "labels": None}, shift_labels=shifted).text_loss
    torch.testing.assert_close(from_shifted, reference)


# ------------------------------------------------------------------------------------------ parallelism, dtypes
def test_the_tensor_parallel_plan_shards_the_head_with_the_embedding_it_is_tied_to():
    model = MMARForConditionalGeneration(tiny_config(tie_word_embeddings=True))
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.tp_plan["lm_head"] == "colwise_gather_output"
    assert model.tp_plan["model.language_model.embed_tokens"] == "embedding_rowwise"


def test_the_vae_stays_float32_when_the_model_is_built_in_bfloat16():
    model = MMARModel._from_config(tiny_config(vae_config=TINY_VAE), dtype=torch.bfloat16)
    assert {p.dtype for p in model.vae.parameters()} == {torch.float32}
    assert model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert MMARModel(tiny_config())._keep_in_fp32_modules_strict == set()  # pixel patches: no VAE to keep
