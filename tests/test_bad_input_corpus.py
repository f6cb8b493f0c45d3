"""A corpus of bad inputs across MMAR's API edges (processor, forward, both generate modes, the pipeline,
from_pretrained and the CLI): each is refused with the exception type a user can catch and a message that names the
argument at fault, never an error from deep inside torch / transformers / safetensors and never silently accepted."""

import math
import pathlib
import re
import signal

import numpy as np
import pytest
import torch
from conftest import digits_to_pixel_values, generation_batch, tiny_config
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_mmar import MMARForConditionalGeneration, MMARPipeline, MMARScheduler
from processors import MMARProcessor, build_tokenizer

CORPUS = ["a handwritten seven", "a handwritten three", "What digit is this? seven three"]
FAST = dict(num_iter=2, num_inference_steps=2, show_progress=False)
VOCAB = 96  # the tiny Qwen2's vocabulary
MAX_POSITIONS = 256


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config()).eval()
    processor = MMARProcessor.from_model_config(model.config, build_tokenizer(CORPUS))
    pipe = MMARPipeline(model=model, processor=processor, scheduler=MMARScheduler.from_model_config(model.config))
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    pixels = digits_to_pixel_values(np.random.default_rng(0).uniform(0, 16, (2, 8, 8)).astype("float32"))
    batch = generation_batch(model.config, pixels)
    prompts = processor(text=["a handwritten seven", "a handwritten three"], generation_mode="image")
    image = Image.fromarray(np.zeros((8, 8), np.uint8), mode="L")
    return dict(model=model, processor=processor, pipe=pipe, folder=folder, pixels=pixels, batch=batch,
                prompts=prompts, image=image, tmp=tmp_path_factory.mktemp("bad"))


# ------------------------------------------------------------------------------------------------ helpers
def forward(env, **changes):
    inputs = {**env["batch"], "pixel_values": env["pixels"], **changes}
    return env["model"](**{k: v for k, v in inputs.items() if v is not None})


def text_prompt(length):
    return torch.ones(1, length, dtype=torch.long) * 10


def generate_text(env, **kwargs):
    kwargs.setdefault("input_ids", text_prompt(4))
    kwargs.setdefault("max_new_tokens", 2)
    return env["model"].generate(**kwargs, do_sample=False)


def generate_image(env, **changes):
    inputs = {**env["prompts"], **FAST, **changes}
    return env["model"].generate(**{k: v for k, v in inputs.items() if v is not None}, generation_mode="image")


def pipe_call(env, **changes):
    kwargs = {"prompt": "a handwritten seven", "num_iter": 2, "num_inference_steps": 2, **changes}
    return env["pipe"](**kwargs)


