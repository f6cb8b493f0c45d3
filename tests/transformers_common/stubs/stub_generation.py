"""Stands in for transformers' `tests/generation/test_utils.py`, which the sdist does not ship.

`test_modeling_common` imports `GenerationTesterMixin` only to check whether a test class inherits it
(`test_generation_tester_mixin_inheritance`); the generate tests themselves live in that missing file, so MMAR's
test classes cannot inherit it and skip that check, saying why. MMAR's `generate` has its own tests in tests/.
"""


class GenerationTesterMixin:
    pass
