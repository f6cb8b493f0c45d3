"""The per-token MLP diffusion head (MAR-style adaLN MLP), conditioned on the LLM hidden state."""

from __future__ import annotations

import math

import torch
from torch import nn


def _zero_init(linear: nn.Linear) -> nn.Linear:
    # `_init_weights` zeroes leaf Linears carrying this flag; custom-code models never visit containers.
    linear._zero_init = True
    return linear


def timestep_embedding(timesteps: torch.Tensor, dim: int = 256, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape [N] -> [N, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class MMARTimestepEmbedder(nn.Module):
    def __init__(self, width: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(timesteps, self.frequency_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class MMARHeadResBlock(nn.Module):
    """LayerNorm -> adaLN modulate -> MLP -> gated residual."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada_ln = nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(width, 3 * width)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada_ln(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class MMARHeadFinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_ln = nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(width, 2 * width)))
        self.linear = _zero_init(nn.Linear(width, out_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada_ln(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class MMARDiffusionHead(nn.Module):
    """
    Predicts the diffusion target (v, epsilon or x0, per `prediction_type`) of one image token from its noisy
    value `x_t`, its timestep and the LLM hidden state `condition` at the token's own position.

    Tokens are independent rows: any leading shape works as long as the three inputs agree on it.
    """

    def __init__(self, token_dim: int, condition_dim: int, width: int, depth: int):
        super().__init__()
        # Set by `model.activation_checkpointing_enable()` (or the older `gradient_checkpointing_enable()`) like the
        # LLM's layers: `diffusion_loss` then checkpoints the head one `diffusion_batch_mul` copy at a time.
        self.gradient_checkpointing = False
        self.token_dim = token_dim
        self.input_proj = nn.Linear(token_dim, width)
        self.time_embed = MMARTimestepEmbedder(width)
        self.condition_proj = nn.Linear(condition_dim, width)
        self.blocks = nn.ModuleList(MMARHeadResBlock(width) for _ in range(depth))
        self.final_layer = MMARHeadFinalLayer(width, token_dim)

    def embed_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """The head's embedding of LLM states [..., H] -> [..., width]. The masked-AR sampler computes it once per
        step and passes it as `condition_embedding` to each of the head's diffusion steps."""
        return self.condition_proj(condition.to(self.condition_proj.weight.dtype))

    def forward_embedded(self, noisy_tokens, timesteps, condition_embedding):
        """`forward` with a precomputed condition embedding, every input positional (for torch checkpointing)."""
        return self(noisy_tokens, timesteps, condition_embedding=condition_embedding)

    def forward(
        self,
        noisy_tokens: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor | None = None,
        *,
        condition_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        noisy_tokens [..., D]; timesteps: one per token, or a single one for all tokens (embedded once);
        `condition` [..., H] (LLM states) or its precomputed `embed_condition(condition)` [..., width].
        """
        if noisy_tokens.shape[-1] != self.token_dim:
            raise ValueError(f"noisy_tokens last dim must be token_dim={self.token_dim}, got {noisy_tokens.shape}")
        if (condition is None) == (condition_embedding is None):
            raise ValueError("pass exactly one of `condition` and `condition_embedding`")
        lead = noisy_tokens.shape[:-1]
        x = self.input_proj(noisy_tokens.reshape(-1, self.token_dim))
        if condition_embedding is None:
            condition_embedding = self.embed_condition(condition)
        # A single timestep is embedded once and broadcast over the rows (the sampler's case).
        time_embedding = self.time_embed(timesteps.reshape(-1))
        y = time_embedding.to(x.dtype) + condition_embedding.reshape(x.shape[0], -1).to(x.dtype)
        for block in self.blocks:
            x = block(x, y)
        return self.final_layer(x, y).reshape(*lead, self.token_dim)


__all__ = ["MMARDiffusionHead"]