def broken_copy(env, name, content):
    """A copy of the saved model whose model.safetensors is replaced by `content` (truncated, empty, garbage)."""
    import shutil

    folder = env["tmp"] / name
    shutil.copytree(env["folder"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(content(weights.read_bytes()))
    return folder


def nan():
    return float("nan")


# (id, call, exception, regex that the message must contain: the argument or the thing at fault)
FORWARD_CASES = [
    ("input_ids-float", lambda e: forward(e, input_ids=e["batch"]["input_ids"].float()), ValueError,
     "input_ids must hold integer token ids"),
    ("input_ids-bool", lambda e: forward(e, input_ids=e["batch"]["input_ids"] > 0), ValueError, "input_ids.*dtype"),
    ("input_ids-1d", lambda e: forward(e, input_ids=e["batch"]["input_ids"][0], attention_mask=None, labels=None,
                                       pixel_values=None), ValueError, r"input_ids must have shape \[batch"),
    ("input_ids-3d", lambda e: forward(e, input_ids=e["batch"]["input_ids"][None]), ValueError, "input_ids.*shape"),
    ("input_ids-negative", lambda e: forward(e, input_ids=e["batch"]["input_ids"] - 50), ValueError,
     r"input_ids holds ids in \[-\d+"),
    ("input_ids-beyond-vocab", lambda e: forward(e, input_ids=e["batch"]["input_ids"] + VOCAB), ValueError,
     "input_ids.*vocabulary has 96"),
    ("input_ids-list", lambda e: forward(e, input_ids=[[1, 2]], attention_mask=None, labels=None, pixel_values=None),
     ValueError, "input_ids must be a torch.Tensor"),
    ("attention_mask-short", lambda e: forward(e, attention_mask=e["batch"]["attention_mask"][:, :-1]), ValueError,
     "attention_mask has shape"),
    ("attention_mask-batch", lambda e: forward(e, attention_mask=e["batch"]["attention_mask"][:1]), ValueError,
     "attention_mask has shape"),
    ("attention_mask-list", lambda e: forward(e, attention_mask=[[1]]), ValueError, "attention_mask must be a"),
    ("attention_mask-3d", lambda e: forward(e, attention_mask=e["batch"]["attention_mask"][None]), ValueError,
     "attention_mask has shape"),
    ("labels-batch", lambda e: forward(e, labels=e["batch"]["labels"][:1]), ValueError, "labels has shape"),
    ("labels-length", lambda e: forward(e, labels=e["batch"]["labels"][:, 1:]), ValueError, "labels has shape"),
    ("labels-beyond-vocab", lambda e: forward(e, labels=e["batch"]["labels"].clamp(min=0) + VOCAB), ValueError,
     "labels holds ids.*outside the vocabulary"),
    ("labels-negative", lambda e: forward(e, labels=e["batch"]["labels"].masked_fill(
        e["batch"]["labels"] == -100, -5)), ValueError, "labels holds ids.*-100"),
    ("labels-float", lambda e: forward(e, labels=e["batch"]["labels"].float()), ValueError, "labels must hold integer"),
    ("labels-list", lambda e: forward(e, labels=[[0]]), ValueError, "labels must be a torch.Tensor"),
    ("too-long", lambda e: forward(e, input_ids=text_prompt(MAX_POSITIONS + 1), attention_mask=None, labels=None,
                                   pixel_values=None), ValueError, "max_position_embeddings is 256"),
    ("position_ids-too-far", lambda e: forward(e, position_ids=torch.arange(300, 300 + 23)[None].expand(2, -1)),
     ValueError, "max_position_embeddings"),
    ("ids-and-embeds", lambda e: forward(e, inputs_embeds=torch.zeros(2, 23, 64)), ValueError,
     "exactly one of input_ids or inputs_embeds"),
    ("embeds-2d", lambda e: forward(e, input_ids=None, pixel_values=None, labels=None, attention_mask=None,
                                    inputs_embeds=torch.zeros(23, 64)), ValueError, "inputs_embeds must be a tensor"),
    ("pixels-and-tokens", lambda e: forward(e, image_tokens=torch.zeros(2, 16, 4)), ValueError,
     "Pass images once, as pixel_values, image_tokens or mm_encoder_outputs"),
    ("pixels-without-span", lambda e: forward(e, input_ids=text_prompt(5), attention_mask=None, labels=None),
     ValueError, "Got 2 image"),
    ("features-without-pooler_output", lambda e: forward(e, pixel_values=None, mm_encoder_outputs={
        "image": BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 16, 64))}), ValueError,
     "mm_encoder_outputs\\['image'\\] has no pooler_output"),
    ("pixels-size", lambda e: forward(e, pixel_values=torch.zeros(2, 1, 16, 16)), ValueError, "image_size=8"),
    ("pixels-channels", lambda e: forward(e, pixel_values=torch.zeros(2, 3, 8, 8)), ValueError, "num_channels=1"),
    ("pixels-nan", lambda e: forward(e, pixel_values=torch.full((2, 1, 8, 8), math.nan)), ValueError,
     "pixel_values contains NaN"),
    ("pixels-uint8", lambda e: forward(e, pixel_values=torch.zeros(2, 1, 8, 8, dtype=torch.uint8)), ValueError,
     "pixel_values must be a floating-point"),
    ("pixels-numpy", lambda e: forward(e, pixel_values=np.zeros((2, 1, 8, 8), np.float32)), ValueError,
     "pixel_values must be a torch.Tensor"),
    ("image_mask-float", lambda e: forward(e, image_mask=torch.ones(2, 16)), ValueError, "image_mask must be a bool"),
    ("image_mask-shape", lambda e: forward(e, image_mask=torch.ones(2, 8, dtype=torch.bool)), ValueError,
     r"image_mask must have shape"),
    ("image_mask-without-images", lambda e: forward(e, input_ids=text_prompt(5), attention_mask=None, labels=None,
                                                    pixel_values=None, image_mask=torch.ones(1, 16, dtype=torch.bool)),
     ValueError, "image_mask was given without images"),
    ("image_tokens-shape", lambda e: forward(e, pixel_values=None, image_tokens=torch.zeros(2, 16, 5)), ValueError,
     "image_tokens must have shape"),
    ("image_tokens-inf", lambda e: forward(e, pixel_values=None, image_tokens=torch.full((2, 16, 4), math.inf)),
     ValueError, "image_tokens contains NaN or inf"),
]

