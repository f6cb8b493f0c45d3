"""Task balancing: the understanding / generation mix per batch, chat-formatted understanding rows and the per-task
loss weights."""

import pytest
import torch
from conftest import digit_word_processor, tiny_config
from tiny_backbones import TINY_CHAT_TEMPLATE, build_bpe_tokenizer

from modeling_mmar import MMARForConditionalGeneration
from processors import MMARProcessor
from training.collator import IGNORE_INDEX, MMARDataCollator
from training.data import load_digits_dataset
from training.distributed import check_loss_composition, global_batch_loss

L = 16  # 8x8 digits, patch 2


@pytest.fixture(scope="module")
def rows():
    split = load_digits_dataset()["train"]
    return [split[i] for i in range(96)]


@pytest.fixture(scope="module")
def word_processor():
    return digit_word_processor()


def understanding_rows(batch) -> int:
    return int((batch["labels"] != IGNORE_INDEX).any(-1).sum())


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.8])
def test_batch_mix_puts_exactly_the_ratio_in_every_batch(ratio, rows, word_processor):
    per_batch = MMARDataCollator(word_processor, L, understanding_ratio=ratio, task_mix="batch", seed=0)
    per_row = MMARDataCollator(word_processor, L, understanding_ratio=ratio, task_mix="row", seed=0)
    counts = [understanding_rows(per_batch(rows[i:i + 16])) for i in range(0, 96, 16)]
    assert counts == [round(ratio * 16)] * 6
    row_counts = [understanding_rows(per_row(rows[i:i + 16])) for i in range(0, 96, 16)]
    assert len(set(row_counts)) > 1  # drawn row by row, the count varies from batch to batch
    # Reproducible: the same rows in the same epoch are planned the same way.
    again = MMARDataCollator(word_processor, L, understanding_ratio=ratio, task_mix="batch", seed=0)
    assert torch.equal(per_batch(rows[:16])["labels"], again(rows[:16])["labels"])
    with pytest.raises(ValueError, match="task_mix must be one of"):
        MMARDataCollator(word_processor, L, task_mix="epoch")


def test_chat_rows_label_the_assistant_turn_of_the_llms_template(rows):
    tokenizer = build_bpe_tokenizer("llama")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.add_tokens(["seven", "zero", "one", "two", "three", "four", "five", "six", "eight", "nine"])
    config = tiny_config(text_config={"model_type": "llama", "vocab_size": len(tokenizer) + 3, "hidden_size": 32,
                                      "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
                                      "num_hidden_layers": 1, "bos_token_id": tokenizer.bos_token_id,
                                      "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.eos_token_id},
                         boi_token_id=len(tokenizer), image_token_id=len(tokenizer) + 1,
                         eoi_token_id=len(tokenizer) + 2)
    processor = MMARProcessor.from_text_model(tokenizer, config)
    collator = MMARDataCollator(processor, L, understanding_ratio=1.0, chat_template=True)
    batch = collator(rows[:4])
    for row in range(4):
        text = processor.tokenizer.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()])
        assert text.startswith("<s>user\n<boi><img>") and "What digit is this?</s>\n<s>assistant\n" in text
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert processor.tokenizer.decode(labelled) == f"{rows[row]['answer']}</s>\n"  # the assistant's turn only
    with pytest.raises(ValueError, match="chat template"):
        MMARDataCollator(type("NoTemplate", (), {"chat_template": None, "num_image_tokens": L})(), L,
                         chat_template=True)


def test_text_loss_weight_and_image_loss_weight_weigh_the_two_tasks(rows, word_processor):
    batch = MMARDataCollator(word_processor, L, understanding_ratio=0.5, task_mix="batch", seed=0)(rows[:8])
    losses = {}
    for weights in ((1.0, 1.0), (0.25, 2.0)):
        config = tiny_config(text_config={"model_type": "qwen2", "vocab_size": len(word_processor.tokenizer),
                                          "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
                                          "intermediate_size": 64, "num_hidden_layers": 1},
                             text_loss_weight=weights[0], image_loss_weight=weights[1])
        torch.manual_seed(0)
        model = MMARForConditionalGeneration(config)
        torch.manual_seed(1)
        losses[weights] = model(**batch)
    plain, weighted = losses[(1.0, 1.0)], losses[(0.25, 2.0)]
    assert torch.equal(plain.text_loss, weighted.text_loss) and torch.equal(plain.image_loss, weighted.image_loss)
    torch.testing.assert_close(weighted.loss, 0.25 * plain.text_loss + 2.0 * plain.image_loss)
    # mmar train's loss over processes rebuilds the model's weighting: with one process it is the model's loss.
    check_loss_composition(weighted, config)
    rebuilt, _ = global_batch_loss(weighted, batch, config, num_processes=1, reduce_sum=None)
    torch.testing.assert_close(rebuilt, weighted.loss)
    with pytest.raises(ValueError, match="text_loss_weight must be a finite number >= 0"):
        tiny_config(text_loss_weight=float("nan"))


def test_chat_replay_asks_general_questions_about_the_image_with_the_base_models_answers(rows, tmp_path):
    from tiny_backbones import save_backbone
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.chat_replay import REPLAY_PROMPTS, base_chat_answers
    from training.text_retention import CHAT_PROMPTS

    assert not set(REPLAY_PROMPTS) & set(CHAT_PROMPTS)  # retention is measured on questions never replayed
    path = save_backbone("llama", tmp_path / "llama")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.pad_token = tokenizer.eos_token
    text_model = AutoModelForCausalLM.from_pretrained(path)
    model = MMARForConditionalGeneration.from_text_model(text_model, tokenizer=tokenizer, image_size=8, patch_size=2,
                                                         num_channels=1, image_expert="ffn", freeze_text_model=True)
    processor = MMARProcessor.from_text_model(tokenizer, model.config)
    stops = list(range(0, text_model.config.vocab_size, 4))  # a random tiny LLM: let a quarter of tokens end answers
    for m in (text_model, model):
        m.generation_config.eos_token_id = stops
        m.generation_config.pad_token_id = tokenizer.pad_token_id
    pairs = base_chat_answers(model, processor.tokenizer, REPLAY_PROMPTS[:12], max_new_tokens=6)
    assert pairs and pairs == base_chat_answers(text_model, tokenizer, REPLAY_PROMPTS[:12], max_new_tokens=6)

    collator = MMARDataCollator(processor, L, understanding_ratio=1.0, chat_template=True, chat_replay_ratio=1.0)
    with pytest.raises(ValueError, match="set_chat_replay"):
        collator(rows[:2])
    collator.set_chat_replay([("What is the capital of Peru?", "Lima.")])
    batch = collator(rows[:3])
    for row in range(3):
        text = processor.tokenizer.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()])
        assert "<s>user\n<boi><img>" in text and "What is the capital of Peru?</s>" in text
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert processor.tokenizer.decode(labelled) == "Lima.</s>\n"
    with pytest.raises(ValueError, match="chat_template=True"):
        MMARDataCollator(processor, L, chat_replay_ratio=0.5)
