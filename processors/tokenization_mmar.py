"""The embedded default's tokenizer (a small word-level `tokenizers` model) and the image special tokens.

Special tokens come first, in a fixed order, so that their ids equal MMARConfig's defaults:
`<pad>`=0 `<bos>`=1 `<eos>`=2 `<image>`=3 `<boi>`=4 `<img>`=5 `<eoi>`=6 `<unk>`=7, then the corpus' words
(lower-cased words and punctuation, most frequent first, ties alphabetical: the same corpus gives the same ids).

`<img>` is the image token: written once per image in text, the processor expands it to `<boi>` + `<img>` x N +
`<eoi>`. `<image>` (id 3) is the placeholder of the older two-name layout, kept so that every saved default model
keeps its ids; the processor reads it as `<img>`.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
LEGACY_IMAGE_PLACEHOLDER = "<image>"
# Named image tokens: attribute name on the tokenizer -> token text (`tokenizer.boi_token`, `tokenizer.boi_token_id`).
IMAGE_SPECIAL_TOKENS = {
    "boi_token": "<boi>",  # begin of image span
    "image_token": "<img>",  # one continuous image token (the span holds tokens_per_image of them)
    "eoi_token": "<eoi>",  # end of image span
}
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, LEGACY_IMAGE_PLACEHOLDER, *IMAGE_SPECIAL_TOKENS.values(), UNK_TOKEN)


def build_tokenizer(corpus: Iterable[str], vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on `corpus` (e.g. the digits captions, question and answers).

    Args:
        corpus: texts; words are lower-cased and split from punctuation ("What digit is this?" -> what digit is
            this ?). Unknown words become `<unk>`.
        vocab_size: keep at most this many tokens, specials included (the most frequent words); None keeps all.

    Returns:
        A `PreTrainedTokenizerFast` that adds no special tokens itself (the processor writes `<bos>`), decodes words
        separated by spaces with no space before punctuation, and has `image_token` (`<img>`), `boi_token`,
        `eoi_token` (and their `_id`s) as named special tokens. `save_pretrained` writes `tokenizer.json`.
    """
    texts = [corpus] if isinstance(corpus, str) else list(corpus)
    if not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError("build_tokenizer needs a non-empty iterable of strings as its corpus")
    if vocab_size is not None and vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")

    backend = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # runs of word characters, runs of punctuation
    # WordPiece's decoder joins tokens with spaces and its cleanup removes the space before punctuation ("this ?").
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer_kwargs = {"special_tokens": list(SPECIAL_TOKENS), "min_frequency": 1, "show_progress": False}
    if vocab_size is not None:
        trainer_kwargs["vocab_size"] = vocab_size
    backend.train_from_iterator(texts, trainers.WordLevelTrainer(**trainer_kwargs))
    if backend.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise ValueError("build_tokenizer's corpus holds no words")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens={**IMAGE_SPECIAL_TOKENS, "legacy_image_placeholder": LEGACY_IMAGE_PLACEHOLDER},
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",  # batched generation; the training collator pads right itself
    )
    expected = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    actual = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    if actual != expected:  # a tokenizers change in how trainers place special tokens must not go unnoticed
        raise RuntimeError(f"Special token ids {actual} differ from the fixed layout {expected}")
    return tokenizer


def add_image_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Add the image special tokens to any HF tokenizer (e.g. Qwen2's) that lacks them; return their ids by name.

    Tokens already in the vocabulary keep their ids. Afterwards resize the model's embeddings to `len(tokenizer)` and
    write the ids into the model config (`boi_token_id`, `image_token_id`, `eoi_token_id`).
    """
    vocab = tokenizer.get_vocab()
    missing = [token for token in IMAGE_SPECIAL_TOKENS.values() if token not in vocab]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in IMAGE_SPECIAL_TOKENS.items()}


__all__ = ["IMAGE_SPECIAL_TOKENS", "LEGACY_IMAGE_PLACEHOLDER", "SPECIAL_TOKENS", "add_image_tokens", "build_tokenizer"]