TEXT_GENERATE_CASES = [
    ("text-float-ids", lambda e: generate_text(e, input_ids=text_prompt(4).float()), ValueError,
     "input_ids must hold integer"),
    ("text-ids-beyond-vocab", lambda e: generate_text(e, input_ids=text_prompt(4) + VOCAB), ValueError,
     "input_ids holds ids"),
    ("text-negative-ids", lambda e: generate_text(e, input_ids=text_prompt(4) - 20), ValueError,
     "input_ids holds ids"),
    ("text-prompt-too-long", lambda e: generate_text(e, input_ids=text_prompt(MAX_POSITIONS + 3)), ValueError,
     "max_position_embeddings is 256"),
    ("text-prompt-plus-new-too-long", lambda e: generate_text(e, input_ids=text_prompt(250), max_new_tokens=10),
     ValueError, "max_new_tokens.*max_position_embeddings"),
    ("text-mode-unknown", lambda e: e["model"].generate(text_prompt(4), generation_mode="video"), ValueError,
     "generation_mode must be one of"),
    ("text-empty-prompt", lambda e: generate_text(e, input_ids=torch.zeros(1, 0, dtype=torch.long)), ValueError,
     "input_ids holds no tokens"),
    ("text-mask-mismatch", lambda e: generate_text(e, attention_mask=torch.ones(1, 3, dtype=torch.long)),
     ValueError, "attention_mask has shape"),
]

