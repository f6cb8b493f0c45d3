"""trl's SFTTrainer with MMAR: MMARSFTTrainer optimises MMAR's own loss, the diffusion loss included."""

import pytest
import torch
from conftest import tiny_config
from peft import get_peft_model
from trl import SFTConfig, SFTTrainer

from modeling_mmar import MMARForConditionalGeneration
from processors import MMARProcessor, build_tokenizer
from training.collator import MMARDataCollator
from training.data import digits_corpus, load_digits_dataset
from training.finetune import MMARSFTTrainer, build_trainer
from training.lora import lora_config

STEPS = 20
TRAINING = {"per_device_train_batch_size": 32, "learning_rate": 1e-3, "logging_steps": 5}


@pytest.fixture(scope="module")
def setup():
    tokenizer = build_tokenizer(digits_corpus())
    config = tiny_config(text_config={"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
                                      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                      "vocab_size": len(tokenizer), "pad_token_id": 0, "bos_token_id": 1,
                                      "eos_token_id": 2})
    processor = MMARProcessor.from_model_config(config, tokenizer)
    dataset = load_digits_dataset()["train"].select(range(512))
    return config, processor, dataset


def lora_model(config):
    torch.manual_seed(0)
    return get_peft_model(MMARForConditionalGeneration(config), lora_config())


def collator(config, processor):
    return MMARDataCollator(processor, config.tokens_per_image, understanding_ratio=0.5, mask_ratio_min=0.0)


def probe_image_loss(model, batch) -> float:
    """Diffusion loss on a fixed batch, averaged over fixed (timestep, noise) draws."""
    model.eval()
    losses = []
    with torch.no_grad():
        for seed in range(3):
            torch.manual_seed(seed)
            losses.append(model(**batch).image_loss.item())
    model.train()
    return sum(losses) / len(losses)


def head_weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "diffusion_head" in n and p.requires_grad}


def test_mmar_sft_trainer_trains_the_diffusion_head(setup, tmp_path):
    config, processor, dataset = setup
    model = lora_model(config)
    batches = collator(config, processor)
    probe = batches([dataset[i] for i in range(64)])
    loss_before, head_before = probe_image_loss(model, probe), head_weights(model)

    trainer = build_trainer("sft", model, processor, dataset, batches, TRAINING, str(tmp_path), STEPS, seed=0)
    assert isinstance(trainer, SFTTrainer) and isinstance(trainer, MMARSFTTrainer)
    assert isinstance(trainer.args, SFTConfig) and not trainer.args.bf16 and trainer.args.max_length is None
    trainer.train()

    changed = sum((p.detach() - head_before[n]).abs().sum().item() for n, p in model.named_parameters()
                  if n in head_before)
    assert changed > 0
    assert probe_image_loss(model, probe) < 0.95 * loss_before
    # The optimised loss is MMAR's total: text CE + diffusion MSE, both logged.
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all("image_loss" in entry and "text_loss" in entry for entry in logged)
    for entry in logged:
        assert entry["loss"] == pytest.approx(entry["text_loss"] + config.image_loss_weight * entry["image_loss"],
                                              rel=0.05)


def test_plain_sft_trainer_is_refused_instead_of_dropping_the_diffusion_loss(setup, tmp_path):
    """trl's fused LM-head forward never runs MMAR's forward: the diffusion loss would silently drop out."""
    config, processor, dataset = setup
    model = lora_model(config)
    head_before = head_weights(model)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=32, learning_rate=1e-3,
                     bf16=False, remove_unused_columns=False, max_length=None, report_to="none", save_strategy="no",
                     gradient_checkpointing=False, dataset_kwargs={"skip_prepare_dataset": True},
                     dataloader_pin_memory=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator(config, processor),
                         processing_class=processor)
    with pytest.raises(RuntimeError, match="MMARSFTTrainer"):
        trainer.train()
    assert all(torch.equal(p.detach(), head_before[n]) for n, p in model.named_parameters() if n in head_before)


def test_sft_config_defaults_get_a_message_pointing_to_mmar_sft_trainer(setup, tmp_path):
    config, processor, dataset = setup
    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, report_to="none", bf16=False, use_cpu=True)
    trainer = SFTTrainer(model=lora_model(config), args=args, train_dataset=dataset.select(range(64)),
                         data_collator=collator(config, processor), processing_class=processor)
    with pytest.raises(ValueError, match="MMARSFTTrainer.*skip_prepare_dataset"):
        trainer.train()  # trl dropped the unused 'caption' column: the collator says what to use instead
