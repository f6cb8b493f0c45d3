"""MMARProcessor: images + text -> `input_ids`, `attention_mask`, `pixel_values` for MMAR, and decoding back.

Sequence conventions (shared with the training collator and the image sampler):
- `processor.image_token` (`<img>`, the token `config.image_token_id` names, as in Janus and Llava) is written
  once per image in text and becomes `<boi>` + `<img>` x num_image_tokens + `<eoi>`; the span is filled from
  `pixel_values`. Tokenizers that hold the older placeholder `<image>` (the embedded default's id 3) accept it too.
- The tokenizer's bos token (if it has one) is prepended unless the text already starts with it; the tokenizer
  itself adds no special tokens.
- understanding: `<bos><img>What digit is this? seven<eos>`; generation: `<bos>a handwritten seven<img><eos>`.
- `generation_mode="image"` builds image-generation prompts `<bos>caption<boi>`, left-padded (the sampler appends
  the image span); the unconditional prompt of classifier-free guidance is the empty caption, `<bos><boi>`.
- Batches are padded on the left by default (`padding_side="right"` per call, or on the tokenizer, to change it),
  so that batched text generation equals generating each prompt alone; the training collator pads right.
"""

from __future__ import annotations

import copy
import os

import numpy as np
from transformers import AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData
from transformers.tokenization_utils_base import TextInput

from .image_processing_mmar import MMARImageProcessor
from .tokenization_mmar import LEGACY_IMAGE_PLACEHOLDER, add_image_tokens

GENERATION_MODES = ("text", "image")

# Renders the conversations in the plain sequence layout above. An assistant image turn is `<img>` (the processor
# expands it); `add_generation_prompt` adds nothing for a text answer (the model continues after the question, its
# answer starts with a space) and `<boi>` for an image (`generation_mode="image"`). A system turn is plain text
# followed by a space (the layout has no turn markers). `{% generation %}` marks what the assistant writes, for
# `return_assistant_tokens_mask=True`.
DEFAULT_CHAT_TEMPLATE = (
    "{%- if bos_token is defined and bos_token %}{{ bos_token }}{% endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception(\"MMAR's chat template supports the roles 'system', 'user' and 'assistant', got '\""
    " ~ message['role'] ~ \"'\") -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- if items and items[0]['type'] == 'text' %} {% endif -%}"
    "{%- for item in items -%}"
    "{%- if item['type'] == 'image' %}{{ image_token }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif -%}"
    "{%- endfor -%}"
    "{{- eos_token -}}"
    "{%- endgeneration -%}"
    "{%- elif message['role'] == 'system' -%}"
    "{%- for item in items if item['type'] == 'text' %}{{ item['text'] }} {% endfor -%}"
    "{%- else -%}"
    "{%- for item in items -%}"
    "{%- if item['type'] == 'image' %}{{ image_token }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and generation_mode is defined and generation_mode == 'image' -%}"
    "{{ boi_token }}"
    "{%- endif -%}"
)


