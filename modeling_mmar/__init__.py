"""MMAR for Hugging Face: importing this package registers the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from .configuration_mmar import MMARConfig
from .diffusion_head_mmar import MMARDiffusionHead
from .modeling_mmar import (
    MMARCausalLMOutputWithPast,
    MMARForConditionalGeneration,
    MMARModel,
    MMARModelOutputWithPast,
    MMARPreTrainedModel,
)
from .pipeline_mmar import MMARPipeline
from .pipeline_mmar_inpaint import MMARInpaintPipeline
from .scheduling_mmar import MMARScheduler, default_sampling_scheduler

AutoConfig.register("mmar", MMARConfig, exist_ok=True)
AutoModel.register(MMARConfig, MMARModel, exist_ok=True)
AutoModelForImageTextToText.register(MMARConfig, MMARForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(MMARConfig, MMARForConditionalGeneration, exist_ok=True)
# Remote code: save_pretrained copies this flat folder's files and writes auto_map (AutoConfig + the saved class's
# auto class; MMARForConditionalGeneration.save_pretrained adds AutoModel and AutoModelForCausalLM).
MMARConfig.register_for_auto_class()
MMARForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "MMARConfig",
    "MMARDiffusionHead",
    "MMARModel",
    "MMARPreTrainedModel",
    "MMARForConditionalGeneration",
    "MMARModelOutputWithPast",
    "MMARCausalLMOutputWithPast",
    "MMARScheduler",
    "default_sampling_scheduler",
    "MMARPipeline",
    "MMARInpaintPipeline",
]
