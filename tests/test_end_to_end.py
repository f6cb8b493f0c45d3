"""End to end, as a user runs it: train a model with `mmar demo` (the default config, shortened), load the saved
folder with the Auto classes and `MMARPipeline`, then check that it works both ways on real digits:
the independent judge reads the digits it draws, and it names held-out digits it has never seen."""

import numpy as np
import pytest
import torch
from trained_demo import trained_demo_run
from transformers import AutoModelForImageTextToText, AutoProcessor

import processors  # noqa: F401  (registers the Auto classes; the model may have been trained in another process)
from modeling_mmar import MMARPipeline
from training.data import DIGIT_WORDS, digit_caption, first_named_digit, load_digits_dataset
from training.judge import get_judge


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory):
    """The demo's model and mask policy with half of its steps (shared with the app's tests: trained once)."""
    return trained_demo_run(tmp_path_factory) / "model"


def test_the_judge_reads_the_digits_the_pipeline_draws(trained_model_dir):
    pipe = MMARPipeline.from_pretrained(trained_model_dir)
    pipe.set_progress_bar_config(disable=True)
    digits = [d for d in range(10) for _ in range(3)]
    generators = [torch.Generator().manual_seed(1000 + i) for i in range(len(digits))]  # seeds the demo never used
    images = pipe([digit_caption(d) for d in digits], num_iter=16, guidance_scale=3.0, num_inference_steps=50,
                  generator=generators).images

    assert all(image.size == (8, 8) for image in images)
    gray = np.stack([np.asarray(image.convert("L"), dtype=np.float64) / 255.0 for image in images])
    read = get_judge(0).predict(gray)
    accuracy = float(np.mean(read == np.array(digits)))
    assert accuracy >= 0.8, f"the judge read {accuracy:.0%} of the generated digits as asked ({read.tolist()})"


def test_the_model_names_held_out_digits(trained_model_dir):
    model = AutoModelForImageTextToText.from_pretrained(trained_model_dir).eval()
    processor = AutoProcessor.from_pretrained(trained_model_dir)
    heldout = load_digits_dataset(seed=0)["heldout"].select(range(60))  # never trained on
    inputs = processor(images=heldout["image"], text=[f"{processor.image_token}What digit is this?"] * 60,
                       padding=True, padding_side="left", return_tensors="pt")
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    answers = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    named = [first_named_digit(answer) for answer in answers]
    accuracy = float(np.mean([n == label for n, label in zip(named, heldout["label"])]))
    assert accuracy >= 0.8, f"named {accuracy:.0%} of held-out digits: {answers[:10]}"
    assert set(answers) <= set(DIGIT_WORDS), answers  # answers are digit words, nothing else


def test_lower_half_completions_read_as_their_caption(trained_model_dir):
    import processors  # noqa: F401  (diffusers resolves the processor component by its module)
    from modeling_mmar import MMARInpaintPipeline
    from training.inpainting_eval import evaluate_inpainting, heldout_digit_images

    pipe = MMARInpaintPipeline.from_pretrained(trained_model_dir)
    pipe.set_progress_bar_config(disable=True)
    images, labels = heldout_digit_images(60)  # never trained on
    rates, results = evaluate_inpainting(pipe, images, labels, seed=0)

    assert rates["upper_half_max_abs_change"] < 1e-6  # the given half is the input's
    assert rates["right_caption_accuracy"] >= 0.85, rates
    assert rates["wrong_caption_follows_caption"] > 0.1, rates  # the caption steers the completion
