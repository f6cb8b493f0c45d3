"""transformers' own `ModelTesterMixin` and `ConfigTester` on MMAR, as a model inside transformers is tested.

The common test files come from the installed transformers version's source distribution
(`upstream_transformers_tests`). Two testers, in the style of transformers' `tests/models/*/test_modeling_*.py`:
- understanding inputs (`<boi> <img>... <eoi> text`, every image token visible), as Janus' tests feed text-mode inputs,
  on `MMARModel` and `MMARForConditionalGeneration`;
- generation inputs (`text <boi> <img>... <eoi>` with an `image_mask`: masked tokens get the diffusion loss) on
  `MMARForConditionalGeneration`, whose outputs must then still be a function of the inputs.
"""

import copy
import tempfile
import unittest
from unittest.mock import patch

import pytest
import torch
from parameterized import parameterized
from transformers import PreTrainedConfig
from transformers.models.auto import modeling_auto
from transformers.testing_utils import require_torch, torch_device

from conftest import TINY_VAE

import modeling_mmar  # noqa: F401  (registers the Auto classes)
import upstream_transformers_tests as upstream
from modeling_mmar import MMARConfig, MMARForConditionalGeneration, MMARModel

# Some common tests check that a FutureWarning is raised (deprecated argument names): the suite ignores them elsewhere.
pytestmark = pytest.mark.filterwarnings("default::FutureWarning")

common = upstream.import_common_or_failing("test_modeling_common")
config_common = upstream.import_common_or_failing("test_configuration_common")


