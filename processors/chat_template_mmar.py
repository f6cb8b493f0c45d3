"""A pretrained LLM's own chat template, made to read MMAR's multimodal messages.

Chat templates of text LLMs expect `message['content']` to be a string; transformers' multimodal messages hold a
list of items (`{"type": "image"}`, `{"type": "text", "text": ...}`). `image_chat_template(template)` puts a
prelude in front of the LLM's template that flattens each list into one string, an image item becoming the
processor's `image_token` (which the processor expands into the image span). Everything else (system prompt,
role markers, generation prompt) is the LLM's own, so a chat model keeps the format it was trained with.
"""

from __future__ import annotations

# Jinja: a new `messages` list whose contents are strings; later references to `messages` (the LLM's template)
# read it. `dict(message, content=...)` keeps every other key of a message (role, name, tool calls, ...).
FLATTEN_IMAGE_ITEMS = (
    "{%- set mmar_flat = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set mmar_flat.messages = mmar_flat.messages + [message] -%}"
    "{%- else -%}"
    "{%- set mmar_text = namespace(value='') -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set mmar_text.value = mmar_text.value + image_token -%}"
    "{%- elif item['type'] == 'text' -%}{%- set mmar_text.value = mmar_text.value + item['text'] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set mmar_flat.messages = mmar_flat.messages + [dict(message, content=mmar_text.value)] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = mmar_flat.messages -%}"
)


def image_chat_template(text_template: str) -> str:
    """`text_template` (an LLM's chat template, which reads string contents) that also reads image items."""
    if not isinstance(text_template, str) or not text_template:
        raise ValueError(f"image_chat_template needs a chat template string, got {text_template!r}")
    if text_template.startswith(FLATTEN_IMAGE_ITEMS):
        return text_template
    return FLATTEN_IMAGE_ITEMS + text_template


__all__ = ["image_chat_template"]
