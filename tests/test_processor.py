"""MMARProcessor: image spans, sequence conventions, chat template, decoding, save / load, any HF fast tokenizer."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import TINY_VAE, tiny_config
from transformers import AutoImageProcessor, AutoProcessor, PreTrainedTokenizerFast

from modeling_mmar import MMARForConditionalGeneration
from processors import MMARImageProcessor, MMARProcessor, add_image_tokens, build_tokenizer

CORPUS = [
    "a handwritten seven", "the digit 7", "an eight", "a handwritten zero", "the number 0",
    "What digit is this?", "seven", "eight", "zero",
]
QUESTION = "What digit is this?"


def digit_images(digits, count):
    return [PIL.Image.fromarray(np.rint(d * (255.0 / 16.0)).astype(np.uint8)) for d in digits[0][:count]]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return MMARProcessor.from_model_config(tiny_config(), tokenizer)


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_from_model_config_reads_the_token_geometry(tokenizer):
    config = tiny_config()
    processor = MMARProcessor.from_model_config(config, tokenizer)
    assert processor.num_image_tokens == config.tokens_per_image == 16
    assert processor.image_processor.image_size == config.image_size
    assert (processor.boi_token_id, processor.image_token_id, processor.eoi_token_id) == (4, 5, 6)
    with_vae = tiny_config(vae_config=TINY_VAE)  # 8x8 pixels -> 4x4 latents -> 2x2 patches
    assert MMARProcessor.from_model_config(with_vae, tokenizer).num_image_tokens == with_vae.tokens_per_image == 4
    rgb = tiny_config(image_size=16, num_channels=3, patch_size=4)
    assert MMARProcessor.from_model_config(rgb, tokenizer).image_processor.num_channels == 3


def test_understanding_sample_layout(processor, tokenizer, digits):
    batch = processor(images=digit_images(digits, 1), text=f"<img>{QUESTION}")
    L = processor.num_image_tokens
    expected = [1, 4, *[5] * L, 6, *ids_of(tokenizer, QUESTION)]
    assert batch["input_ids"].tolist() == [expected]
    assert batch["attention_mask"].tolist() == [[1] * len(expected)]
    assert batch["pixel_values"].shape == (1, 1, 8, 8)
    assert processor.find_image_spans(batch["input_ids"][0]) == [(2, 2 + L)]


def test_model_forward_accepts_processor_output(processor, digits):
    config = tiny_config()
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(config).eval()
    batch = processor(images=digit_images(digits, 1), text=f"<img>{QUESTION}")
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (1, batch["input_ids"].shape[1], config.text_config.vocab_size)
    # A training batch mixing both directions, right-padded, with labels on the answer.
    texts = [f"<img>{QUESTION} seven<eos>", "a handwritten seven<img><eos>"]
    batch = processor(images=digit_images(digits, 2), text=texts, padding_side="right")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[labels == processor.image_token_id] = -100
    image_mask = torch.zeros(2, config.tokens_per_image, dtype=torch.bool)
    image_mask[1, ::2] = True
    out = model(**batch, labels=labels, image_mask=image_mask)
    assert torch.isfinite(out.loss) and out.image_loss > 0


def test_padding_sides(processor, digits):
    texts = [f"<img>{QUESTION}", "<img>"]
    left = processor(images=digit_images(digits, 2), text=texts)  # the default: ready for batched generation
    right = processor(images=digit_images(digits, 2), text=texts, padding_side="right")
    assert right["attention_mask"][1].tolist()[-1] == 0 and left["attention_mask"][1].tolist()[0] == 0
    for batch in (right, left):
        real = batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
        assert real == [1, 4, *[5] * processor.num_image_tokens, 6]


def test_image_generation_prompts(processor, tokenizer):
    batch = processor(text=["a handwritten seven", "", "the digit 7<boi>"], generation_mode="image")
    caption = ids_of(tokenizer, "a handwritten seven")
    width = len(caption) + 2
    assert batch["input_ids"].tolist() == [
        [1, *caption, 4],
        [0] * len(caption) + [1, 4],  # the unconditional (CFG) prompt: empty caption, left-padded
        [0] * (width - 5) + [1, *ids_of(tokenizer, "the digit 7"), 4],  # a final <boi> is not doubled
    ]
    assert batch["attention_mask"][1].tolist() == [0] * len(caption) + [1, 1]
    assert "pixel_values" not in batch


def test_text_already_starting_with_bos_gets_no_second_one(processor):
    assert processor(text="<bos>seven")["input_ids"].tolist() == processor(text="seven")["input_ids"].tolist()


def test_chat_template_understanding(processor, digits):
    image = digit_images(digits, 1)[0]
    user = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}
    answer = {"role": "assistant", "content": "seven"}
    assert processor.apply_chat_template([user, answer]) == f"<bos><img>{QUESTION} seven<eos>"
    assert processor.apply_chat_template([user], add_generation_prompt=True) == f"<bos><img>{QUESTION}"
    prompt = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=True, return_dict=True)
    direct = processor(images=[image], text=f"<img>{QUESTION}")
    assert set(prompt) == {"input_ids", "attention_mask", "pixel_values"}
    torch.testing.assert_close(prompt["input_ids"], direct["input_ids"])
    torch.testing.assert_close(prompt["pixel_values"], direct["pixel_values"])
    sample = processor.apply_chat_template(
        [user, answer], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    answer_tokens = sample["input_ids"][0][torch.as_tensor(sample["assistant_masks"][0]).bool()]
    assert processor.decode(answer_tokens) == "seven <eos>"


def test_chat_template_generation(processor, digits):
    image = digit_images(digits, 1)[0]
    user = {"role": "user", "content": [{"type": "text", "text": "a handwritten seven"}]}
    drawn = {"role": "assistant", "content": [{"type": "image", "image": image}]}
    assert processor.apply_chat_template([user, drawn]) == "<bos>a handwritten seven<img><eos>"
    rendered = processor.apply_chat_template([user], add_generation_prompt=True, generation_mode="image")
    assert rendered == "<bos>a handwritten seven<boi>"
    batch = processor.apply_chat_template(
        [[user], [{"role": "user", "content": ""}]], add_generation_prompt=True, generation_mode="image",
        tokenize=True, return_dict=True,
    )
    torch.testing.assert_close(
        batch["input_ids"], processor(text=["a handwritten seven", ""], generation_mode="image")["input_ids"]
    )
    sample = processor.apply_chat_template([user, drawn], tokenize=True, return_dict=True)
    direct = processor(images=[image], text="a handwritten seven<img><eos>")
    torch.testing.assert_close(sample["input_ids"], direct["input_ids"])


def test_decoding_with_skip_special_tokens_drops_image_tokens(processor, digits):
    batch = processor(images=digit_images(digits, 2), text=[f"<img>{QUESTION} seven<eos>", "<img>"])
    span = " ".join(["<boi>", *["<img>"] * processor.num_image_tokens, "<eoi>"])
    assert processor.decode(batch["input_ids"][1]).endswith(f"<bos> {span}")  # the tokenizer's decode, as any VLM's
    assert processor.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["what digit is this? seven", ""]
    assert processor.decode(batch["input_ids"][0], skip_special_tokens=True) == "what digit is this? seven"
    generated = torch.cat([batch["input_ids"], torch.tensor([[2], [0]])], dim=1)
    assert processor.post_process_image_text_to_text(generated) == ["what digit is this? seven", ""]


def test_one_image_token_and_the_older_placeholder_still_read(processor, digits, tmp_path):
    """`processor.image_token` is the token `config.image_token_id` names; folders saved with the two-name layout
    (`image_token="<image>"`, `img_token="<img>"`) load with the same meaning, and `<image>` in text still works."""
    assert processor.image_token == "<img>" and processor.image_token_id == tiny_config().image_token_id
    images = digit_images(digits, 1)
    expected = processor(images=images, text=f"<img>{QUESTION}")["input_ids"]
    torch.testing.assert_close(processor(images=images, text=f"<image>{QUESTION}")["input_ids"], expected)
    processor.save_pretrained(tmp_path)
    config_path = tmp_path / "processor_config.json"
    saved = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**saved, "image_token": "<image>", "img_token": "<img>"}))  # older folder
    old = AutoProcessor.from_pretrained(tmp_path)
    assert (old.image_token, old.image_token_id) == ("<img>", processor.image_token_id)
    torch.testing.assert_close(old(images=images, text=f"<image>{QUESTION}")["input_ids"], expected)


def test_postprocess_inverts_the_image_processor(processor, digits):
    images = digit_images(digits, 3)
    restored = processor.postprocess(processor(images=images)["pixel_values"])
    np.testing.assert_array_equal(np.stack([np.asarray(image) for image in restored]),
                                  np.stack([np.asarray(image) for image in images]))


def test_save_and_load_round_trip(processor, tmp_path, digits):
    model = MMARForConditionalGeneration(tiny_config())
    model.save_pretrained(tmp_path)  # the processor lives next to the model
    processor.save_pretrained(tmp_path)
    for name in ("processor_config.json", "chat_template.jinja", "tokenizer.json", "processing_mmar.py"):
        assert (tmp_path / name).is_file(), name
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is MMARProcessor and loaded.chat_template == processor.chat_template
    assert (loaded.num_image_tokens, loaded.image_token_id) == (processor.num_image_tokens, processor.image_token_id)
    images, texts = digit_images(digits, 2), [f"<img>{QUESTION}", "a handwritten seven<img><eos>"]
    expected, actual = processor(images=images, text=texts), loaded(images=images, text=texts)
    assert set(actual) == set(expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key])
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is MMARImageProcessor


def test_saved_code_loads_as_remote_code(processor, tmp_path):
    """The copied processing / image-processing files import on their own (what the Hub's trust_remote_code runs)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    processor.save_pretrained(tmp_path)
    remote_class = get_class_from_dynamic_module("processing_mmar.MMARProcessor", tmp_path)
    assert remote_class is not MMARProcessor and remote_class.__name__ == "MMARProcessor"
    remote = remote_class.from_pretrained(tmp_path)
    assert remote(text="seven")["input_ids"].tolist() == processor(text="seven")["input_ids"].tolist()


@pytest.fixture(scope="module")
def byte_level_bpe():
    """A byte-level BPE trained here on a few thousand made-up words, standing in for Qwen2's tokenizer."""
    from tokenizers import ByteLevelBPETokenizer

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 8))) for _ in range(3000)]
    texts = [" ".join(words[i : i + 30]) for i in range(0, len(words), 30)] + CORPUS
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    return tokenizer


