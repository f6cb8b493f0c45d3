"""Does an MMAR model built on a pretrained chat LLM still chat like that LLM?

    python -m training.text_retention --model outputs/smollm2-digits/model [--base smollm2] [--output FILE.json]

On `CHAT_PROMPTS` (60 everyday questions and instructions, asked in the LLM's own chat template, greedy decoding)
it measures:
- agreement: the share of prompts whose greedy answer (token for token) equals the base LLM's;
- whether the last hidden states of every prompt equal the base LLM's exactly (`torch.equal`);
- the perplexity of the base LLM's answers under the base LLM and under the MMAR model (teacher forcing, over the
  LLM's own vocabulary: the image tokens MMAR added are never generated in text mode).
and holds one chat conversation with a held-out digit: the image and "What digit is this?", then a general
question in the same conversation. The MMAR folder is loaded the way users load it
(`AutoModelForImageTextToText` + `AutoProcessor`); the base LLM with `AutoModelForCausalLM` (GGUF included).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

CHAT_PROMPTS = (
    "What is the capital of France?",
    "What is the capital of Japan?",
    "How many days are there in a week?",
    "What is 12 times 7?",
    "What is the boiling point of water in Celsius?",
    "Name three primary colors.",
    "What is the largest planet in our solar system?",
    "Who wrote Romeo and Juliet?",
    "What language is spoken in Brazil?",
    "Give me a synonym for happy.",
    "What is photosynthesis?",
    "Translate 'thank you' into Spanish.",
    "What is the square root of 81?",
    "Write a haiku about the sea.",
    "What does a bee make?",
    "How many legs does a spider have?",
    "What is the chemical symbol for gold?",
    "Suggest a name for a pet cat.",
    "What is the opposite of cold?",
    "Explain what a computer is in one sentence.",
    "What season comes after winter?",
    "What is the freezing point of water in Fahrenheit?",
    "Tell me a fun fact about octopuses.",
    "What is the tallest mountain in the world?",
    "How many continents are there?",
    "What is the main ingredient of guacamole?",
    "Give me a tip for better sleep.",
    "What is the capital of Italy?",
    "What gas do plants absorb from the air?",
    "What is 100 divided by 4?",
    "Who painted the Mona Lisa?",
    "What is the fastest land animal?",
    "Write one sentence about autumn.",
    "What is the longest river in Africa?",
    "How many hours are in a day?",
    "What do you call a baby dog?",
    "What is the currency of the United Kingdom?",
    "Name a fruit that is yellow.",
    "What is gravity?",
    "How do I boil an egg?",
    "What is the capital of Germany?",
    "What is the plural of mouse?",
    "Why is the sky blue?",
    "What instrument has 88 keys?",
    "Give me three words that rhyme with cat.",
    "What is the smallest prime number?",
    "What is the capital of Canada?",
    "What is a noun?",
    "How many sides does a hexagon have?",
    "What is the hottest planet in the solar system?",
    "Recommend a healthy breakfast.",
    "What is the meaning of the word 'generous'?",
    "What do cows drink?",
    "What is 15 plus 27?",
    "Who was the first person to walk on the moon?",
    "What is the capital of Spain?",
    "Describe a rainbow in one sentence.",
    "What is the largest ocean on Earth?",
    "How many minutes are in an hour?",
    "What is a synonym for big?",
)
CONVERSATION_DIGIT_QUESTION = "What digit is this?"
CONVERSATION_GENERAL_QUESTION = "What is the capital of France?"


def chat_inputs(tokenizer, prompts) -> dict[str, torch.Tensor]:
    """Left-padded chat prompts (one user turn each, the generation prompt added) in the tokenizer's template."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True) for prompt in prompts]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def greedy_answers(model, inputs: dict, max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """Greedy answer token ids per prompt, up to and including the first eos (padding removed)."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
    answers = []
    for start in tqdm(range(0, len(inputs["input_ids"]), batch_size), desc="greedy answers"):
        batch = {key: value[start:start + batch_size] for key, value in inputs.items()}
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        for row in output[:, batch["input_ids"].shape[1]:].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
            answers.append(row[:end])
    return answers


@torch.no_grad()
def last_hidden_states(base_model, inputs: dict) -> torch.Tensor:
    return base_model(**inputs).last_hidden_state


