"""`mmar generate` and `mmar describe` on a saved tiny model + processor folder."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import build_pipeline

from modeling_mmar import MMARPipeline, default_sampling_scheduler
from training.cli import main

FAST = ["--num-iter", "4", "--num-inference-steps", "8", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """What `mmar train` leaves behind: model and processor in one folder."""
    pipe = build_pipeline()
    folder = tmp_path_factory.mktemp("model")
    pipe.model.save_pretrained(folder)
    pipe.processor.save_pretrained(folder)
    return folder, pipe


def test_generate_writes_the_pipelines_image(model_dir, tmp_path, capsys):
    folder, pipe = model_dir
    out = tmp_path / "seven.png"
    assert main(["generate", "--model", str(folder), "a handwritten seven", "--seed", "0", "-o", str(out),
                 "--no-upscale", *FAST]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    written = np.asarray(Image.open(out))
    # A folder without a scheduler/ samples with the default sampler (what `mmar train` saves there)
    default = MMARPipeline(model=pipe.model, processor=pipe.processor,
                           scheduler=default_sampling_scheduler(pipe.model.config))
    default.set_progress_bar_config(disable=True)
    expected = default("a handwritten seven", generator=[torch.Generator().manual_seed(0)], num_iter=4,
                       num_inference_steps=8).images[0]
    assert written.shape == (8, 8) and Image.open(out).mode == "L"
    np.testing.assert_array_equal(written, np.asarray(expected))


def test_generate_seeds_several_prompts_and_upscale(model_dir, tmp_path):
    folder, _ = model_dir
    out = tmp_path / "digits.png"
    main(["generate", "--model", str(folder), "a handwritten seven", "a handwritten three", "--seed", "3",
          "-o", str(out), "--upscale", "4", "--scheduler", "ddim", *FAST])
    first, second = (np.asarray(Image.open(tmp_path / f"digits-{i}.png")) for i in range(2))
    assert first.shape == (32, 32) and not np.array_equal(first, second)
    alone = tmp_path / "three.png"  # image i uses seed + i: the second image is reproducible on its own
    main(["generate", "--model", str(folder), "a handwritten three", "--seed", "4", "-o", str(alone), "--upscale",
          "4", "--scheduler", "ddim", *FAST])
    np.testing.assert_array_equal(np.asarray(Image.open(alone)), second)


def test_generate_from_a_saved_pipeline_folder(model_dir, tmp_path):
    _, pipe = model_dir
    pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "seven.png"
    main(["generate", "--model", str(tmp_path / "pipe"), "a handwritten seven", "-o", str(out), *FAST])
    assert Image.open(out).size == (64, 64)  # upscaled 8x by default: an 8x8 digit a person can see


def test_describe_answers_like_model_generate(model_dir, tmp_path, capsys, digits):
    folder, pipe = model_dir
    image_path = tmp_path / "digit.png"
    Image.fromarray((digits[0][7] * 255 / 16).astype(np.uint8), mode="L").save(image_path)
    assert main(["describe", "--model", str(folder), str(image_path), "--max-new-tokens", "3"]) == 0
    answer = capsys.readouterr().out.strip()

    processor = pipe.processor
    inputs = processor(images=[Image.open(image_path)], text=[f"{processor.image_token}What digit is this?"],
                       return_tensors="pt")
    output = pipe.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    expected = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert answer == expected.strip()


def test_a_missing_model_folder_is_reported(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", str(tmp_path / "nope"), "a handwritten seven"])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