IMAGE_GENERATE_CASES = [
    ("guidance-nan", lambda e: generate_image(e, guidance_scale=nan()), ValueError, "guidance_scale must be a finite"),
    ("guidance-inf", lambda e: generate_image(e, guidance_scale=math.inf), ValueError, "guidance_scale must be a finite"),
    ("guidance-negative", lambda e: generate_image(e, guidance_scale=-1.0), ValueError, r"guidance_scale must be in"),
    ("guidance-str", lambda e: generate_image(e, guidance_scale="3"), ValueError, "guidance_scale must be a number"),
    ("guidance-tensor", lambda e: generate_image(e, guidance_scale=torch.tensor([1.0, 2.0])), ValueError,
     "guidance_scale must be a number"),
    ("temperature-nan", lambda e: generate_image(e, temperature=nan()), ValueError, "temperature must be a finite"),
    ("temperature-negative", lambda e: generate_image(e, temperature=-0.5), ValueError, "temperature must be in"),
    ("temperature-str", lambda e: generate_image(e, temperature="hot"), ValueError, "temperature must be a number"),
    ("temperature-bool", lambda e: generate_image(e, temperature=True), ValueError, "temperature must be a number"),
    ("num_iter-zero", lambda e: generate_image(e, num_iter=0), ValueError, r"num_iter must be an integer in \[1, 16\]"),
    ("num_iter-too-many", lambda e: generate_image(e, num_iter=17), ValueError, "num_iter must be an integer in"),
    ("num_iter-float", lambda e: generate_image(e, num_iter=2.0), ValueError, "num_iter must be an integer"),
    ("num_iter-bool", lambda e: generate_image(e, num_iter=True), ValueError, "num_iter must be an integer"),
    ("steps-zero", lambda e: generate_image(e, num_inference_steps=0), ValueError, "num_inference_steps must be"),
    ("steps-float", lambda e: generate_image(e, num_inference_steps=1.5), ValueError, "num_inference_steps must be"),
    ("schedule-unknown", lambda e: generate_image(e, guidance_schedule="cosine"), ValueError,
     "guidance_schedule must be one of"),
    ("output_type-unknown", lambda e: generate_image(e, output_type="jpeg"), ValueError, "output_type must be one of"),
    ("generator-count", lambda e: generate_image(e, generator=[torch.Generator()]), ValueError,
     "generator is a list of 1"),
    ("generator-int", lambda e: generate_image(e, generator=0), ValueError, "generator must be a torch.Generator"),
    ("generator-list-of-ints", lambda e: generate_image(e, generator=[0, 1]), ValueError,
     "generator must be a torch.Generator"),
    ("callback-not-callable", lambda e: generate_image(e, callback_on_step_end="print"), ValueError,
     "callback_on_step_end must be callable"),
    ("use_cache-str", lambda e: generate_image(e, use_cache="yes"), ValueError, "use_cache must be True or False"),
    ("show_progress-int", lambda e: generate_image(e, show_progress=1), ValueError, "show_progress must be True"),
    ("scheduler-object", lambda e: generate_image(e, scheduler=object()), ValueError,
     "scheduler must be a diffusers scheduler"),
    ("scheduler-epsilon", lambda e: generate_image(e, scheduler=MMARScheduler(prediction_type="epsilon")), ValueError,
     "scheduler.config.prediction_type"),
    ("prompt-with-image-span", lambda e: generate_image(e, input_ids=e["batch"]["input_ids"], attention_mask=None),
     ValueError, "input_ids already contains an image span"),
    ("negative-count", lambda e: generate_image(e, negative_prompt_ids=torch.ones(3, 2, dtype=torch.long)),
     ValueError, "3 negative prompts for"),
    ("negative-text", lambda e: generate_image(e, negative_prompt="blurry"), ValueError,
     "negative prompt as token ids"),
    ("negative-beyond-vocab", lambda e: generate_image(e, negative_prompt_ids=torch.full((1, 2), 500)), ValueError,
     "negative_prompt_ids holds ids"),
    ("image-unknown-kwarg", lambda e: generate_image(e, max_new_tokens=8), ValueError, "does not take"),
    ("image-float-ids", lambda e: generate_image(e, input_ids=e["prompts"]["input_ids"].float()), ValueError,
     "input_ids must hold integer"),
    ("image-ids-beyond-vocab", lambda e: generate_image(e, input_ids=e["prompts"]["input_ids"] + VOCAB), ValueError,
     "input_ids holds ids"),
    ("image-prompt-too-long", lambda e: generate_image(e, input_ids=text_prompt(MAX_POSITIONS - 8), attention_mask=None),
     ValueError, "prompt plus its image span needs .* max_position_embeddings is 256"),
    ("image-generation-config", lambda e: e["model"].generate(e["prompts"]["input_ids"], e["model"].generation_config,
                                                               generation_mode="image"), ValueError,
     "keyword arguments only"),
    ("image-no-prompt", lambda e: e["model"].generate(generation_mode="image", **FAST), ValueError,
     "image generation needs input_ids"),
]

