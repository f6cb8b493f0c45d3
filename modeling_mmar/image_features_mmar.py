"""Where images enter the sequence: finding the `<img>` placeholders and reading encoded images back.

`MMARModel.forward` finds image spans in `input_ids`, or in `inputs_embeds` as the embedding of `<img>` (the
convention of transformers' VLMs), and takes images as pixels, clean tokens or `mm_encoder_outputs` (the output of
`get_image_features`, which `generate` computes once before prefill).
"""

from __future__ import annotations

import torch

from .image_tokens_mmar import check_image_mask, check_image_spans, check_image_tokens, image_block_ids
from .outputs_mmar import MMARImageFeaturesOutput


def encode_image_features(backbone, pixel_values, image_tokens, image_mask, output_hidden_states: bool,
                          output_attentions: bool) -> MMARImageFeaturesOutput:
    """`MMARModel.get_image_features`: pixels (or clean tokens) -> tokens -> the image embedder's output."""
    config = backbone.config
    if (pixel_values is None) == (image_tokens is None):
        raise ValueError("get_image_features takes exactly one of pixel_values or image_tokens")
    if pixel_values is not None:
        image_tokens = backbone.encode_images(pixel_values)
    else:
        check_image_tokens(image_tokens, config.tokens_per_image, config.token_dim)
    if image_mask is not None:
        check_image_mask(image_mask, image_tokens.shape[0], config.tokens_per_image)
    embeddings, hidden_states, attentions = backbone.image_embedder.embed(
        image_tokens, image_mask, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
    return MMARImageFeaturesOutput(last_hidden_state=embeddings, pooler_output=embeddings, hidden_states=hidden_states,
                                   attentions=attentions, image_tokens=image_tokens)


def image_positions_in(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, embeddings,
                       image_token_id: int) -> torch.Tensor:
    """Bool [batch, seq], True at `<img>` tokens: from `input_ids`, else where `inputs_embeds` equals the input
    embedding of `<img>` (embedded inputs keep that embedding at image positions, as with transformers' VLMs)."""
    if input_ids is not None:
        return input_ids == image_token_id
    image_embedding = embeddings(torch.tensor(image_token_id, device=inputs_embeds.device))
    return (inputs_embeds == image_embedding.to(inputs_embeds.dtype)).all(-1)


def count_image_spans(image_positions: torch.Tensor, tokens_per_image: int, image_token_id: int) -> int:
    """The number of image spans; raises if a run of `<img>` positions is not `tokens_per_image` long."""
    return check_image_spans(torch.where(image_positions, image_token_id, -1), image_token_id, tokens_per_image)


def span_block_ids(image_positions: torch.Tensor, past_length: int) -> torch.Tensor:
    """`block_sequence_ids` for the masks: each image span its own id, text -1 (cached positions included)."""
    block_ids = image_block_ids(image_positions.long(), 1)
    return torch.nn.functional.pad(block_ids, (past_length, 0), value=-1) if past_length else block_ids


def image_features_from_encoder_outputs(features, num_spans: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embeddings [num_spans, L, hidden], clean image tokens or None) from a `get_image_features` output.

    `generate` may have regrouped `pooler_output` for beam search or several sequences per prompt (a list of
    per-image tensors, repeated); the clean tokens are not regrouped, so they are only returned while they still
    match the images one to one."""
    pooled = features.pooler_output
    if pooled is None:
        raise ValueError("mm_encoder_outputs['image'] has no pooler_output: pass what get_image_features returns")
    embeds = pooled if isinstance(pooled, torch.Tensor) else torch.stack(list(pooled))
    if embeds.shape[0] != num_spans:
        raise ValueError(
            f"Got {embeds.shape[0]} image(s) but the sequence holds {num_spans} image span(s); pass exactly one "
            "image per image token of the processor's text"
        )
    image_tokens = getattr(features, "image_tokens", None)
    if image_tokens is not None and image_tokens.shape[0] != num_spans:
        image_tokens = None
    return embeds, image_tokens


__all__ = ["count_image_spans", "encode_image_features", "image_features_from_encoder_outputs", "image_positions_in", "span_block_ids"]