class MMARProcessor(ProcessorMixin):
    r"""
    Wraps an `MMARImageProcessor` and any HF tokenizer that holds the image special tokens.

    Args:
        image_processor (`MMARImageProcessor`): Turns images into `pixel_values` [N, C, H, W] in [-1, 1].
        tokenizer (`PreTrainedTokenizerBase`): e.g. `build_tokenizer(corpus)`, or a pretrained LLM's after
            `add_image_tokens(tokenizer)` (`MMARProcessor.from_text_model` does both steps).
        chat_template (`str`, *optional*): Jinja template (default: `DEFAULT_CHAT_TEMPLATE`).
        num_image_tokens (`int`, *optional*, defaults to 16): `<img>` tokens per image, MMARConfig.tokens_per_image;
            prefer `MMARProcessor.from_model_config(config, tokenizer)`, which reads it from the config.
        image_token (`str`, *optional*, defaults to `"<img>"`): The image token: written once per image in text,
            repeated num_image_tokens times in `input_ids`.
        boi_token, eoi_token (`str`, *optional*, defaults to `"<boi>"`, `"<eoi>"`): Begin and end of an image span.
        img_token (`str`, *optional*): Only in folders saved before the image token got one name (their
            `image_token` was the `<image>` placeholder); it then becomes the image token.

    Attributes: `image_token` / `image_token_id` (`<img>`, MMARConfig.image_token_id), `boi_token(_id)`,
    `eoi_token(_id)`, `num_image_tokens`, `image_span` (the text an image becomes).

    ```python
    processor = MMARProcessor.from_model_config(config, build_tokenizer(digits_corpus()))
    batch = processor(images=image, text=f"{processor.image_token}What digit is this?")  # + pixel_values
    prompts = processor(text=["a handwritten seven", ""], generation_mode="image")  # `<bos>caption<boi>`, left-padded
    ```
    """

    # Processor-level defaults (lowest priority in `_merge_kwargs`): tensors, padded to the longest sample; the
    # processor writes bos itself, so the tokenizer must not add special tokens.
    text_kwargs = {"padding": True, "return_tensors": "pt", "add_special_tokens": False, "return_token_type_ids": False}

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        num_image_tokens: int = 16,
        image_token: str = "<img>",
        boi_token: str = "<boi>",
        eoi_token: str = "<eoi>",
        img_token: str | None = None,
        **kwargs,
    ):
        if tokenizer is None or image_processor is None:
            raise ValueError("MMARProcessor needs both an image_processor and a tokenizer")
        if not isinstance(num_image_tokens, int) or isinstance(num_image_tokens, bool) or num_image_tokens < 1:
            raise ValueError(f"MMARProcessor num_image_tokens must be a positive integer, got {num_image_tokens!r}")
        if img_token is not None:  # a folder of the two-name layout: its `image_token` was the placeholder
            image_token = img_token
        self.num_image_tokens = num_image_tokens
        self.image_token, self.boi_token, self.eoi_token = image_token, boi_token, eoi_token
        ids = {token: self._special_token_id(tokenizer, token) for token in (image_token, boi_token, eoi_token)}
        if len(set(ids.values())) != 3:
            raise ValueError(f"The image special tokens must have distinct ids, got {ids}")
        self.boi_token_id, self.image_token_id, self.eoi_token_id = ids[boi_token], ids[image_token], ids[eoi_token]
        self.image_span = boi_token + image_token * num_image_tokens + eoi_token
        # The embedded default's vocabulary keeps the older placeholder at id 3 (so that every saved model keeps its
        # ids): text written with it is read as the image token.
        legacy = LEGACY_IMAGE_PLACEHOLDER
        legacy_id = tokenizer.get_vocab().get(legacy)
        is_added_token = legacy_id is not None and legacy_id in tokenizer.added_tokens_decoder
        self.legacy_image_placeholder = legacy if legacy != image_token and is_added_token else None
        super().__init__(
            image_processor,
            tokenizer,
            chat_template=DEFAULT_CHAT_TEMPLATE if chat_template is None else chat_template,
            **kwargs,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        path = os.fspath(pretrained_model_name_or_path) if isinstance(
            pretrained_model_name_or_path, os.PathLike) else pretrained_model_name_or_path
        if isinstance(path, str) and not os.path.isdir(path) and (
                os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1):
            raise FileNotFoundError(f"processor folder {path!r} does not exist")  # not a Hub repo id either
        if isinstance(path, str) and os.path.isdir(path) and not os.path.isfile(os.path.join(path, "processor_config.json")):
            # An exported pipeline's processor/ holds only code for diffusers; the processor files are at its root.
            parent = os.path.dirname(os.path.abspath(path))
            if os.path.isfile(os.path.join(parent, "model_index.json")):
                path = parent  # reached through diffusers under trust_remote_code=True: the root's code is the same
                kwargs.setdefault("trust_remote_code", True)
        return super().from_pretrained(path, **kwargs)

    @staticmethod
    def _special_token_id(tokenizer, token: str) -> int:
        if token not in tokenizer.get_vocab() or token not in tokenizer.all_special_tokens:
            raise ValueError(
                f"The tokenizer has no special token {token!r}; add the image tokens with "
                "processors.add_image_tokens(tokenizer) (then resize the model's embeddings)"
            )
        return tokenizer.convert_tokens_to_ids(token)

    @staticmethod
    def add_image_tokens(tokenizer) -> dict[str, int]:
        """Add the image special tokens this processor lays out to any tokenizer (see `add_image_tokens`)."""
        return add_image_tokens(tokenizer)

    @classmethod
    def from_text_model(cls, tokenizer, config, chat_template: str | None = None, **image_processor_kwargs):
        """The processor of a model built by `MMARForConditionalGeneration.from_text_model(...)`: the pretrained
        LLM's tokenizer with a pad token (eos, when it has none) and the image tokens, as that builder laid them out.

        Args:
            tokenizer: the LLM's tokenizer, or its local path / Hub id (the text model's path works). A tokenizer
                object is copied: the caller's keeps its vocabulary.
            config: the new model's `MMARConfig` (image geometry, tokens per image, the image token ids).

        ```python
        model = MMARForConditionalGeneration.from_text_model("HuggingFaceTB/SmolLM2-135M-Instruct", image_size=28)
        processor = MMARProcessor.from_text_model("HuggingFaceTB/SmolLM2-135M-Instruct", model.config)
        ```
        """
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
        elif callable(getattr(tokenizer, "convert_tokens_to_ids", None)):
            tokenizer = copy.deepcopy(tokenizer)
        else:
            raise ValueError(f"tokenizer must be a transformers tokenizer or its path, got {type(tokenizer).__name__}")
        if tokenizer.pad_token is None:  # e.g. Llama: batches need padding; eos is the usual stand-in
            if tokenizer.eos_token is None:
                raise ValueError("The tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
            tokenizer.pad_token = tokenizer.eos_token
        add_image_tokens(tokenizer)
        return cls.from_model_config(config, tokenizer, chat_template=chat_template, **image_processor_kwargs)

    @classmethod
    def from_model_config(cls, config, tokenizer, chat_template: str | None = None, **image_processor_kwargs):
        """Build the processor an MMAR model expects: image size, channels and tokens per image come from `config`.

        `config` is an `MMARConfig` (read duck-typed: `image_size`, `num_channels`, `tokens_per_image`, the image
        token ids and `text_config.vocab_size`). Raises `ValueError` when the tokenizer's image-token ids differ
        from the config's or do not fit its vocabulary. Extra keyword arguments go to `MMARImageProcessor`.
        """
        image_processor = MMARImageProcessor(
            image_size=config.image_size, num_channels=config.num_channels, **image_processor_kwargs
        )
        # Batched generation needs every prompt to end at the same position: pad on the left, as transformers' VLM
        # processors do (the training collator asks for right padding itself).
        tokenizer.padding_side = "left"
        processor = cls(
            image_processor, tokenizer, chat_template=chat_template, num_image_tokens=config.tokens_per_image
        )
        for name in ("boi_token_id", "image_token_id", "eoi_token_id"):
            if getattr(config, name, getattr(processor, name)) != getattr(processor, name):
                raise ValueError(
                    f"config.{name}={getattr(config, name)} but the tokenizer gives {getattr(processor, name)}; set "
                    f"config.{name} = processor.{name}"
                )
        vocab_size = getattr(getattr(config, "text_config", None), "vocab_size", None)
        if vocab_size is not None and len(tokenizer) > vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but config.text_config.vocab_size is {vocab_size}; "
                "resize the model's token embeddings to len(tokenizer)"
            )
        return processor

    # ------------------------------------------------------------------ encoding
    def __call__(self, images: ImageInput | None = None, text: TextInput | list[TextInput] | None = None,
                 generation_mode: str | None = None, **kwargs) -> BatchFeature:
        r"""
        Args:
            images: one image or a list (see `MMARImageProcessor`); one per `processor.image_token` in `text`.
            text (`str` or `list[str]`): samples; each image token is expanded to the image's token span.
            generation_mode (`str`, *optional*): "text" (default), or "image" for image-generation prompts `<bos>text<boi>`,
                left-padded; no images and no image token allowed then.
            **kwargs: tokenizer / image-processor options (`padding`, `padding_side`, `truncation`, `max_length`,
                `return_tensors` (default "pt"), ...). Truncation never cuts an image span: the call fails instead.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` (when text is given) and `pixel_values` (when images are).
        """
        generation_mode = "text" if generation_mode is None else generation_mode
        if generation_mode not in GENERATION_MODES:
            raise ValueError(f"generation_mode must be one of {GENERATION_MODES}, got {generation_mode!r}")
        bos_added = None
        if text is not None:
            texts = [text] if isinstance(text, str) else text
            if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
                raise ValueError("text must be a string or a non-empty list of strings")
            if self.legacy_image_placeholder is not None:
                texts = [t.replace(self.legacy_image_placeholder, self.image_token) for t in texts]
            if generation_mode == "image":
                texts = self._image_generation_prompts(texts, images)
                kwargs["padding_side"] = "left"  # every prompt ends at the same position, where the span starts
            text = [self._with_bos(t) for t in texts]
            bos_added = [with_bos != t for with_bos, t in zip(text, texts)]
        elif generation_mode == "image":
            raise ValueError("generation_mode='image' needs text prompts (use '' for the unconditional prompt)")
        outputs = super().__call__(images=images, text=text, **kwargs)
        if generation_mode == "image":
            self._check_prompts_end_with_boi(outputs)
        if bos_added is not None and any(bos_added):
            self._record_bos_replacement(outputs, bos_added)
        return outputs

    def _record_bos_replacement(self, outputs: BatchFeature, bos_added: list[bool]) -> None:
        """`text_replacement_offsets` tell how the caller's text became the tokenized one: `span` in the caller's
        text, `new_span` in the tokenized text. The `<bos>` the processor puts in front is one such replacement
        (recorded as type "text"); `apply_chat_template` maps the assistant spans of the rendered template through
        these records (`return_assistant_tokens_mask`)."""
        replacements = outputs.get("text_replacement_offsets")
        if replacements is None:
            return
        bos = self.tokenizer.bos_token
        for row, added in enumerate(bos_added):
            if added:
                for record in replacements[row]:
                    record["span"] = tuple(position - len(bos) for position in record["span"])
                replacements[row].insert(0, {"type": "text", "span": (0, 0), "new_span": (0, len(bos)), "text": "",
                                             "replacement": bos})

    def _with_bos(self, text: str) -> str:
        bos = self.tokenizer.bos_token
        return text if not bos or text.startswith(bos) else bos + text

    def _image_generation_prompts(self, texts, images) -> list[str]:
        if images is not None:
            raise ValueError("generation_mode='image' takes text prompts only; the images are what gets generated")
        prompts = []
        for index, prompt in enumerate(texts):
            body = prompt[: -len(self.boi_token)] if prompt.endswith(self.boi_token) else prompt
            for token in (self.image_token, self.boi_token, self.eoi_token):
                if token in body:
                    raise ValueError(
                        f"Image-generation prompt {index} contains {token!r}; generation_mode='image' prompts are "
                        f"plain text (the processor appends {self.boi_token!r}): {prompt!r}"
                    )
            prompts.append(body + self.boi_token)
        return prompts

    def _check_prompts_end_with_boi(self, outputs: BatchFeature):
        input_ids, attention_mask = outputs["input_ids"], outputs["attention_mask"]
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            ids, mask = _as_token_lists(ids)[0][0], _as_token_lists(mask)[0][0]
            real = [token for token, keep in zip(ids, mask) if keep]
            if not real or real[-1] != self.boi_token_id:
                raise ValueError(
                    f"Image-generation prompt {row} does not end with {self.boi_token!r} after tokenization "
                    "(truncated?); raise max_length or shorten the prompt"
                )

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """One image per image token in the text, over the whole batch, in order."""
        if images is None and text is None:
            raise ValueError("MMARProcessor needs text, images, or both")
        num_images = len(self.image_processor.make_image_list(images)) if images is not None else 0
        if text is None:
            return
        placeholders = [sample.count(self.image_token) for sample in text]
        if sum(placeholders) != num_images:
            raise ValueError(
                f"The number of {self.image_token} tokens in the prompts should be the same as the number of images: "
                f"the text holds {sum(placeholders)} {self.image_token} tokens (per sample: {placeholders}) but "
                f"{num_images} images were given; "
                f"pass exactly one image per {self.image_token}, in order"
            )

    def _process_images(self, images, **kwargs):
        processed = self.image_processor(images, **kwargs)
        return processed, [self.image_span] * len(processed["pixel_values"])

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_span

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """`<img>` tokens per image, for inference engines (vLLM): every image becomes `num_image_tokens` of them,
        whatever its size (the image processor resizes it first)."""
        if image_sizes is None:
            return MultiModalData()
        return MultiModalData(num_image_tokens=[self.num_image_tokens] * len(image_sizes),
                              num_image_patches=[1] * len(image_sizes))

    def _check_special_mm_tokens(self, text: list[str], text_inputs, modalities: list[str]):
        """Every image span must survive tokenization whole: `<boi>`, exactly num_image_tokens `<img>`, `<eoi>`."""
        input_ids = text_inputs["input_ids"]
        input_ids = input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids
        for row, (sample, ids) in enumerate(zip(text, input_ids)):
            expected = sample.count(self.image_span)
            spans = self.find_image_spans(ids)
            complete = [
                (start, end)
                for start, end in spans
                if end - start == self.num_image_tokens
                and start > 0
                and ids[start - 1] == self.boi_token_id
                and end < len(ids)
                and ids[end] == self.eoi_token_id
            ]
            if len(complete) != len(spans) or len(complete) != expected:
                raise ValueError(
                    f"Sample {row} should hold {expected} whole image span(s) of {self.num_image_tokens + 2} tokens "
                    f"(<boi> + {self.num_image_tokens} <img> + <eoi>) but {len(complete)} survived tokenization "
                    f"({len(ids)} tokens): truncation would cut an image. Raise max_length, shorten the text, or "
                    "disable truncation"
                )

    def find_image_spans(self, input_ids) -> list[tuple[int, int]]:
        """[start, end) of every run of `<img>` ids in one sequence."""
        ids = np.asarray(input_ids)
        is_image = np.concatenate([[False], ids == self.image_token_id, [False]])
        edges = np.flatnonzero(np.diff(is_image.astype(np.int8)))
        return [(int(start), int(end)) for start, end in zip(edges[::2], edges[1::2])]

    # ------------------------------------------------------------------ chat template
    def apply_chat_template(self, conversation, chat_template=None, generation_mode: str = "text", **kwargs):
        """`ProcessorMixin.apply_chat_template` with MMAR's directions.

        `generation_mode="text"` (default): with `add_generation_prompt=True` the prompt ends after the user turn
        (the model writes " answer<eos>"). `generation_mode="image"`: the prompt ends with `<boi>` and is tokenized
        like `processor(text=..., generation_mode="image")` (left-padded).
        """
        if generation_mode not in GENERATION_MODES:
            raise ValueError(f"generation_mode must be one of {GENERATION_MODES}, got {generation_mode!r}")
        if chat_template is None and self.chat_template == DEFAULT_CHAT_TEMPLATE:
            _check_roles(conversation)
        # The template variables MMAR provides, for the templates that read them (any other keyword is taken for a
        # processor option, with a warning).
        template = chat_template if chat_template is not None else self.chat_template
        for name, value in (("image_token", self.image_token), ("boi_token", self.boi_token),
                            ("generation_mode", generation_mode)):
            if not isinstance(template, str) or name in template:
                kwargs.setdefault(name, value)
        if generation_mode == "image" and kwargs.get("add_generation_prompt"):
            kwargs["processor_kwargs"] = {**(kwargs.get("processor_kwargs") or {}), "generation_mode": "image"}
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    # ------------------------------------------------------------------ decoding
    # `decode`, `batch_decode` and `post_process_image_text_to_text` are ProcessorMixin's: the image tokens are
    # special tokens of the tokenizer, so `skip_special_tokens=True` drops them with bos, eos and padding.

    def postprocess(self, images, output_type: str = "pil"):
        """Generated `pixel_values` [N, C, H, W] -> images (see `MMARImageProcessor.postprocess`)."""
        return self.image_processor.postprocess(images, output_type=output_type)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


def _check_roles(conversation):
    """The default template knows three roles; say so before Jinja fails with a TemplateError."""
    conversations = conversation if conversation and isinstance(conversation[0], (list, tuple)) else [conversation]
    for messages in conversations:
        for message in messages:
            role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
            if role not in ("system", "user", "assistant"):
                raise ValueError(
                    f"MMAR's chat template supports the roles 'system', 'user' and 'assistant', got {role!r}")


def _as_token_lists(token_ids) -> tuple[list[list[int]], bool]:
    """One sequence or a batch (tensor, array, lists) -> (list of int lists, whether it was a batch)."""
    if hasattr(token_ids, "tolist"):  # torch tensors on any device, numpy arrays
        token_ids = token_ids.tolist()
    if isinstance(token_ids, (int, np.integer)):
        return [[token_ids]], False
    token_ids = list(token_ids)
    if token_ids and not isinstance(token_ids[0], (int, np.integer)):  # a batch of sequences
        return [[int(t) for t in (s.tolist() if hasattr(s, "tolist") else s)] for s in token_ids], True
    return [[int(t) for t in token_ids]], False


__all__ = ["DEFAULT_CHAT_TEMPLATE", "MMARProcessor"]
