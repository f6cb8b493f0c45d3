"""The embedded default's word-level tokenizer: fixed special ids, words and punctuation, decoding, save / load."""

import pytest
from transformers import AutoTokenizer

from processors import IMAGE_SPECIAL_TOKENS, add_image_tokens, build_tokenizer

CORPUS = [
    "a handwritten seven",
    "the digit 7",
    "an eight",
    "What digit is this?",
    "seven",
    "eight",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS)


def test_special_tokens_have_the_fixed_ids(tokenizer):
    expected = ["<pad>", "<bos>", "<eos>", "<image>", "<boi>", "<img>", "<eoi>", "<unk>"]
    assert tokenizer.convert_ids_to_tokens(list(range(8))) == expected
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    image_ids = (tokenizer.legacy_image_placeholder_id, tokenizer.boi_token_id, tokenizer.image_token_id,
                 tokenizer.eoi_token_id)
    assert image_ids == (3, 4, 5, 6)  # `<img>` is the image token; `<image>` keeps its id for older folders
    assert tokenizer.unk_token_id == 7
    assert set(expected) <= set(tokenizer.all_special_tokens)


def test_words_are_lower_cased_and_split_from_punctuation(tokenizer):
    ids = tokenizer("What digit is THIS?")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["what", "digit", "is", "this", "?"]
    assert tokenizer("zebra")["input_ids"] == [tokenizer.unk_token_id]


def test_tokenizer_adds_no_special_tokens_and_keeps_specials_whole(tokenizer):
    assert tokenizer("seven")["input_ids"] == [tokenizer.convert_tokens_to_ids("seven")]
    ids = tokenizer("<bos><image>What digit is this? seven<eos>")["input_ids"]
    assert ids[:2] == [1, 3] and ids[-1] == 2
    assert ids[-2] == tokenizer.convert_tokens_to_ids("seven")
    # The collator finds an answer's labels as the last tokens of the sample: the answer must tokenize the same alone.
    assert tokenizer(" seven<eos>", add_special_tokens=False)["input_ids"] == ids[-2:]


def test_decode_joins_words_without_space_before_punctuation(tokenizer):
    ids = tokenizer("<bos>What digit is this? seven<eos>")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "what digit is this? seven"
    assert tokenizer.decode(tokenizer("the digit 7")["input_ids"]) == "the digit 7"


def test_same_corpus_gives_same_vocabulary():
    assert build_tokenizer(CORPUS).get_vocab() == build_tokenizer(list(reversed(CORPUS))).get_vocab()


def test_vocab_size_keeps_the_most_frequent_words():
    tokenizer = build_tokenizer(["seven seven seven eight eight nine"], vocab_size=10)
    assert len(tokenizer) == 10
    assert tokenizer.convert_ids_to_tokens([8, 9]) == ["seven", "eight"]
    assert tokenizer("nine")["input_ids"] == [tokenizer.unk_token_id]


def test_digits_corpus_fits_the_default_model_vocabulary():
    from training.data import digits_corpus

    tokenizer = build_tokenizer(digits_corpus())
    assert len(tokenizer) <= 128  # MMARConfig's default text vocab_size
    assert tokenizer.unk_token_id not in tokenizer(" ".join(digits_corpus()))["input_ids"]


def test_save_and_load_with_autotokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<bos>a handwritten seven<boi><img><img><eoi><eos>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.image_token_id == 5 and loaded.boi_token == "<boi>"
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == "a handwritten seven"


def test_add_image_tokens_appends_missing_tokens_once():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    ids = add_image_tokens(tokenizer)
    assert sorted(ids.values()) == [2, 3, 4] and set(ids) == set(IMAGE_SPECIAL_TOKENS)
    assert add_image_tokens(tokenizer) == ids and len(tokenizer) == 5
    assert tokenizer("hello<img>")["input_ids"] == [1, ids["image_token"]]


@pytest.mark.parametrize("corpus", [[], "", [1, 2], [None]])
def test_bad_corpus_is_rejected(corpus):
    with pytest.raises(ValueError, match="corpus"):
        build_tokenizer(corpus)


def test_vocab_size_smaller_than_the_specials_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(CORPUS, vocab_size=8)