class MMARModelTester:
    def __init__(
        self,
        parent,
        batch_size=3,
        text_length=7,
        is_training=True,
        image_at_end=False,
        mask_images=False,
        embedder_depth=1,
        vae_config=None,
        text_config=None,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = is_training
        self.image_at_end = image_at_end
        self.mask_images = mask_images
        self.text_config = text_config or {
            "model_type": "qwen2",
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        }
        # 8x8 grayscale images in 4x4 pixel patches (or 2x2 patches of a 4x4x4 latent): 4 image tokens of 16 values
        self.image_size = 8
        self.num_channels = 1
        self.vae_config = vae_config
        self.patch_size = 4 if vae_config is None else 2
        self.embedder_depth = embedder_depth
        self.boi_token_id, self.image_token_id, self.eoi_token_id = 4, 5, 6
        latent_size = self.image_size // (1 if vae_config is None else 2 ** (len(vae_config["block_out_channels"]) - 1))
        self.tokens_per_image = (latent_size // self.patch_size) ** 2
        self.text_length = text_length
        # understanding: <boi> <img>... <eoi> text; generation: text <boi> <img>... <eoi> <eos> (as MMAR trains them)
        self.seq_length = text_length + self.tokens_per_image + 2 + int(image_at_end)
        self.vocab_size = self.text_config["vocab_size"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.pad_token_id = self.text_config["pad_token_id"]

    def get_config(self):
        return MMARConfig(
            text_config=dict(self.text_config),
            vae_config=None if self.vae_config is None else dict(self.vae_config),
            image_size=self.image_size,
            num_channels=self.num_channels,
            patch_size=self.patch_size,
            head_width=32,
            head_depth=1,
            diffusion_batch_mul=1,
            embedder_depth=self.embedder_depth,
            boi_token_id=self.boi_token_id,
            image_token_id=self.image_token_id,
            eoi_token_id=self.eoi_token_id,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        # ordinary text tokens only: ids 0..6 are padding, bos, eos and the image special tokens
        text = common.ids_tensor([self.batch_size, self.text_length], self.vocab_size - 7) + 7
        image_span = torch.tensor([self.boi_token_id] + [self.image_token_id] * self.tokens_per_image
                                  + [self.eoi_token_id]).expand(self.batch_size, -1)
        eos = torch.full((self.batch_size, 1), self.text_config["eos_token_id"])
        parts = (text, image_span, eos) if self.image_at_end else (image_span, text)
        input_ids = torch.cat(parts, dim=1).to(torch_device)
        pixel_values = common.floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        inputs_dict = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": (pixel_values * 2 - 1).to(torch_device),  # images in [-1, 1]
        }
        if self.mask_images:  # the first half of each image's tokens is hidden and predicted by the diffusion head
            image_mask = torch.zeros(self.batch_size, self.tokens_per_image, dtype=torch.bool)
            image_mask[:, : self.tokens_per_image // 2] = True
            inputs_dict["image_mask"] = image_mask.to(torch_device)
        return config, inputs_dict


# Where transformers' own modeling_auto.py would list MMAR: the common tests pick base models, causal-LM heads and
# image-text-to-text heads from these name mappings (MMAR registers the same Auto classes at import time).
MMAR_AUTO_MAPPING_NAMES = {
    "MODEL_MAPPING_NAMES": "MMARModel",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES": "MMARForConditionalGeneration",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "MMARForConditionalGeneration",
}


class MMARCommonTestMixin:
    """What both MMAR test classes share: MMAR in the auto mappings, labels, and the skips MMAR's design explains."""

    _is_composite = True
    # the mixin runs the weight-initialisation check only for models added from 2023 on (read off a copyright header)
    test_can_init_all_missing_weights_before_2023 = True
    # The mixin reads the features' width off a vision config, which MMAR has none of: its image embedder works at the
    # LLM's width ([N, tokens_per_image, text hidden size], checked in tests/test_transformers_conventions.py).
    skip_test_image_features_output_shape = True

    def setUp(self):
        super().setUp()  # a no-op, unless transformers' common tests could not be fetched: then it fails with why
        for mapping, class_name in MMAR_AUTO_MAPPING_NAMES.items():
            patcher = patch.dict(getattr(modeling_auto, mapping), {"mmar": class_name})
            patcher.start()
            self.addCleanup(patcher.stop)
        self.model_tester = self.model_tester_class(self)
        self.config_tester = config_common.ConfigTester(self, config_class=MMARConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is MMARForConditionalGeneration:  # text loss on the text tokens only
            labels = inputs_dict["input_ids"].clone()
            labels[labels == self.model_tester.image_token_id] = -100
            inputs_dict["labels"] = labels
        return inputs_dict

    def _image_features_get_expected_num_attentions(self, model_tester=None):
        return self.model_tester.embedder_depth  # the image embedder's blocks, not the LLM's layers

    def test_config(self):
        self.config_tester.run_common_tests()

    @parameterized.expand([("linear",), ("dynamic",), ("yarn",)])
    @unittest.skip("Feeds 1.5x max_position_embeddings tokens, also to the unscaled model; MMAR refuses inputs past "
                   "max_position_embeddings with a clear error (test_model_bad_input.py) instead of extrapolating")
    def test_model_rope_scaling_from_config(self, scaling_type):
        pass

    def test_sdpa_can_dispatch_composite_models(self):
        # The mixin's version looks for a vision tower beside the language model. MMAR's only dispatched attention is
        # the LLM's: the image embedder's blocks are torch's own layers, the same under every attn_implementation.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with tempfile.TemporaryDirectory() as folder:
                model_class(copy.deepcopy(config)).save_pretrained(folder)
                loaded = {name: model_class.from_pretrained(folder, attn_implementation=name)
                          for name in ("sdpa", "eager")}
            for requested, model in loaded.items():
                self.assertEqual(model.config._attn_implementation, requested)
                self.assertEqual(model.config.text_config._attn_implementation, requested)
                attention_layers = [module for module in model.modules() if type(module).__name__.endswith("Attention")
                                    and isinstance(getattr(module, "config", None), PreTrainedConfig)]
                self.assertEqual(len(attention_layers), self.model_tester.num_hidden_layers)
                for module in attention_layers:
                    self.assertEqual(module.config._attn_implementation, requested)

    @unittest.skip("MMAR is a composite model (text_config): test_sdpa_can_dispatch_composite_models checks it")
    def test_sdpa_can_dispatch_non_composite_models(self):
        pass

    @unittest.skip("GenerationTesterMixin lives in tests/generation/, which transformers' sdist does not ship; "
                   "MMAR's generate is tested in tests/test_text_generation.py and tests/test_image_generation.py")
    def test_generation_tester_mixin_inheritance(self):
        pass


@require_torch
class MMARModelTest(MMARCommonTestMixin, common.ModelTesterMixin, unittest.TestCase):
    """Understanding inputs: one fully visible image, then text."""

    model_tester_class = MMARModelTester
    all_model_classes = (MMARModel, MMARForConditionalGeneration)
    # The diffusion head and the mask embedding only learn from masked image tokens, which understanding inputs do
    # not have; MMARImageGenerationInputsTest checks that every parameter gets a gradient.
    test_all_params_have_gradient = False


class MMARImageGenerationInputsTester(MMARModelTester):
    def __init__(self, parent, **kwargs):
        # a two-level AutoencoderKL (8x8 pixels -> 4x4x4 latents): the VAE's loading and fp32 rules are tested too
        tiny_vae = {**TINY_VAE, "block_out_channels": [4, 4], "norm_num_groups": 2}
        super().__init__(parent, image_at_end=True, mask_images=True, embedder_depth=0, vae_config=tiny_vae, **kwargs)


@require_torch
class MMARImageGenerationInputsTest(MMARCommonTestMixin, common.ModelTesterMixin, unittest.TestCase):
    """Generation inputs: text, then an image half hidden behind the mask embedding (diffusion loss on those tokens)."""

    model_tester_class = MMARImageGenerationInputsTester
    all_model_classes = (MMARForConditionalGeneration,)
