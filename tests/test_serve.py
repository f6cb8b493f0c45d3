"""`mmar serve`'s app, launched in this process on a free local port and driven through its API with gradio_client,
over the demo model (trained once per session): the judge reads the digits it draws, it names held-out digits, keeps
a conversation, streams answers, inpaints, and bad input gets a message while the server keeps serving."""

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from app_server import running_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from trained_demo import trained_demo_run

from modeling_mmar import MMARPipeline
from training.app import ChatTurn, MMARAppEngine
from training.data import DIGITS_QUESTION, digit_caption, first_named_digit, load_digits_dataset
from training.inpainting_eval import heldout_digit_images
from training.judge import get_judge
from training.serve import training_examples

README = Path(__file__).resolve().parents[1] / "README.md"
SAMPLING = (3.0, 16, 50, 1.0)  # guidance scale, num_iter (masked-AR steps), head steps, temperature


@pytest.fixture(scope="module")
def demo_model_dir(tmp_path_factory):
    return trained_demo_run(tmp_path_factory) / "model"


@pytest.fixture(scope="module")
def served(demo_model_dir):
    prompts, question = training_examples(demo_model_dir)
    with running_app(demo_model_dir, example_prompts=prompts, default_question=question) as (url, page):
        yield Client(url, verbose=False), page


@pytest.fixture
def client(served):
    return served[0]


def generate(client, prompt, num_images=1, seed=0, sampling=SAMPLING):
    return client.predict(prompt, num_images, seed, *sampling, api_name="/generate")


def gray(path, size=None) -> np.ndarray:
    """A downloaded (enlarged) image as floats in [0, 1]; `size` shrinks it back (area average: exact)."""
    image = Image.open(path).convert("L")
    if size is not None:
        image = image.resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float64) / 255.0


def editor(background, layers=()):
    """An image editor's value as an API client sends it: the picture and the layers painted over it."""
    return {"background": handle_file(str(background)), "layers": [handle_file(str(p)) for p in layers],
            "composite": handle_file(str(background))}


def first_of_each_digit(count_per_digit=1):
    images, labels = heldout_digit_images()  # the held-out split: never trained on
    chosen = [i for d in range(10) for i in np.flatnonzero(labels == d)[:count_per_digit]]
    return [images[i] for i in chosen], labels[chosen]


def test_example_prompts_are_the_models_training_captions(served, demo_model_dir):
    prompts, question = training_examples(demo_model_dir)
    assert len(prompts) == 10 and set(prompts) <= set(load_digits_dataset()["train"]["caption"])
    assert [first_named_digit(p) for p in prompts] == list(range(10)) and question == DIGITS_QUESTION
    _, page = served
    examples = [c["props"]["samples"] for c in page.config["components"] if c.get("type") == "dataset"]
    assert examples == [[[p] for p in prompts]]  # shown under the Generate tab's prompt box


def test_the_judge_reads_the_digits_the_app_draws(client):
    asked, read = [], []
    for digit in range(10):
        seed = 1000 + 2 * digit  # seeds the demo never evaluated
        gallery, seeds = generate(client, digit_caption(digit), num_images=2, seed=seed)
        assert [item["caption"] for item in gallery] == [f"seed {seed}", f"seed {seed + 1}"]
        assert seeds == f"{seed}, {seed + 1}"
        read += get_judge(0).predict(np.stack([gray(item["image"]) for item in gallery])).tolist()
        asked += [digit, digit]
    accuracy = float(np.mean(np.array(read) == np.array(asked)))
    assert accuracy >= 0.8, f"the judge read {accuracy:.0%} of the app's digits as asked ({read})"


def test_the_seed_under_an_image_reproduces_it(client, demo_model_dir):
    batch, _ = generate(client, "a handwritten three", num_images=3, seed=5)
    alone, _ = generate(client, "a handwritten three", num_images=1, seed=7)
    assert np.array_equal(gray(batch[2]["image"]), gray(alone[0]["image"]))  # image i of a batch used seed + i
    assert not np.array_equal(gray(batch[0]["image"]), gray(batch[2]["image"]))
    pipe = MMARPipeline.from_pretrained(demo_model_dir)  # the same image outside the app
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a handwritten three", generator=[torch.Generator().manual_seed(7)], num_iter=16,
                    guidance_scale=3.0, num_inference_steps=50, temperature=1.0).images[0]
    assert np.array_equal(gray(alone[0]["image"], size=8), np.asarray(expected, dtype=np.float64) / 255.0)


