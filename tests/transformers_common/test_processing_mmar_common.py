"""transformers' own `ProcessorTesterMixin` on `MMARProcessor` (the common file of the installed transformers version,
see `upstream_transformers_tests`), in the style of transformers' `tests/models/*/test_processing_*.py`."""

import unittest
from unittest.mock import patch

import upstream_transformers_tests as upstream
from processors import MMARImageProcessor, MMARProcessor, build_tokenizer

common = upstream.import_common_or_failing("test_processing_common")

CORPUS = ["a handwritten seven", "What digit is this?", "lower newer", "upper older longer string"]


class MMARProcessorTest(common.ProcessorTesterMixin, unittest.TestCase):
    processor_class = MMARProcessor

    @classmethod
    def setUpClass(cls):
        # Tested as a processor inside transformers: without the remote-code registration, whose `auto_map` is set on
        # the saved object by `save_pretrained` but dropped by `from_pretrained` for any remote-code processor
        # (transformers' behaviour; tests/test_export.py covers the remote-code round trip).
        for registered in (MMARProcessor, MMARImageProcessor):
            cls.enterClassContext(patch.object(registered, "_auto_class", None))
        super().setUpClass()

    def setUp(self):
        super().setUp()  # a no-op, unless transformers' common tests could not be fetched: then it fails with why

    @classmethod
    def _setup_tokenizer(cls):
        return build_tokenizer(CORPUS)

    @classmethod
    def _setup_image_processor(cls):
        return MMARImageProcessor(image_size=8, num_channels=3)

    @staticmethod
    def prepare_processor_dict():
        return {"num_image_tokens": 4}

    @unittest.skip("MMARProcessor writes the tokenizer's <bos> itself (for any LLM tokenizer, whether or not its "
                   "post-processor adds one): its text output is the bare tokenizer's with <bos> in front")
    def test_subprocessor_defaults_0_text(self):
        pass
