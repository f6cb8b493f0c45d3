"""MMARProcessor follows transformers' processor conventions: assistant masks stay on the assistant's tokens whatever
the chat template (the processor puts `<bos>` in front of templates that lack it), system turns render, and inference
engines can ask how many `<img>` tokens an image takes."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config

from processors import MMARProcessor, build_tokenizer

CORPUS = ["What digit is this?", "a handwritten seven", "seven", "three", "be brief", "user", "assistant"]
# A chat LLM's template in the ChatML style: turn markers, no <bos> (the LLM's own templates rarely write it).
CHATML_LIKE = (
    "{% for message in messages %}{{ message['role'] + ' ' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{% for item in message['content'] %}"
    "{{ image_token if item['type'] == 'image' else item['text'] }}{% endfor %}{{ ' ' }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def processor():
    return MMARProcessor.from_model_config(tiny_config(), build_tokenizer(CORPUS))


@pytest.fixture(scope="module")
def digit():
    from sklearn.datasets import load_digits

    return PIL.Image.fromarray(np.rint(load_digits().images[7] * 255 / 16).astype(np.uint8))


def test_assistant_masks_cover_the_answer_under_a_template_without_bos(processor, digit):
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": digit}, {"type": "text", "text": "What digit is this?"}]},
        {"role": "assistant", "content": "seven"},
    ]
    sample = processor.apply_chat_template(conversation, chat_template=CHATML_LIKE, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
    ids = sample["input_ids"][0]
    assert ids[0] == processor.tokenizer.bos_token_id  # written by the processor, not by the template
    answer = ids[torch.as_tensor(sample["assistant_masks"][0]).bool()].tolist()
    assert answer == [processor.tokenizer.convert_tokens_to_ids("seven"), processor.tokenizer.eos_token_id]


def test_a_system_turn_is_plain_text_before_the_conversation(processor):
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What digit is this?"}]
    assert processor.apply_chat_template(conversation) == "<bos>be brief What digit is this?"
    with pytest.raises(ValueError, match="roles 'system', 'user' and 'assistant', got 'tool'"):
        processor.apply_chat_template([{"role": "tool", "content": "7"}])


def test_inference_engines_can_count_the_image_tokens_of_an_image(processor, digit):
    counted = processor._get_num_multimodal_tokens(image_sizes=[(8, 8), (28, 28)])
    batch = processor(images=[digit, digit], text=["<img>What digit is this?", "<img>"])
    in_batch = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert counted["num_image_tokens"] == in_batch == [processor.num_image_tokens] * 2
