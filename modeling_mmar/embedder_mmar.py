"""Image embedder: continuous tokens -> LLM width (linear + learned positions, optional bidirectional blocks)."""

from __future__ import annotations

import torch
from torch import nn


class MMARImageEmbedder(nn.Module):
    """
    Maps image tokens [N, L, token_dim] to [N, L, hidden]. Tokens whose `image_mask` is True are replaced by a
    learned mask embedding (they are what the diffusion head must predict). `depth > 0` adds that many
    bidirectional transformer blocks (the paper's "EmbeddingViT").
    """

    def __init__(self, token_dim: int, hidden_size: int, tokens_per_image: int, depth: int = 0, num_heads: int = 4):
        super().__init__()
        self.proj = nn.Linear(token_dim, hidden_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, tokens_per_image, hidden_size))
        self.mask_embedding = nn.Parameter(torch.zeros(hidden_size))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=hidden_size, nhead=num_heads, dim_feedforward=4 * hidden_size, dropout=0.0,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden_size) if depth > 0 else nn.Identity()

    def forward(self, image_tokens: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed(image_tokens, image_mask)[0]

    def embed(self, image_tokens: torch.Tensor, image_mask: torch.Tensor | None = None,
              output_hidden_states: bool = False, output_attentions: bool = False):
        """(embeddings [N, L, hidden], hidden states, attention weights): the hidden states are the blocks' input
        and each block's output (`depth + 1` tensors), the attention weights each block's [N, heads, L, L]; either is
        None unless requested."""
        x = self.proj(image_tokens.to(self.proj.weight.dtype))
        if image_mask is not None:
            x = torch.where(image_mask.unsqueeze(-1), self.mask_embedding.to(x.dtype), x)
        x = x + self.position_embedding.to(x.dtype)
        hidden_states, attentions = [x], []
        for block in self.blocks:
            x, weights = _pre_norm_block(block, x, output_attentions)
            hidden_states.append(x)
            attentions.append(weights)
        return (self.norm(x), tuple(hidden_states) if output_hidden_states else None,
                tuple(attentions) if output_attentions else None)


def _pre_norm_block(block: nn.TransformerEncoderLayer, x: torch.Tensor, output_attentions: bool):
    """`block(x)` for a norm-first layer, written out so that it can also return its attention weights (the layer's
    own forward never does); the same code runs either way, so the outputs do not depend on the request."""
    h = block.norm1(x)
    attended, weights = block.self_attn(h, h, h, need_weights=output_attentions, average_attn_weights=False)
    x = x + block.dropout1(attended)
    h = block.linear2(block.dropout(block.activation(block.linear1(block.norm2(x)))))
    return x + block.dropout2(h), weights
