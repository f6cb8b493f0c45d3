"""Generation for MMAR: text generation through `GenerationMixin`, image generation through the masked-AR sampler."""

from transformers import GenerationMixin


class MMARGenerationMixin(GenerationMixin):
    """`generate(..., generation_mode="text" | "image")`: to be completed by the generation issue."""