def test_any_fast_tokenizer_with_image_tokens_added(byte_level_bpe, digits, tmp_path):
    tokenizer = byte_level_bpe
    with pytest.raises(ValueError, match="add_image_tokens"):
        MMARProcessor(MMARImageProcessor(), tokenizer)
    ids = add_image_tokens(tokenizer)
    assert min(ids.values()) >= 300  # appended after the BPE vocabulary, not the embedded default's 3..6
    config = tiny_config(
        text_config={**tiny_config().text_config.to_dict(), "vocab_size": len(tokenizer), "bos_token_id": None,
                     "eos_token_id": 0, "pad_token_id": 0},
        boi_token_id=ids["boi_token"], image_token_id=ids["image_token"], eoi_token_id=ids["eoi_token"],
    )
    processor = MMARProcessor.from_model_config(config, tokenizer)
    assert processor.image_token_id == ids["image_token"]
    batch = processor(images=digit_images(digits, 1), text=f"<img>{QUESTION} seven<|endoftext|>")
    row = batch["input_ids"][0].tolist()
    L = config.tokens_per_image
    assert row[: L + 2] == [ids["boi_token"], *[ids["image_token"]] * L, ids["eoi_token"]]  # no bos: Qwen2 has none
    assert processor.decode(row, skip_special_tokens=True) == f"{QUESTION} seven"
    # The answer tokenizes the same alone and inside the sample (the collator's labels rely on it).
    answer = tokenizer(" seven<|endoftext|>", add_special_tokens=False)["input_ids"]
    assert row[-len(answer):] == answer
    prompts = processor(text=["a handwritten seven", ""], generation_mode="image")["input_ids"]
    assert prompts[:, -1].tolist() == [ids["boi_token"]] * 2
    assert prompts[1, :-1].tolist() == [0] * (prompts.shape[1] - 1)  # left padding with the pad (= eos) token
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert processor.apply_chat_template(chat, add_generation_prompt=True) == f"<img>{QUESTION}"
    with torch.no_grad():
        logits = MMARForConditionalGeneration(config).eval()(**batch).logits
    assert logits.shape == (1, len(row), len(tokenizer))
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert (loaded.boi_token_id, loaded.image_token_id, loaded.eoi_token_id) == (
        ids["boi_token"], ids["image_token"], ids["eoi_token"])
