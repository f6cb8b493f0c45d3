"""MMAR processors: `MMARImageProcessor`, `MMARProcessor` and the embedded default's tokenizer builder.

Importing this package registers the classes with `AutoImageProcessor` / `AutoProcessor` (for `MMARConfig`, the
"mmar" model type) and marks them for remote code, so `save_pretrained` writes their `auto_map` and source files.
This folder is flat (relative imports only) so that it can ship as Hub remote code next to `modeling_mmar`.
"""

from transformers import AutoImageProcessor, AutoProcessor

from .image_processing_mmar import MMARImageProcessor
from .processing_mmar import DEFAULT_CHAT_TEMPLATE, MMARProcessor
from .tokenization_mmar import IMAGE_SPECIAL_TOKENS, SPECIAL_TOKENS, add_image_tokens, build_tokenizer


def _mmar_config_key():
    """The Auto mappings are keyed by config class: MMARConfig when the model package is installed (the mmar-hf
    distribution ships both). Without it, the "mmar" model type still lets saved processors resolve by class name."""
    try:
        from modeling_mmar import MMARConfig
    except ModuleNotFoundError as error:
        if error.name != "modeling_mmar":
            raise
        return "mmar"
    return MMARConfig


_config_key = _mmar_config_key()
AutoImageProcessor.register(_config_key, image_processor_classes={"pil": MMARImageProcessor}, exist_ok=True)
AutoProcessor.register(_config_key, MMARProcessor, exist_ok=True)
MMARImageProcessor.register_for_auto_class("AutoImageProcessor")
MMARProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "IMAGE_SPECIAL_TOKENS",
    "SPECIAL_TOKENS",
    "MMARImageProcessor",
    "MMARProcessor",
    "add_image_tokens",
    "build_tokenizer",
]