@torch.no_grad()
def answer_perplexity(model, inputs: dict, answers: list[list[int]], vocab_size: int, pad_id: int) -> float:
    """exp(mean negative log-likelihood) of `answers` after their prompts, over the first `vocab_size` logits."""
    total, count = 0.0, 0
    for row, answer in enumerate(answers):
        prompt = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
        ids = torch.cat([prompt, torch.tensor(answer, dtype=prompt.dtype)]).unsqueeze(0)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1, :vocab_size].float()
        total += torch.nn.functional.cross_entropy(logits, torch.tensor(answer), reduction="sum").item()
        count += len(answer)
    return math.exp(total / max(count, 1))


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def digit_conversation(model, processor, image, max_new_tokens: int) -> list[dict]:
    """One chat: the image and the digit question, the model's answer, then a general question and its answer."""
    conversation = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": CONVERSATION_DIGIT_QUESTION}]}]
    for follow_up in (None, CONVERSATION_GENERAL_QUESTION):
        if follow_up is not None:
            conversation.append({"role": "user", "content": [{"type": "text", "text": follow_up}]})
        inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        conversation.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return conversation


def format_conversation(conversation: list[dict]) -> str:
    lines = []
    for message in conversation:
        parts = [item["text"] if item["type"] == "text" else "[image: a held-out handwritten digit]"
                 for item in message["content"]]
        lines.append(f"{message['role']}: {' '.join(parts)}")
    return "\n".join(lines)


def measure(model_dir, base="smollm2", gguf_file=None, max_new_tokens: int = 48, batch_size: int = 30,
            seed: int = 0) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    import modeling_mmar  # noqa: F401  (registers the Auto classes)
    import processors  # noqa: F401
    from modeling_mmar.convert_text_model_to_mmar import load_text_tokenizer, resolve_text_model

    from .data import load_digit_dataset

    start = time.monotonic()
    folder, gguf_file = resolve_text_model(base, gguf_file)
    base_model = AutoModelForCausalLM.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    tokenizer = load_text_tokenizer(folder, gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir))
    processor = AutoProcessor.from_pretrained(str(model_dir))
    base_model.eval()
    model.eval()

    inputs = chat_inputs(tokenizer, CHAT_PROMPTS)
    mmar_ids = processor.tokenizer(tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=False),
                                   add_special_tokens=False)["input_ids"]
    if [ids for ids in mmar_ids] != inputs["input_ids"].tolist():
        raise RuntimeError("The MMAR processor's tokenizer does not encode the chat prompts as the base tokenizer")
    base_answers = greedy_answers(base_model, inputs, max_new_tokens, batch_size)
    model_answers = greedy_answers(model, inputs, max_new_tokens, batch_size)
    equal = [a == b for a, b in zip(base_answers, model_answers)]
    hidden_equal = torch.equal(last_hidden_states(base_model.model, inputs),
                               last_hidden_states(model.model, inputs))
    vocab = base_model.config.vocab_size
    pad = tokenizer.pad_token_id
    metrics = {
        "model": str(model_dir),
        "base": str(base),
        "image_expert": model.config.image_expert,
        "freeze_text_model": model.config.freeze_text_model,
        "trainable_parameters": trainable_parameters(model),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "num_prompts": len(CHAT_PROMPTS),
        "max_new_tokens": max_new_tokens,
        "answers_equal_to_base": sum(equal),
        "agreement": sum(equal) / len(equal),
        "last_hidden_states_bit_identical": hidden_equal,
        "base_answers_perplexity_under_base": answer_perplexity(base_model, inputs, base_answers, vocab, pad),
        "base_answers_perplexity_under_model": answer_perplexity(model, inputs, base_answers, vocab, pad),
        "examples": [{"prompt": p, "base": tokenizer.decode(a, skip_special_tokens=True),
                      "model": tokenizer.decode(b, skip_special_tokens=True)}
                     for p, a, b in zip(CHAT_PROMPTS, base_answers, model_answers)],
    }
    heldout = load_digit_dataset("digits", image_size=model.config.image_size, seed=seed)["heldout"]
    conversation = digit_conversation(model, processor, heldout[0]["image"], max_new_tokens)
    metrics["conversation_digit_label"] = int(heldout[0]["label"])
    metrics["conversation"] = format_conversation(conversation)
    metrics["seconds"] = time.monotonic() - start
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.text_retention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained MMAR folder (built on the base LLM)")
    parser.add_argument("--base", default="smollm2", help="the base LLM: folder, .gguf file or embedded name")
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--output", default=None, help="write the metrics as JSON here")
    args = parser.parse_args(argv)
    metrics = measure(args.model, args.base, args.gguf_file, args.max_new_tokens)
    summary = {k: v for k, v in metrics.items() if k not in ("examples", "conversation")}
    print(json.dumps(summary, indent=2))
    print(metrics["conversation"])
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
