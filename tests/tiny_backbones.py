"""Tiny pretrained-looking causal LMs (Qwen2- and Llama-style) with their own byte-level BPE tokenizers, saved
locally: stand-ins for Hub backbones in tests (nothing is downloaded)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "a handwritten seven", "What digit is this? seven", "the digit 3", "an eight", "number four",
    "The quick brown fox jumps over the lazy dog.", "Hugging Face transformers and diffusers",
]

# Each style mimics its family's special tokens: Qwen2 has no bos and pads with <|endoftext|>; Llama has <s> and
# </s> and no pad token.
STYLES = {
    "qwen2": {"specials": ["<|endoftext|>"], "tokens": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
              "tie_word_embeddings": True},
    "llama": {"specials": ["<s>", "</s>"], "tokens": {"bos_token": "<s>", "eos_token": "</s>"},
              "tie_word_embeddings": False},
}


def build_bpe_tokenizer(style: str, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    spec = STYLES[style]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **spec["tokens"])


def build_text_model(style: str, tokenizer, seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    """A randomly initialised causal LM of the family `style` sized for `tokenizer` (plus a few spare rows)."""
    spec = STYLES[style]
    config = AutoConfig.for_model(
        style,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=spec["tie_word_embeddings"],
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def save_backbone(style: str, folder) -> str:
    """Save a tiny `style` causal LM and its tokenizer into `folder` (like a Hub checkpoint); return the path."""
    tokenizer = build_bpe_tokenizer(style)
    model = build_text_model(style, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