def test_progress_is_reported_over_the_masked_ar_steps(client):
    job = client.submit("a handwritten two", 8, 0, 3.0, 12, 250, 1.0, api_name="/generate")  # a few seconds
    bars = []
    while not job.done():
        status = job.status()
        bars += [(unit.desc, unit.length) for unit in status.progress_data or []]
        time.sleep(0.02)
    assert len(job.result()[0]) == 8
    assert ("masked-AR steps", 12) in bars, bars[:5]


def test_the_app_names_held_out_digits(client, tmp_path):
    images, labels = first_of_each_digit()
    named = []
    for i, image in enumerate(images):
        path = tmp_path / f"digit-{i}.png"
        image.resize((64, 64), Image.Resampling.NEAREST).save(path)
        messages = client.predict(editor(path), "What digit is this?", 8, False, api_name="/describe")
        assert [m["role"] for m in messages] == ["user", "user", "assistant"]  # the image, the question, the answer
        named.append(first_named_digit(messages[-1]["content"][0]["text"]))
    accuracy = float(np.mean(np.array(named) == labels))
    assert accuracy >= 0.8, f"named {accuracy:.0%} of held-out digits: {named} for {labels.tolist()}"


def test_chat_mode_keeps_the_conversation_through_the_chat_template(client, demo_model_dir, tmp_path):
    (seven, three), _ = heldout_digit_images(2)
    for image, name in ((seven, "a"), (three, "b")):
        image.resize((64, 64), Image.Resampling.NEAREST).save(tmp_path / f"{name}.png")
    client.predict(api_name="/clear_conversation")
    first = client.predict(editor(tmp_path / "a.png"), "What digit is this?", 4, True, api_name="/describe")
    second = client.predict(editor(tmp_path / "a.png"), "What digit is this?", 4, True, api_name="/describe")
    third = client.predict(editor(tmp_path / "b.png"), "What digit is this?", 4, True, api_name="/describe")
    kinds = [("file" if m["content"][0]["type"] == "file" else m["role"]) for m in third]
    # The same image is not attached twice; a new image starts its turn.
    assert kinds == ["file", "user", "assistant", "user", "assistant", "file", "user", "assistant"]
    assert third[:len(second)] == second and second[:len(first)] == first
    # Without chat mode every question starts afresh.
    alone = client.predict(editor(tmp_path / "b.png"), "What digit is this?", 4, False, api_name="/describe")
    assert len(alone) == 3

    engine = MMARAppEngine.from_folder(demo_model_dir)
    conversation = [ChatTurn("user", "What digit is this?", seven), ChatTurn("assistant", "seven"),
                    ChatTurn("user", "What digit is this?", three)]
    assert engine.chat_text(conversation) == "<bos><img>What digit is this? seven<eos><img>What digit is this?"
    inputs = engine.chat_inputs(conversation)
    assert inputs["pixel_values"].shape[0] == 2
    assert int((inputs["input_ids"] == engine.processor.boi_token_id).sum()) == 2  # two image spans


def test_answers_stream_token_by_token(demo_model_dir, tmp_path):
    # A copy of the model whose generation config asks for at least 5 new tokens: the answer then has 5 words.
    folder = tmp_path / "model"
    shutil.copytree(demo_model_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "min_new_tokens": 5}))
    (image,), _ = heldout_digit_images(1)
    image.resize((64, 64), Image.Resampling.NEAREST).save(tmp_path / "digit.png")
    with running_app(folder) as (url, _):
        job = Client(url, verbose=False).submit(editor(tmp_path / "digit.png"), "What digit is this?", 5, False,
                                                api_name="/describe")
        final = job.result()
        # Every update the client received (skipping any that carried no chat, which the client may record).
        answers = [messages[-1]["content"][0]["text"] for messages in job.outputs()
                   if isinstance(messages, list) and messages and messages[-1]["role"] == "assistant"]
    assert final[-1]["content"][0]["text"] == answers[-1] and len(answers[-1].split()) == 5
    words = [len(answer.split()) for answer in answers]
    assert words == sorted(words) and len(set(words)) >= 4, answers  # the answer grew a word at a time
    assert all(later.startswith(earlier) for earlier, later in zip(answers, answers[1:]))


