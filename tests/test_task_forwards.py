"""`forward_per_task: true` (run config): a batch's understanding rows and generation rows run as two forwards, each
padded to its own longest row. The loss, its logged parts and the gradients are those of one forward over the batch."""

import pytest
import torch

from training.row_noise import ROW_SEEDS, RowSeedCollator
from training.run_config import CONFIG_DIR, load_config
from training.task_forwards import task_groups
from training.train import build_run, train

TINY = CONFIG_DIR / "digits_tiny.yaml"


def tiny(*overrides):
    return load_config(TINY, ["training.eval_strategy=no", *overrides])


@pytest.fixture(scope="module")
def tiny_trainer(tmp_path_factory):
    run = build_run(tiny("forward_per_task=true"), output_dir=str(tmp_path_factory.mktemp("run")))
    rows = [run.train_dataset[i] for i in range(8)]
    return run, RowSeedCollator(run.collator)(rows)


def test_each_task_is_padded_to_its_own_longest_row(tiny_trainer):
    run, batch = tiny_trainer
    # understanding rows end with their caption here, so they are the longer ones
    understanding = (batch["labels"][:, 1:] != -100).any(1)
    assert 0 < int(understanding.sum()) < 8
    config = run.model.config
    groups = task_groups(batch, config.image_token_id, config.tokens_per_image)
    assert [len(g["input_ids"]) for g in groups] == [int(understanding.sum()), int((~understanding).sum())]
    for group, rows in zip(groups, (understanding, ~understanding)):
        lengths = batch["attention_mask"][rows].sum(1)
        assert group["input_ids"].shape[1] == int(lengths.max())  # no column is padding in every row
        assert torch.equal(group["input_ids"], batch["input_ids"][rows][:, :int(lengths.max())])
        assert torch.equal(group["pixel_values"], batch["pixel_values"][rows])  # each row keeps its image
        assert torch.equal(group["image_mask"], batch["image_mask"][rows])
        assert torch.equal(group[ROW_SEEDS], batch[ROW_SEEDS][rows])
    understanding_group, generation_group = groups
    assert (understanding_group["labels"][:, 1:] != -100).any(1).all()
    assert "labels" not in generation_group and generation_group["logits_to_keep"] == 1  # no LM head over them


def _loss_parts_and_gradients(run, batch, per_task):
    trainer, model = run.trainer, run.model.train()
    trainer.forward_per_task = per_task
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    parts = trainer._drain_loss_parts("train")
    return loss.detach(), parts, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_two_forwards_give_the_loss_and_gradients_of_one(tiny_trainer):
    run, batch = tiny_trainer
    one_loss, one_parts, one_grads = _loss_parts_and_gradients(run, batch, per_task=False)
    two_loss, two_parts, two_grads = _loss_parts_and_gradients(run, batch, per_task=True)
    torch.testing.assert_close(two_loss, one_loss, rtol=1e-5, atol=1e-6)
    assert set(one_parts) == {"text_loss", "image_loss"}
    for name, value in one_parts.items():  # the logged text and image losses too
        assert two_parts[name] == pytest.approx(value, rel=1e-5)
    assert one_grads.keys() == two_grads.keys()
    for name, grad in one_grads.items():
        torch.testing.assert_close(two_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_batch_of_one_task_runs_as_one_forward(tiny_trainer):
    run, batch = tiny_trainer
    generation = ~(batch["labels"][:, 1:] != -100).any(1)
    only_generation = {k: v[generation] for k, v in batch.items()}
    one_loss, _, _ = _loss_parts_and_gradients(run, only_generation, per_task=False)
    two_loss, _, _ = _loss_parts_and_gradients(run, only_generation, per_task=True)
    assert torch.equal(one_loss, two_loss)


def test_a_run_with_forward_per_task_logs_the_same_losses(tmp_path):
    logs = {}
    for per_task in (False, True):
        run = train(tiny(f"forward_per_task={str(per_task).lower()}"), output_dir=str(tmp_path / str(per_task)))
        logs[per_task] = [(e["loss"], e["text_loss"], e["image_loss"]) for e in run.trainer.state.log_history
                          if "loss" in e and "train_runtime" not in e]
    assert len(logs[True]) == 6
    for one, two in zip(logs[False], logs[True]):
        assert two == pytest.approx(one, rel=1e-4)


def test_forward_per_task_must_be_a_boolean():
    with pytest.raises(ValueError, match="forward_per_task must be true or false"):
        tiny("forward_per_task=1")
