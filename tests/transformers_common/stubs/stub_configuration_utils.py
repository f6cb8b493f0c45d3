"""Stands in for transformers' `tests/utils/test_configuration_utils.py`, which the sdist does not ship.

`ConfigTester.check_config_arguments_init` sets these common `PreTrainedConfig` arguments to non-default values and
checks that they are kept; it returns early for composite configs (those with `sub_configs`, such as `MMARConfig`),
so only the name must exist. The values below are still a faithful, smaller version of that check's inputs.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": False,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
