"""Chat replay: keep a chat LLM's general answers when an image is in the conversation.

With a frozen text model, text-only chats answer exactly as the base LLM. With an image in the context, however,
every later text token attends to the image positions, which MMAR trains to answer "What digit is this?". Without
other questions about images, a model trained on digit questions alone answers "one" to "What is the capital of
France?" asked after a digit image (measured on SmolLM2-135M-Instruct). Chat replay mixes in understanding rows
that pair a training image with a general question and the base LLM's own answer to it, computed once before
training by greedy decoding on the text-only chat (exactly the base LLM's answer when the text model is frozen).

`REPLAY_PROMPTS` never overlap `training.text_retention.CHAT_PROMPTS`, on which retention is measured.
"""

from __future__ import annotations

import torch

_COUNTRIES = ("Peru", "Egypt", "Kenya", "Norway", "Sweden", "Poland", "Greece", "Portugal", "Ireland", "Austria",
              "Belgium", "Chile", "Cuba", "India", "China", "Russia", "Mexico", "Brazil", "Argentina", "Australia",
              "Turkey", "Iran", "Thailand", "Vietnam", "Finland", "Denmark", "Hungary", "Morocco", "Nigeria", "Ghana")
_ANIMALS = ("cat", "dog", "bird", "horse", "ant", "cow", "duck", "snake", "fish", "chicken")
_OPPOSITES = ("hot", "big", "fast", "happy", "light", "up", "old", "early", "strong", "open")
_COLOURS = ("grass", "snow", "the sun", "a banana", "the sky", "coal", "a tomato", "an orange")
REPLAY_PROMPTS = (
    *(f"What is the capital of {country}?" for country in _COUNTRIES),
    *(f"How many legs does a {animal} have?" for animal in _ANIMALS),
    *(f"What is the opposite of {word}?" for word in _OPPOSITES),
    *(f"What color is {thing}?" for thing in _COLOURS),
    *(f"What is {a} plus {b}?" for a, b in ((2, 3), (4, 5), (6, 7), (10, 20), (8, 9), (11, 12), (30, 40), (5, 5))),
    *(f"What is {a} times {b}?" for a, b in ((2, 3), (4, 5), (3, 3), (6, 2), (9, 9), (10, 10))),
    "Say hello.", "What day comes after Monday?", "What month comes after March?", "Is the moon a planet?",
    "What do fish live in?", "What do bees make?", "Which animal says moo?", "What is ice made of?",
)


@torch.no_grad()
def base_chat_answers(model, tokenizer, prompts=REPLAY_PROMPTS, max_new_tokens: int = 20,
                      batch_size: int = 32) -> list[tuple[str, str]]:
    """(prompt, greedy answer) for every text-only single-turn chat whose answer ends (eos) within
    `max_new_tokens`: short answers keep the replay rows short. `model` answers text as its LLM does (an MMAR model
    with a frozen text model answers text-only chats exactly as the base LLM)."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
    pairs = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch_prompts = list(prompts[start:start + batch_size])
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in batch_prompts]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            for prompt, row in zip(batch_prompts, output[:, inputs["input_ids"].shape[1]:].tolist()):
                end = next((i for i, token in enumerate(row) if token in eos), None)
                answer = tokenizer.decode(row[:end], skip_special_tokens=True).strip() if end else ""
                if answer:
                    pairs.append((prompt, answer))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    if not pairs:
        raise RuntimeError(f"The model answered none of the {len(prompts)} replay prompts within "
                           f"{max_new_tokens} tokens")
    return pairs


__all__ = ["REPLAY_PROMPTS", "base_chat_answers"]