PIPELINE_CASES = [
    ("pipe-prompt-int", lambda e: pipe_call(e, prompt=7), ValueError, "prompt must be a string"),
    ("pipe-prompt-none", lambda e: pipe_call(e, prompt=None), ValueError, "prompt must be a string"),
    ("pipe-prompt-empty-list", lambda e: pipe_call(e, prompt=[]), ValueError, "prompt must be a string"),
    ("pipe-prompt-ints", lambda e: pipe_call(e, prompt=[1, 2]), ValueError, "prompt must be a string"),
    ("pipe-prompt-dict", lambda e: pipe_call(e, prompt={"a": 1}), ValueError, "prompt must be a string"),
    ("pipe-negative-int", lambda e: pipe_call(e, negative_prompt=3), ValueError, "negative_prompt must be a string"),
    ("pipe-negative-count", lambda e: pipe_call(e, prompt=["a", "b"], negative_prompt=["x", "y", "z"]), ValueError,
     "3 negative prompts for"),
    ("pipe-images-zero", lambda e: pipe_call(e, num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
    ("pipe-images-float", lambda e: pipe_call(e, num_images_per_prompt=1.5), ValueError, "num_images_per_prompt"),
    ("pipe-guidance-nan", lambda e: pipe_call(e, guidance_scale=nan()), ValueError, "guidance_scale must be a finite"),
    ("pipe-temperature-nan", lambda e: pipe_call(e, temperature=nan()), ValueError, "temperature must be a finite"),
    ("pipe-output_type", lambda e: pipe_call(e, output_type="gif"), ValueError, "output_type must be one of"),
    ("pipe-return_dict", lambda e: pipe_call(e, return_dict="no"), ValueError, "return_dict must be True or False"),
    ("pipe-num_iter-negative", lambda e: pipe_call(e, num_iter=-1), ValueError, "num_iter must be an integer in"),
    ("pipe-steps-str", lambda e: pipe_call(e, num_inference_steps="ten"), ValueError, "num_inference_steps must be"),
    ("pipe-generator-count", lambda e: pipe_call(e, generator=[torch.Generator()] * 3), ValueError,
     "generator is a list of 3"),
]

LOADING_CASES = [
    ("model-missing-path", lambda e: MMARForConditionalGeneration.from_pretrained(e["tmp"] / "nothing"),
     FileNotFoundError, "model folder .*nothing.* does not exist"),
    ("model-missing-abs-str", lambda e: MMARForConditionalGeneration.from_pretrained(str(e["tmp"] / "nothing")),
     FileNotFoundError, "model folder .*nothing.* does not exist"),
    ("model-missing-relative", lambda e: MMARForConditionalGeneration.from_pretrained("./no/such/model"),
     FileNotFoundError, "model folder './no/such/model' does not exist"),
    ("model-a-file", lambda e: MMARForConditionalGeneration.from_pretrained(e["folder"] / "config.json"),
     FileNotFoundError, "config.json.* does not exist \\(or is not a folder\\)"),
    ("model-truncated", lambda e: MMARForConditionalGeneration.from_pretrained(
        broken_copy(e, "truncated", lambda b: b[: len(b) // 2])), OSError, "model.safetensors is truncated"),
    ("model-empty-weights", lambda e: MMARForConditionalGeneration.from_pretrained(
        broken_copy(e, "empty", lambda b: b"")), OSError, "model.safetensors is truncated or not a safetensors file"),
    ("model-garbage-weights", lambda e: MMARForConditionalGeneration.from_pretrained(
        broken_copy(e, "garbage", lambda b: b"not a safetensors file at all")), OSError,
     "model.safetensors is truncated or not"),
    ("model-path-int", lambda e: MMARForConditionalGeneration.from_pretrained(3), ValueError,
     "pretrained_model_name_or_path must be a str or os.PathLike"),
    ("pipeline-missing-path", lambda e: MMARPipeline.from_pretrained(pathlib.Path(e["tmp"] / "nothing")),
     FileNotFoundError, "pipeline folder .*nothing.* does not exist"),
    ("pipeline-truncated", lambda e: MMARPipeline.from_pretrained(
        broken_copy(e, "pipe-truncated", lambda b: b[:100])), OSError, "model.safetensors is truncated"),
    ("processor-missing-path", lambda e: MMARProcessor.from_pretrained(e["tmp"] / "nothing"), FileNotFoundError,
     "processor folder .*nothing.* does not exist"),
    ("processor-missing-relative", lambda e: MMARProcessor.from_pretrained("../no/such/processor"),
     FileNotFoundError, "processor folder '../no/such/processor' does not exist"),
]

PROCESSOR_CASES = [
    ("processor-text-int", lambda e: e["processor"](text=5), ValueError, "text must be a string"),
    ("processor-text-ints", lambda e: e["processor"](text=[1, 2]), ValueError, "text must be a string"),
    ("processor-text-empty-list", lambda e: e["processor"](text=[]), ValueError, "text must be a string"),
    ("processor-nothing", lambda e: e["processor"](), ValueError, "needs text, images, or both"),
    ("processor-mode", lambda e: e["processor"](text="a", generation_mode="audio"), ValueError,
     "generation_mode must be one of"),
    ("processor-image-mode-with-images", lambda e: e["processor"](text="a", images=e["image"], generation_mode="image"),
     ValueError, "text prompts only"),
    ("processor-image-mode-no-text", lambda e: e["processor"](generation_mode="image"), ValueError,
     "needs text prompts"),
    ("processor-too-few-images", lambda e: e["processor"](text="<img><img>seven", images=[e["image"]]),
     ValueError, "image"),
    ("processor-image-none-in-list", lambda e: e["processor"](text="<img>", images=[None]), ValueError, "image"),
    ("processor-image-str-not-a-file", lambda e: e["processor"](text="<img>", images="no-such-file.png"),
     ValueError, "no-such-file.png"),
    ("processor-image-4d-array", lambda e: e["processor"](text="<img>", images=np.zeros((1, 1, 8, 8, 3))),
     ValueError, "Image arrays must have 2"),
    ("processor-chat-role", lambda e: e["processor"].apply_chat_template(
        [{"role": "tool", "content": [{"type": "text", "text": "hi"}]}]), ValueError, "roles 'system', 'user' and 'assistant'"),
    ("processor-image-mode-truncated", lambda e: e["processor"](text="a handwritten seven", generation_mode="image",
                                                                truncation=True, max_length=2), ValueError, "<boi>"),
]


def cli(args):
    from training.cli import main

    previous = signal.getsignal(signal.SIGTERM)
    try:
        return main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


CLI_CASES = [
    ("cli-train-learning-rate", ["train", "training.learning_rate=fast"], "training.learning_rate must be a number"),
    ("cli-train-max-steps", ["train", "training.max_steps=ten"], "training.max_steps must be an integer"),
    ("cli-train-bf16", ["train", "training.bf16=perhaps"], "training.bf16 must be true or false"),
    ("cli-train-collator", ["train", "collator.mask_ratio_min=high"], "collator.mask_ratio_min must be a number"),
    ("cli-train-unknown-key", ["train", "training.max_stepz=3"], r"training\.max_stepz"),
    ("cli-train-malformed", ["train", "training.max_steps"], "must look like section.key=value"),
    ("cli-demo-budget", ["demo", "--time-budget", "-1"], "--time-budget"),
    ("cli-demo-steps", ["demo", "--max-steps", "zero"], "--max-steps"),
    ("cli-generate-guidance", ["generate", "--model", ".", "a seven", "--guidance-scale", "inf"], "--guidance-scale"),
    ("cli-generate-num-iter", ["generate", "--model", ".", "a seven", "--num-iter", "0"], "--num-iter"),
    ("cli-generate-missing-model", ["generate", "--model", "no/such/folder", "a seven"], "no/such/folder"),
    ("cli-describe-missing-image", ["describe", "--model", ".", "missing.png"], "missing.png"),
    ("cli-export-missing-model", ["export", "no-such-model", "out"], "no-such-model"),
    ("cli-finetune-config", ["finetune", "--config", "no-such.yaml"], "no-such.yaml"),
]

ALL_CASES = FORWARD_CASES + TEXT_GENERATE_CASES + IMAGE_GENERATE_CASES + PIPELINE_CASES + LOADING_CASES + PROCESSOR_CASES


@pytest.mark.parametrize(("call", "error", "named"), [case[1:] for case in ALL_CASES],
                         ids=[case[0] for case in ALL_CASES])
def test_bad_input_is_refused_by_name(env, call, error, named):
    with pytest.raises(error) as raised:
        call(env)
    assert re.search(named, str(raised.value)), str(raised.value)
    assert type(raised.value).__module__ == "builtins", "a library's own exception class leaked out"


@pytest.mark.parametrize(("args", "named"), [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES])
def test_cli_refuses_bad_input_in_one_line_with_status_2(args, named, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the demo/train commands would otherwise write next to the caller's files
    try:
        code = cli(args)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and re.search(named, err[-1]), err
    assert not any(line.startswith("Traceback") for line in err)


def test_the_corpus_is_large_enough():
    assert len(ALL_CASES) + len(CLI_CASES) >= 100
    assert len({case[0] for case in ALL_CASES + CLI_CASES}) == len(ALL_CASES) + len(CLI_CASES)


def test_good_inputs_still_work(env):
    """The corpus' baselines are valid: each call above differs from a working one by the bad argument only."""
    assert torch.isfinite(forward(env).loss)
    assert generate_text(env).shape == (1, 6)
    assert generate_image(env, output_type="latent").shape == (2, 16, 4)
    assert len(pipe_call(env).images) == 1
    assert MMARForConditionalGeneration.from_pretrained(env["folder"]).config.tokens_per_image == 16
    assert MMARProcessor.from_pretrained(env["folder"]).num_image_tokens == 16
