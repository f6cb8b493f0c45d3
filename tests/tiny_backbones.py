"""Tiny pretrained-looking causal LMs (Qwen2- and Llama-style) with their own byte-level BPE tokenizers, saved
locally: stand-ins for Hub backbones in tests (nothing is downloaded)."""

from __future__ import annotations

import json

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


def save_gguf_backbone(folder, file_name: str = "tiny-llama.F32.gguf"):
    """Save a tiny Llama-style causal LM with its byte-level BPE tokenizer and a chat template as one float32 GGUF
    file (llama.cpp's tensor names and metadata keys, written with the `gguf` package); return (the GGUF file's
    path, the model it holds, its tokenizer). A stand-in for SmolLM2's GGUF that CI can build in a second."""
    import gguf
    import numpy as np

    tokenizer = build_bpe_tokenizer("llama")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    model = build_text_model("llama", tokenizer)
    config = model.config
    path = f"{folder}/{file_name}"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    writer.add_token_list([token for token, _ in vocab])
    special = set(tokenizer.all_special_ids)
    writer.add_token_types([gguf.TokenType.CONTROL if index in special else gguf.TokenType.NORMAL
                            for _, index in vocab])
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    for key, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        projection = key.split(".")[-2]
        if projection in heads:  # llama.cpp stores q/k rows in its own RoPE order; transformers undoes it on load
            n = heads[projection]
            array = array.reshape(n, 2, array.shape[0] // n // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
        name = names.get_name(key.removesuffix(".weight"), try_suffixes=()) + ".weight"
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model, tokenizer


TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<s>' + message['role'] + '\\n' + message['content'] + '</s>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant\\n' }}{% endif %}"
)
