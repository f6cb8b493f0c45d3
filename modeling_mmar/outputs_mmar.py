"""MMAR's output classes: the backbone's, the image features' and the full model's (both losses)."""

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast


@dataclass
class MMARImageFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    What `MMARModel.get_image_features` returns: the images as the LLM reads them.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(num_images, tokens_per_image, hidden_size)`):
            The image embedder's output at the LLM width (masked tokens replaced by the mask embedding).
        pooler_output (`torch.FloatTensor` of shape `(num_images, tokens_per_image, hidden_size)`):
            The embeddings that replace the `<img>` placeholders, one entry per image (here `last_hidden_state`
            itself: the embedder already works at the LLM width, there is no separate projector).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The embedder's input embedding and each of its `embedder_depth` blocks' outputs.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            Each embedder block's attention weights, `(num_images, num_heads, tokens_per_image, tokens_per_image)`.
        image_tokens (`torch.FloatTensor` of shape `(num_images, tokens_per_image, token_dim)`):
            The clean continuous image tokens (VAE latents or pixels, patchified): the diffusion targets.
    """

    image_tokens: torch.FloatTensor | None = None


@dataclass
class MMARModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Hidden states of the LLM's last layer, at text and image positions alike.
        cache (`Cache`, *optional*, returned when `use_cache=True`):
            The LLM's key/value cache, image spans included.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The embeddings and each layer's output, each `(batch_size, sequence_length, hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            Each layer's attention weights, `(batch_size, num_heads, sequence_length, sequence_length)`.
        image_tokens (`torch.FloatTensor` of shape `(num_images, tokens_per_image, token_dim)`, *optional*):
            The clean continuous image tokens of the images in the input (before masking).
    """

    image_tokens: torch.FloatTensor | None = None


@dataclass
class MMARCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` or `image_mask` is given):
            `text_loss + image_loss_weight * image_loss` (whichever are present).
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
            Scores of the language-modeling head.
        cache (`Cache`, *optional*, returned when `use_cache=True`):
            The LLM's key/value cache, image spans included.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The embeddings and each layer's output, each `(batch_size, sequence_length, hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            Each layer's attention weights, `(batch_size, num_heads, sequence_length, sequence_length)`.
        text_loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is given):
            Next-token cross-entropy on `labels`.
        image_loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `image_mask` masks tokens):
            The diffusion head's MSE over the masked image tokens.
        image_tokens (`torch.FloatTensor` of shape `(num_images, tokens_per_image, token_dim)`, *optional*):
            The clean continuous image tokens of the images in the input (before masking).
    """

    text_loss: torch.FloatTensor | None = None
    image_loss: torch.FloatTensor | None = None
    image_tokens: torch.FloatTensor | None = None


__all__ = ["MMARCausalLMOutputWithPast", "MMARImageFeaturesOutput", "MMARModelOutputWithPast"]
