"""Standardising the diffusion head's input: a pretrained LLM's last states have a few massive dimensions (SmolLM2:
one ~48 where the median is ~0.5), which would drown the caption-dependent ones in the head's condition projection.
`model.standardize_head_conditions(**batch)` sets per-dimension statistics from a training batch (a data-dependent
initialisation); until then the head reads the states unchanged."""

import pytest
import torch
from conftest import digits_to_pixel_values, generation_batch, tiny_config
from safetensors.torch import load_file, save_file

from modeling_mmar import MMARForConditionalGeneration
from training.run_config import load_config
from training.train import build_run

from test_train import TINY


def drawing_batch(model, digits, count=8):
    images, _ = digits
    batch = generation_batch(model.config, digits_to_pixel_values(images[:count]))
    batch["pixel_values"] = digits_to_pixel_values(images[:count])
    batch["image_mask"] = torch.rand(count, model.config.tokens_per_image, generator=torch.Generator().manual_seed(0)) < 0.8
    return batch


def masked_states(model, batch):
    with torch.no_grad():
        hidden = model.model(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    return hidden[batch["input_ids"] == model.config.image_token_id][batch["image_mask"].reshape(-1)]


def with_a_massive_dimension(model, dim=5, scale=100.0):
    """Mimic a pretrained LLM: one dimension of the last states a hundred times larger than the rest."""
    with torch.no_grad():
        model.model.language_model.norm.weight[dim] = scale
    return model


def test_a_new_head_reads_the_states_unchanged(digits):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config()).eval()
    head = model.diffusion_head
    assert (head.condition_mean == 0).all() and (head.condition_std == 1).all()
    states = masked_states(model, drawing_batch(model, digits))
    torch.testing.assert_close(head.embed_condition(states), head.condition_proj(states), rtol=0, atol=0)


def test_standardised_states_reach_the_head_at_unit_scale(digits):
    torch.manual_seed(0)
    model = with_a_massive_dimension(MMARForConditionalGeneration(tiny_config()).eval())
    batch = drawing_batch(model, digits)
    states = masked_states(model, batch)
    assert states[:, 5].abs().mean() > 20 * states.abs().median()  # the massive dimension

    used = model.standardize_head_conditions(**batch)
    assert used == int(batch["image_mask"].sum())
    head = model.diffusion_head
    standardised = (states - head.condition_mean) / head.condition_std
    torch.testing.assert_close(standardised.mean(0), torch.zeros(states.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.std(0), torch.ones(states.shape[1]), atol=1e-4, rtol=0)
    # and the head's projection sees exactly those values, in training and in sampling alike
    torch.testing.assert_close(head.embed_condition(states), head.condition_proj(standardised))


def test_statistics_are_saved_and_loaded_with_the_model(digits, tmp_path):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config()).eval()
    model.standardize_head_conditions(**drawing_batch(model, digits))
    model.save_pretrained(tmp_path)
    loaded = MMARForConditionalGeneration.from_pretrained(tmp_path)
    for name in ("condition_mean", "condition_std"):
        torch.testing.assert_close(getattr(loaded.diffusion_head, name), getattr(model.diffusion_head, name),
                                   rtol=0, atol=0)


def test_a_checkpoint_saved_before_the_statistics_existed_loads_with_identity_statistics(tmp_path):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config())
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["diffusion_head.condition_mean"], weights["diffusion_head.condition_std"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    head = MMARForConditionalGeneration.from_pretrained(tmp_path).diffusion_head
    assert (head.condition_mean == 0).all() and (head.condition_std == 1).all()


def test_bad_statistics_inputs_are_named(digits):
    torch.manual_seed(0)
    model = MMARForConditionalGeneration(tiny_config()).eval()
    head, width = model.diffusion_head, model.config.text_config.hidden_size
    with pytest.raises(ValueError, match=r"conditions must be \[M, "):
        head.set_condition_statistics(torch.zeros(4, width + 1))
    with pytest.raises(ValueError, match="at least 2"):
        head.set_condition_statistics(torch.zeros(1, width))
    with pytest.raises(ValueError, match="NaN or inf"):
        head.set_condition_statistics(torch.full((4, width), float("nan")))
    with pytest.raises(ValueError, match="min_std"):
        head.set_condition_statistics(torch.zeros(4, width), min_std=float("inf"))
    batch = drawing_batch(model, digits)
    batch["image_mask"][:] = False
    with pytest.raises(ValueError, match="masked image tokens"):
        model.standardize_head_conditions(**batch)


def test_a_run_config_standardises_the_head_before_training(tmp_path, capsys):
    plain = build_run(load_config(TINY), output_dir=str(tmp_path / "plain")).model.diffusion_head
    assert (plain.condition_std == 1).all()
    run = build_run(load_config(TINY, ["standardize_head_conditions=true"]), output_dir=str(tmp_path / "std"))
    head = run.model.diffusion_head
    assert (head.condition_std != 1).all() and torch.isfinite(head.condition_mean).all()
    assert "conditions standardised per dimension" in capsys.readouterr().out
    with pytest.raises(ValueError, match="standardize_head_conditions must be true or false"):
        load_config(TINY, ["standardize_head_conditions=3"])
