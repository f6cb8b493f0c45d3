"""MMARPipeline: a diffusers DiffusionPipeline (model, processor, scheduler) for text -> image."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from diffusers import DDIMScheduler, ImagePipelineOutput
from test_image_generation import randomize_head

from modeling_mmar import MMARForConditionalGeneration, MMARPipeline, MMARScheduler
from processors import MMARProcessor, build_tokenizer

CORPUS = ["a handwritten seven", "a handwritten three", "a blurry scribble", "What digit is this? seven three"]
PROMPTS = ["a handwritten seven", "a handwritten three"]
FAST = dict(num_iter=4, num_inference_steps=8)


def seeds(*values):
    return [torch.Generator().manual_seed(v) for v in values]


def build_pipeline():
    torch.manual_seed(0)
    model = randomize_head(MMARForConditionalGeneration(tiny_config()).eval())
    processor = MMARProcessor.from_model_config(model.config, build_tokenizer(CORPUS))
    return MMARPipeline(model=model, processor=processor, scheduler=MMARScheduler())


@pytest.fixture(scope="module")
def pipe():
    pipe = build_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_returns_pil_images_equal_to_model_generate(pipe):
    out = pipe(PROMPTS, generator=seeds(1, 2), **FAST)
    assert isinstance(out, ImagePipelineOutput)
    assert [(im.mode, im.size) for im in out.images] == [("L", (8, 8))] * 2

    inputs = pipe.processor(text=PROMPTS, generation_mode="image", return_tensors="pt")
    direct = pipe.model.generate(**inputs, generation_mode="image", generator=seeds(1, 2), output_type="pil",
                                 scheduler=pipe.scheduler, show_progress=False, **FAST)
    for a, b in zip(out.images, direct):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_output_types_and_tuple_return(pipe):
    (tensor,) = pipe(PROMPTS[0], generator=seeds(1), output_type="pt", return_dict=False, **FAST)
    array = pipe(PROMPTS[0], generator=seeds(1), output_type="np", **FAST).images
    assert tensor.shape == (1, 1, 8, 8) and array.shape == (1, 8, 8, 1)
    np.testing.assert_allclose(array[..., 0], tensor[:, 0].numpy(), atol=1e-6)


def test_the_processor_post_processes_to_the_pipelines_output_types(pipe):
    """One contract for output types: decoding latents and post-processing them gives what the pipeline returns."""
    latents = pipe(PROMPTS, generator=seeds(1, 2), output_type="latent", **FAST).images
    pixels = pipe.model.model.decode_image_tokens(latents)
    for output_type in ("np", "pt"):
        from_pipe = pipe(PROMPTS, generator=seeds(1, 2), output_type=output_type, **FAST).images
        from_processor = pipe.processor.postprocess(pixels, output_type=output_type)
        assert type(from_processor) is type(from_pipe) and from_processor.dtype == from_pipe.dtype
        np.testing.assert_allclose(np.asarray(from_processor), np.asarray(from_pipe), atol=1e-6)
    pil = pipe.processor.postprocess(pixels)
    for a, b in zip(pil, pipe(PROMPTS, generator=seeds(1, 2), **FAST).images):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_progress_bar_wraps_the_masked_ar_steps(pipe):
    wrapped = []

    def progress_bar(steps):
        wrapped.append(len(steps))
        return steps

    pipe.model.generate(**pipe.processor(text=PROMPTS, generation_mode="image"), generation_mode="image",
                        progress_bar=progress_bar, **FAST)
    assert wrapped == [FAST["num_iter"]]


def test_negative_prompt_and_images_per_prompt(pipe):
    plain = pipe(PROMPTS, generator=seeds(1, 2), output_type="latent", **FAST).images
    negative = pipe(PROMPTS, negative_prompt="a blurry scribble", generator=seeds(1, 2), output_type="latent",
                    **FAST).images
    assert (plain - negative).abs().max() > 1e-3
    per_prompt = pipe(PROMPTS, negative_prompt=["a blurry scribble"] * 2, generator=seeds(1, 2),
                      output_type="latent", **FAST).images
    torch.testing.assert_close(per_prompt, negative)  # one negative for all = the same one per prompt
    with pytest.raises(ValueError, match="negative_prompt"):
        pipe(PROMPTS, negative_prompt=["a", "b", "c"], **FAST)

    several = pipe(PROMPTS, num_images_per_prompt=2, generator=seeds(1, 5, 2, 6), output_type="latent",
                   **FAST).images
    assert several.shape[0] == 4
    torch.testing.assert_close(several[[0, 2]], plain, rtol=1e-5, atol=1e-5)  # same seeds, same images
    assert (several[0] - several[1]).abs().max() > 1e-3


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "MMARPipeline"
    assert index["model"][1] == "MMARForConditionalGeneration" and index["processor"][1] == "MMARProcessor"
    assert index["scheduler"][1] == "MMARScheduler"

    loaded = MMARPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.model, MMARForConditionalGeneration) and isinstance(loaded.processor, MMARProcessor)
    assert isinstance(loaded.scheduler, MMARScheduler)
    loaded.set_progress_bar_config(disable=True)
    before = pipe(PROMPTS, generator=seeds(1, 2), output_type="latent", **FAST).images
    after = loaded(PROMPTS, generator=seeds(1, 2), output_type="latent", **FAST).images
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)


def test_ddim_swap_survives_save_and_load(tmp_path):
    pipe = build_pipeline()
    pipe.set_progress_bar_config(disable=True)
    ddpm = pipe(PROMPTS, generator=seeds(1, 2), output_type="latent", **FAST).images
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    ddim = pipe(PROMPTS, generator=seeds(1, 2), output_type="latent", **FAST).images
    assert torch.isfinite(ddim).all() and (ddim - ddpm).abs().max() > 1e-3

    pipe.save_pretrained(tmp_path)
    loaded = MMARPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.scheduler, DDIMScheduler)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(loaded(PROMPTS, generator=seeds(1, 2), output_type="latent", **FAST).images, ddim,
                               rtol=1e-6, atol=1e-6)


def test_pipeline_to_bfloat16():
    pipe = build_pipeline().to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.dtype == torch.bfloat16 and pipe.model.diffusion_head.input_proj.weight.dtype == torch.bfloat16
    images = pipe(PROMPTS, generator=seeds(1, 2), output_type="pt", **FAST).images
    assert images.dtype == torch.float32 and torch.isfinite(images).all() and images.shape == (2, 1, 8, 8)


def test_progress_bar_can_be_configured(capsys):
    pipe = build_pipeline()
    pipe.set_progress_bar_config(disable=False, desc="mmar")
    pipe(PROMPTS[0], generator=seeds(1), **FAST)
    err = capsys.readouterr().err
    assert "mmar" in err and "4/4" in err  # one tick per masked-AR step
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPTS[0], generator=seeds(1), **FAST)
    assert capsys.readouterr().err == ""
