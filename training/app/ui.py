"""The Gradio page: Generate, Describe and Inpaint tabs over one `MMARAppEngine`.

Every event that touches the model shares one concurrency group (`concurrency_limit` requests at a time, the rest
wait in the queue in arrival order). Bad input becomes a `gr.Error` message in the page; an unexpected failure is
logged on the server and also shown as a one-line message, never as a stack trace, and the server keeps serving.
API names (for `gradio_client`): /generate, /describe, /clear_conversation, /inpaint.
"""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr
from PIL import Image

from .components import labelled
from .engine import (MAX_GUIDANCE, MAX_HEAD_STEPS, MAX_IMAGES, MAX_NEW_TOKENS, MAX_SEED, MAX_TEMPERATURE, ChatTurn,
                     GenerationSettings, MMARAppEngine)
from .inputs import InputError, check_not_blank, check_prompt, editor_image, editor_mask, enlarge

logger = logging.getLogger("mmar_app")
MODEL_GROUP = "mmar-model"  # the concurrency group every model event shares
SKETCH_SIDE = 256


def shown_as_messages(function):
    """Turn every failure of an event handler into a gr.Error the page shows (bad input: its own message)."""

    def as_message(error: Exception) -> gr.Error:
        if isinstance(error, gr.Error):
            return error
        if isinstance(error, (InputError, ValueError)):
            return gr.Error(" ".join(str(error).split()), print_exception=False)
        logger.exception("request failed")
        return gr.Error(f"The model failed on this request ({type(error).__name__}: {' '.join(str(error).split())})",
                        print_exception=False)

    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def streaming(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except Exception as error:
                raise as_message(error) from None
        return streaming

    @functools.wraps(function)
    def plain(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            raise as_message(error) from None
    return plain


def _same_image(a: Image.Image | None, b: Image.Image | None) -> bool:
    return a is not None and b is not None and a.size == b.size and a.tobytes() == b.tobytes()


def _chat_display(conversation: list[ChatTurn]) -> list[dict]:
    """Chatbot messages: each image as a PNG file in gradio's cache (sharp pixels), then the text."""
    from gradio.processing_utils import save_pil_to_cache
    from gradio.utils import get_upload_folder

    messages = []
    for turn in conversation:
        if turn.image is not None:
            path = save_pil_to_cache(enlarge(turn.image, 96), get_upload_folder(), format="png")
            messages.append({"role": turn.role, "content": {"path": path, "mime_type": "image/png"}})
        messages.append({"role": turn.role, "content": turn.text})
    return messages


class MMARApp:
    """The event handlers (plain methods, usable without a browser) and the page built around them."""

    def __init__(self, engine: MMARAppEngine, example_prompts=(), default_question: str = "What is in this image?",
                 title: str = "MMAR", concurrency_limit: int = 2):
        self.engine = engine
        self.example_prompts = [p for p in dict.fromkeys(example_prompts) if isinstance(p, str) and p.strip()]
        self.default_question, self.title = default_question, title
        self.concurrency_limit = concurrency_limit

    # ------------------------------------------------------------------------------------------ handlers
    @staticmethod
    def _progress_bar(progress):
        return (lambda steps: progress.tqdm(steps, desc="masked-AR steps")) if progress is not None else None

    def _gallery(self, generated) -> tuple[list[tuple[Image.Image, str]], str]:
        if generated.unknown_words:
            gr.Warning(f"The model never saw these words in training: {', '.join(generated.unknown_words)}")
        items = [(enlarge(image), f"seed {seed}") for image, seed in zip(generated.images, generated.seeds)]
        return items, ", ".join(str(seed) for seed in generated.seeds)

    def generate(self, prompt, num_images, seed, guidance_scale, num_iter, head_steps, temperature,
                 progress=gr.Progress()):
        settings = GenerationSettings(num_images, seed, guidance_scale, num_iter, head_steps, temperature)
        return self._gallery(self.engine.generate(prompt, settings, progress=self._progress_bar(progress)))

    def inpaint(self, editor_value, prompt, num_images, seed, guidance_scale, num_iter, head_steps, temperature,
                progress=gr.Progress()):
        image, mask = editor_mask(editor_value)
        settings = GenerationSettings(num_images, seed, guidance_scale, num_iter, head_steps, temperature)
        generated = self.engine.generate(prompt, settings, progress=self._progress_bar(progress), image=image,
                                         mask=mask)
        return (enlarge(self.engine.model_view(image, mask)), *self._gallery(generated))

    def describe(self, editor_value, question, max_new_tokens, chat_mode, conversation):
        """Streams (chat messages, conversation state) while the answer grows."""
        question = check_prompt(question, what="question", hint=", e.g. What is in this image?")
        image = editor_image(editor_value)
        check_not_blank(image)
        conversation = list(conversation or []) if chat_mode else []
        last_image = next((turn.image for turn in reversed(conversation) if turn.image is not None), None)
        turn = ChatTurn("user", question, None if _same_image(image, last_image) else image.copy())
        conversation.append(turn)
        answer = ChatTurn("assistant", "")
        for text in self.engine.stream_answer(conversation, max_new_tokens):
            answer.text = text
            yield _chat_display([*conversation, answer]), gr.skip()  # the kept conversation changes once, at the end
        yield _chat_display([*conversation, answer]), [*conversation, answer]

    @staticmethod
    def clear_conversation():
        return [], []

    # ------------------------------------------------------------------------------------------ page
    def _sampling_controls(self, prefix: str) -> list:
        engine = self.engine
        num_images = labelled(gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images",
                                        elem_id=f"{prefix}-num-images"))
        seed = labelled(gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                  label="Seed (image i uses seed + i)", elem_id=f"{prefix}-seed"))
        with gr.Accordion("Sampling", open=True):
            guidance = labelled(gr.Slider(0.0, MAX_GUIDANCE, value=3.0, step=0.1,
                                          label="Guidance scale (1 = no guidance)"))
            num_iter = labelled(gr.Slider(1, engine.tokens_per_image, value=engine.default_num_iter, step=1,
                                          label=f"Masked-AR steps (num_iter, up to {engine.tokens_per_image} "
                                                "image tokens)"))
            head_steps = labelled(gr.Slider(1, MAX_HEAD_STEPS, value=50, step=1,
                                            label="Head steps (diffusion steps per token)"))
            temperature = labelled(gr.Slider(0.0, MAX_TEMPERATURE, value=1.0, step=0.05, label="Temperature"))
        return [num_images, seed, guidance, num_iter, head_steps, temperature]

    def _model_event(self, trigger, function, inputs, outputs, api_name: str):
        return trigger(shown_as_messages(function), inputs=inputs, outputs=outputs, api_name=api_name,
                       concurrency_limit=self.concurrency_limit, concurrency_id=MODEL_GROUP)

    def build(self) -> gr.Blocks:
        engine = self.engine
        with gr.Blocks(title=self.title, analytics_enabled=False) as page:
            gr.Markdown(f"# {self.title}\nAn MMAR model: one LLM that reads and writes continuous image tokens "
                        f"({engine.image_size}×{engine.image_size} images, {engine.tokens_per_image} tokens each, "
                        "generated masked-autoregressively by a per-token diffusion head).")
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", placeholder=(self.example_prompts or ["a caption"])[0],
                                            elem_id="generate-prompt")
                        if self.example_prompts:
                            gr.Examples([[p] for p in self.example_prompts], inputs=[prompt],
                                        label="Example prompts (captions from the model's training data)")
                        controls = self._sampling_controls("generate")
                        button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                    with gr.Column():
                        gallery = gr.Gallery(label="Generated images (the seed under each)", format="png", columns=4,
                                             object_fit="contain", elem_id="generate-gallery", buttons=["download"])
                        seeds = gr.Textbox(label="Seeds used", interactive=False, elem_id="generate-seeds")
                for trigger, api_name in ((button.click, "generate"), (prompt.submit, "generate_on_submit")):
                    self._model_event(trigger, self.generate, [prompt, *controls], [gallery, seeds], api_name)

            with gr.Tab("Describe", id="describe"):
                conversation = gr.State([])
                with gr.Row():
                    with gr.Column():
                        canvas = Image.new("RGB", (SKETCH_SIDE, SKETCH_SIDE), "black")
                        sketch = labelled(gr.ImageEditor(
                            value={"background": canvas, "layers": [], "composite": canvas}, type="pil",
                            image_mode="RGB", sources=("upload", "clipboard"), format="png", elem_id="describe-image",
                            canvas_size=(SKETCH_SIDE, SKETCH_SIDE), layers=False,
                            brush=gr.Brush(default_size=24, colors=["#ffffff", "#000000"], default_color="#ffffff"),
                            label="Image: upload one, or draw with the brush (white ink on black)"))
                        question = gr.Textbox(value=self.default_question, label="Question",
                                              elem_id="describe-question")
                        max_new_tokens = labelled(gr.Slider(1, MAX_NEW_TOKENS, value=16, step=1,
                                                            label="Maximum new tokens"))
                        chat_mode = gr.Checkbox(False, label="Chat mode: keep the conversation (every turn, with its "
                                                              "image, goes through the chat template)")
                        with gr.Row():
                            ask = gr.Button("Ask", variant="primary", elem_id="describe-button")
                            clear = gr.Button("Clear conversation")
                    with gr.Column():
                        chatbot = gr.Chatbot(label="Conversation", elem_id="describe-chat", height=560)
                for trigger, api_name in ((ask.click, "describe"), (question.submit, "describe_on_submit")):
                    self._model_event(trigger, self.describe, [sketch, question, max_new_tokens, chat_mode,
                                                               conversation], [chatbot, conversation],
                                      api_name)
                clear.click(self.clear_conversation, outputs=[chatbot, conversation], api_name="clear_conversation")

            with gr.Tab("Inpaint", id="inpaint"):
                with gr.Row():
                    with gr.Column():
                        editor = labelled(gr.ImageEditor(
                            type="pil", image_mode="RGBA", sources=("upload", "clipboard"), format="png",
                            elem_id="inpaint-image", layers=False,
                            brush=gr.Brush(default_size=16, colors=[("#ff0000", 0.6)], default_color=("#ff0000", 0.6),
                                           color_mode="fixed"),
                            label="Image: upload it, then paint over the part to regenerate"))
                        inpaint_prompt = gr.Textbox(label="Prompt (may be empty: complete without a caption)",
                                                    elem_id="inpaint-prompt")
                        inpaint_controls = self._sampling_controls("inpaint")
                        inpaint_button = gr.Button("Inpaint", variant="primary", elem_id="inpaint-button")
                    with gr.Column():
                        model_view = gr.Image(label="What the model sees (red: the tokens it regenerates)",
                                              format="png", interactive=False, elem_id="inpaint-model-view")
                        inpainted = gr.Gallery(label="Completions (the seed under each)", format="png", columns=4,
                                               object_fit="contain", elem_id="inpaint-gallery", buttons=["download"])
                        inpaint_seeds = gr.Textbox(label="Seeds used", interactive=False)
                self._model_event(inpaint_button.click, self.inpaint, [editor, inpaint_prompt, *inpaint_controls],
                                  [model_view, inpainted, inpaint_seeds], api_name="inpaint")
        return page


__all__ = ["MMARApp", "shown_as_messages"]
