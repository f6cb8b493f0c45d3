"""The app's model: one MMAR model, processor and sampler loaded once, used by every request.

Loading takes the installed `modeling_mmar` / `processors` packages when they are importable, else the remote code
saved in the model folder (`trust_remote_code=True`): the same app runs from a checkout (`mmar serve`) and from an
exported folder or Hub Space that has only the packages of its requirements.txt. All model work runs under
`torch.inference_mode()`; each image request gets its own copy of the (stateful) diffusers scheduler, so requests
may run side by side.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer

from .inputs import InputError, check_number, check_prompt, mask_at_resolution, square_crop

MAX_IMAGES = 8
MAX_SEED = 2**31 - 1
MAX_HEAD_STEPS = 250
MAX_GUIDANCE = 20.0
MAX_TEMPERATURE = 2.0
MAX_NEW_TOKENS = 128


def installed_package_available() -> bool:
    """True when `modeling_mmar` and `processors` are importable as packages (a flat `modeling_mmar.py` of an
    exported folder, found first on sys.path when app.py runs there, does not count)."""
    for name in ("modeling_mmar", "processors"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return False
        if spec is None or spec.submodule_search_locations is None:
            return False
    return True


def load_components(model_dir, device: str | None = None, dtype: torch.dtype = torch.float32):
    """(model, processor, scheduler or None) from a saved MMAR folder; see the module docstring."""
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} holds no saved MMAR model (config.json is missing)")
    trust_remote_code = not installed_package_available()
    if not trust_remote_code:
        import modeling_mmar  # noqa: F401  (registers the Auto classes)
        import processors  # noqa: F401
    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype, trust_remote_code=trust_remote_code)
    if getattr(model.config, "model_type", None) != "mmar":
        raise ValueError(f"{str(folder)!r} does not hold an MMAR model (model_type {model.config.model_type!r})")
    processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor, load_scheduler(folder, model)


def load_scheduler(folder: Path, model):
    """The folder's saved sampler: MMARScheduler from the code beside the model class, any other by its diffusers
    class name; None (the model's default) when the folder has none."""
    config_file = folder / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        return None
    class_name = json.loads(config_file.read_text(encoding="utf-8"))["_class_name"]
    if class_name == "MMARScheduler":
        package = type(model).__module__.rpartition(".")[0]  # modeling_mmar or transformers_modules.<folder>
        scheduler_class = importlib.import_module(f"{package}.scheduling_mmar").MMARScheduler
    else:
        import diffusers

        scheduler_class = getattr(diffusers, class_name)
    return scheduler_class.from_pretrained(str(folder / "scheduler"))


class LockedStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that decodes under the engine's tokenizer lock (it decodes in the generating thread)."""

    def __init__(self, tokenizer, lock, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.lock = lock

    def put(self, value):
        with self.lock:
            super().put(value)

    def end(self):
        with self.lock:
            super().end()


@dataclass
class ChatTurn:
    """One message of a conversation: the chat template writes `image` (when given) before `text`."""

    role: str
    text: str
    image: Image.Image | None = None


@dataclass
class GenerationSettings:
    """The Generate tab's controls, checked against the model (num_iter cannot exceed its image tokens)."""

    num_images: int = 1
    seed: int = 0
    guidance_scale: float = 3.0
    num_iter: int = 16
    head_steps: int = 50
    temperature: float = 1.0

    def checked(self, tokens_per_image: int) -> GenerationSettings:
        num_images = check_number("Number of images", self.num_images, 1, MAX_IMAGES, integer=True)
        return GenerationSettings(
            num_images=num_images,
            seed=check_number("Seed", self.seed, 0, MAX_SEED - num_images + 1, integer=True),
            guidance_scale=check_number("Guidance scale", self.guidance_scale, 0.0, MAX_GUIDANCE),
            num_iter=check_number("Masked-AR steps (num_iter)", self.num_iter, 1, tokens_per_image, integer=True),
            head_steps=check_number("Head steps", self.head_steps, 1, MAX_HEAD_STEPS, integer=True),
            temperature=check_number("Temperature", self.temperature, 0.0, MAX_TEMPERATURE),
        )


@dataclass
class Generated:
    """Images with the seed each one was drawn with (image i uses seed + i, as `mmar generate` does)."""

    images: list[Image.Image]
    seeds: list[int]
    unknown_words: list[str] = field(default_factory=list)


class MMARAppEngine:
    """Text -> image, inpainting and streamed image -> text answers over one loaded MMAR model."""

    def __init__(self, model, processor, scheduler=None):
        self.model, self.processor, self.scheduler = model, processor, scheduler
        # A fast tokenizer is one Rust object whose padding settings change per call: one request at a time uses it.
        self.tokenizer_lock = threading.RLock()
        config = model.config
        self.image_size, self.num_channels = config.image_size, config.num_channels
        self.tokens_per_image = config.tokens_per_image

    @classmethod
    def from_folder(cls, model_dir, device: str | None = None) -> MMARAppEngine:
        return cls(*load_components(model_dir, device=device))

    @property
    def default_num_iter(self) -> int:
        return min(16, self.tokens_per_image)

    # ------------------------------------------------------------------------------------------ text -> image
    def unknown_words(self, prompt: str) -> list[str]:
        """Words the tokenizer maps to its unknown token (the model never saw them in training)."""
        tokenizer = self.processor.tokenizer
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is None or not prompt or not getattr(tokenizer, "is_fast", False):
            return []
        with self.tokenizer_lock:
            encoding = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        return sorted({prompt[start:end] for token, (start, end) in zip(encoding["input_ids"],
                                                                          encoding["offset_mapping"]) if token == unk})

    def _image_prompt(self, prompt: str) -> dict:
        with self.tokenizer_lock:
            batch = self.processor(text=[prompt], generation_mode="image", return_tensors="pt")
        return {key: batch[key].to(self.model.device) for key in ("input_ids", "attention_mask")}

    def generate(self, prompt: str, settings: GenerationSettings, progress: Callable | None = None,
                 image: Image.Image | None = None, mask: Image.Image | None = None) -> Generated:
        """`settings.num_images` images for `prompt`; with `image` and `mask` (painted = regenerate) the masked
        tokens of the image are regenerated and the others kept (inpainting; the prompt may then be empty).
        `progress` wraps the list of masked-AR steps (e.g. `gr.Progress().tqdm`)."""
        prompt = check_prompt(prompt, allow_empty=image is not None)
        settings = settings.checked(self.tokens_per_image)
        inputs = self._image_prompt(prompt)
        extra = {}
        if image is not None:
            if mask is None:
                raise InputError("Inpainting needs a mask: paint over the part of the image to regenerate")
            extra["image"] = self.pixel_values(image)
            extra["mask_image"] = mask_at_resolution(mask, self.image_size)
            settings.num_iter = min(settings.num_iter, self.masked_tokens(extra["mask_image"]))
        seeds = [settings.seed + i for i in range(settings.num_images)]
        with torch.inference_mode():
            images = self.model.generate(
                **inputs, **extra, generation_mode="image", num_images_per_prompt=settings.num_images,
                num_iter=settings.num_iter, guidance_scale=float(settings.guidance_scale),
                temperature=float(settings.temperature), num_inference_steps=settings.head_steps,
                scheduler=copy.deepcopy(self.scheduler) if self.scheduler is not None else None,
                generator=[torch.Generator().manual_seed(seed) for seed in seeds], output_type="pil",
                show_progress=False, progress_bar=progress,
            )
        return Generated(images=list(images), seeds=seeds, unknown_words=self.unknown_words(prompt))

    # ------------------------------------------------------------------------------------------ inpainting helpers
    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """The image as the model sees it: centre square, resized to the model's size, in the model's colours."""
        with self.tokenizer_lock:
            pixel_values = self.processor.image_processor(square_crop(image), return_tensors="pt")["pixel_values"]
        return pixel_values.to(self.model.device)

    def masked_tokens(self, mask: np.ndarray) -> int:
        side = int(round(self.tokens_per_image ** 0.5))
        cell = self.image_size // side
        cells = mask.reshape(side, cell, side, cell).max(axis=(1, 3))
        return int(cells.sum())

    def model_view(self, image: Image.Image, mask: Image.Image) -> Image.Image:
        """The image at the model's resolution with the token cells it will regenerate tinted red."""
        pixels = self.processor.image_processor.postprocess(self.pixel_values(image).cpu())[0].convert("RGB")
        array = np.asarray(pixels, dtype=np.float32)
        side = int(round(self.tokens_per_image ** 0.5))
        cell = self.image_size // side
        cells = mask_at_resolution(mask, self.image_size).reshape(side, cell, side, cell).max(axis=(1, 3))
        tint = np.kron(cells, np.ones((cell, cell), dtype=np.float32))[..., None] > 0
        array = np.where(tint, 0.5 * array + 0.5 * np.array([255.0, 0.0, 0.0]), array)
        return Image.fromarray(np.uint8(np.clip(array, 0, 255)))

    # ------------------------------------------------------------------------------------------ image -> text
    def chat_text(self, conversation: list[ChatTurn]) -> str:
        """The conversation rendered by the processor's chat template (an image item where a turn has an image)."""
        messages = []
        for turn in conversation:
            content = [{"type": "image"}] if turn.image is not None else []
            messages.append({"role": turn.role, "content": [*content, {"type": "text", "text": turn.text}]})
        with self.tokenizer_lock:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def chat_inputs(self, conversation: list[ChatTurn]) -> dict:
        """Model inputs of the conversation: its chat-template text and the turns' images, in order."""
        images = [turn.image for turn in conversation if turn.image is not None]
        text = self.chat_text(conversation)
        with self.tokenizer_lock:
            batch = self.processor(images=images or None, text=[text], return_tensors="pt")
        batch.pop("token_type_ids", None)
        return {key: value.to(self.model.device) for key, value in batch.items()}

    def stream_answer(self, conversation: list[ChatTurn], max_new_tokens: int = 16) -> Iterator[str]:
        """The answer to the last user turn, yielded as it grows (transformers' TextIteratorStreamer; greedy)."""
        max_new_tokens = check_number("Maximum new tokens", max_new_tokens, 1, MAX_NEW_TOKENS, integer=True)
        if not conversation or conversation[-1].role != "user":
            raise InputError("Ask a question first")
        inputs = self.chat_inputs(conversation)
        positions = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        length = inputs["input_ids"].shape[1]
        if positions is not None and length + max_new_tokens > positions:
            raise InputError(f"The conversation is {length} tokens long; with {max_new_tokens} new tokens it would "
                             f"exceed the model's {positions} positions. Clear the conversation (or ask for fewer "
                             "new tokens)")
        streamer = LockedStreamer(self.processor.tokenizer, self.tokenizer_lock, skip_prompt=True,
                                  skip_special_tokens=True, timeout=600)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():  # thread-local: entered in the generating thread itself
                    self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
            except BaseException as error:  # handed to the caller below, the stream is closed
                failure.append(error)
                streamer.end()

        thread = threading.Thread(target=run, name="mmar-answer", daemon=True)
        thread.start()
        answer, shown = "", None
        for piece in streamer:
            answer += piece
            if answer.strip() and answer.strip() != shown:
                shown = answer.strip()
                yield shown
        thread.join()
        if failure:
            raise failure[0]
        if shown is None:  # nothing but special tokens: an empty answer
            yield ""


__all__ = ["ChatTurn", "Generated", "GenerationSettings", "MMARAppEngine", "installed_package_available",
           "load_components", "load_scheduler"]