def test_inpainting_completes_lower_halves_as_captioned(client, tmp_path):
    images, labels = first_of_each_digit(2)
    mask = np.zeros((64, 64, 4), dtype=np.uint8)
    mask[32:] = (255, 0, 0, 255)  # painted over the lower half
    Image.fromarray(mask, mode="RGBA").save(tmp_path / "mask.png")
    completions = []
    for i, (image, label) in enumerate(zip(images, labels)):
        image.save(tmp_path / f"digit-{i}.png")  # at the model's 8x8: the kept pixels can be compared exactly
        view, gallery, seeds = client.predict(editor(tmp_path / f"digit-{i}.png", [tmp_path / "mask.png"]),
                                              digit_caption(int(label)), 1, i, *SAMPLING, api_name="/inpaint")
        assert seeds == str(i) and gallery[0]["caption"] == f"seed {i}"
        completed = gray(gallery[0]["image"], size=8)
        original = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
        assert np.array_equal(completed[:4], original[:4])  # the unpainted half comes back exactly
        red_rows = np.asarray(Image.open(view).convert("RGB").resize((8, 8), Image.Resampling.BOX))[..., 0]
        assert red_rows[4:].min() >= 127  # the model view tints the regenerated tokens red
        completions.append(completed)
    read = get_judge(0).predict(np.stack(completions))
    assert float(np.mean(read == labels)) >= 0.8, (read.tolist(), labels.tolist())


def test_bad_input_gets_a_message_and_the_server_keeps_serving(client, tmp_path):
    def refused(api_name, *args):
        with pytest.raises(AppError) as error:
            client.predict(*args, api_name=api_name)
        message = str(error.value)
        assert "Traceback" not in message and "File \"" not in message
        return message

    assert "Type a prompt first" in refused("/generate", "", 1, 0, *SAMPLING)
    assert "Type a prompt first" in refused("/generate", "   \n", 1, 0, *SAMPLING)
    assert "keep it under 1000" in refused("/generate", "seven " * 300, 1, 0, *SAMPLING)
    assert "Masked-AR steps" in refused("/generate", "a seven", 1, 0, 3.0, 99, 50, 1.0)  # beyond the 16 tokens
    assert "Number of images" in refused("/generate", "a seven", 0, 0, *SAMPLING)
    assert "Temperature" in refused("/generate", "a seven", 1, 0, 3.0, 16, 50, 7.5)
    assert "Seed" in refused("/generate", "a seven", 1, -4, *SAMPLING)

    (tmp_path / "notes.png").write_text("not an image")
    assert "not an image" in refused("/describe", editor(tmp_path / "notes.png"), "What digit is this?", 8, False)
    Image.new("RGB", (64, 64), "black").save(tmp_path / "blank.png")
    assert "blank" in refused("/describe", editor(tmp_path / "blank.png"), "What digit is this?", 8, False)
    (digit,), _ = heldout_digit_images(1)
    digit.resize((64, 64)).save(tmp_path / "digit.png")
    assert "Type a question first" in refused("/describe", editor(tmp_path / "digit.png"), " ", 8, False)
    assert "Paint over" in refused("/inpaint", editor(tmp_path / "digit.png"), "a seven", 1, 0, *SAMPLING)
    # The demo's backbone has 128 positions: a 25-token question cannot take 128 more.
    assert "exceed the model's 128 positions" in refused("/describe", editor(tmp_path / "digit.png"),
                                                          "What digit is this?", 128, False)

    gallery, _ = generate(client, "a handwritten seven")  # still serving
    assert len(gallery) == 1


def test_words_the_model_never_saw_are_named(demo_model_dir):
    engine = MMARAppEngine.from_folder(demo_model_dir)
    assert engine.unknown_words("a handwritten dragon") == ["dragon"]
    assert engine.unknown_words("a handwritten seven") == []


def test_the_readme_client_snippet_runs_against_the_app(served, capsys):
    client, page = served
    snippet = re.search(r"<!-- app-client-snippet -->\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    exec(compile(snippet.replace("http://127.0.0.1:7860/", page.local_url), "README.md", "exec"), {})  # noqa: S102
    printed = capsys.readouterr().out.strip().splitlines()[-1]  # after gradio_client's "Loaded as API: ..."
    assert printed.startswith("0, 1, 2, 3 [") and printed.count(".png") == 4
