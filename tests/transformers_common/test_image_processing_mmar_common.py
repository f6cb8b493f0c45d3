"""transformers' own `ImageProcessingTestMixin` on `MMARImageProcessor` (the common file of the installed transformers
version, see `upstream_transformers_tests`), in the style of transformers' `tests/models/*/test_image_processing_*.py`."""

import unittest

import upstream_transformers_tests as upstream
from processors import MMARImageProcessor

common = upstream.import_common_or_failing("test_image_processing_common")


class MMARImageProcessingTester(common.ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("num_channels", 3)
        kwargs.setdefault("size", {"shortest_edge": 18})
        kwargs.setdefault("crop_size", {"height": 18, "width": 18})
        kwargs.setdefault("min_resolution", 20)
        kwargs.setdefault("max_resolution", 40)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # transformers finds a model's image processors from its test folder's name; MMAR has one, on the PIL backend
        return {"pil": MMARImageProcessor}


class MMARImageProcessingTest(common.ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = MMARImageProcessingTester

    def setUp(self):
        super().setUp()  # fails with the reason when transformers' common tests could not be fetched

    @unittest.skip("MMARImageProcessor is PIL-only by design: MMAR (and its Hub remote code) must run without "
                   "torchvision, which it does not depend on")
    def test_new_models_require_torchvision_backend(self):
        pass

    @unittest.skip("MMARImageProcessor converts every image to the model's num_channels (1 or 3; alpha is "
                   "composited on white), so a 4-channel output cannot exist")
    def test_call_numpy_4_channels(self):
        pass
