"""The per-token MLP diffusion head (MAR-style adaLN MLP), conditioned on the LLM hidden state, with its training
loss and its reverse-diffusion sampling loop (MAR's `DiffLoss`)."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int = 256, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape [N] -> [N, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def per_image_diffusion_draws(generators: list[torch.Generator], image_mask: torch.Tensor, batch_mul: int,
                               token_dim: int, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps [batch_mul * M] and noise [batch_mul * M, D] for the M masked tokens of `image_mask` [N, L] (image
    order), for `MMARDiffusionHead.loss`: image i draws [batch_mul, L] timesteps, then [batch_mul, L, D] noise, from
    `generators[i]` and keeps its masked tokens. An image's draws then depend on its generator alone, not on the other
    images of the batch, the process it lands on, or which of its own tokens are masked."""
    length = image_mask.shape[1]
    timesteps, noise = [], []
    for generator, mask in zip(generators, image_mask.bool()):
        mask = mask.to(generator.device)
        timesteps.append(torch.randint(0, num_train_timesteps, (batch_mul, length), generator=generator,
                                       device=generator.device)[:, mask])
        noise.append(torch.randn((batch_mul, length, token_dim), generator=generator, device=generator.device)[:, mask])
    return torch.cat(timesteps, dim=1).reshape(-1), torch.cat(noise, dim=1).reshape(-1, token_dim)


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
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada_ln(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class MMARHeadFinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada_ln(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class MMARDiffusionHead(nn.Module):
    """
    Predicts the diffusion target (v, epsilon or x0, per `prediction_type`) of one image token from its noisy
    value `x_t`, its timestep and the LLM hidden state `condition` at the token's own position.

    Tokens are independent rows: any leading shape works as long as the three inputs agree on it.
    With `boi_condition` (MMARConfig.boi_condition), `add_boi_states` adds each image's `<boi>` state, through the
    zero-initialised `boi_proj`, to its tokens' conditions before they reach `loss` or `sample`.
    """

    def __init__(self, token_dim: int, condition_dim: int, width: int, depth: int, boi_condition: bool = False):
        super().__init__()
        # Set by `model.activation_checkpointing_enable()` (or the older `gradient_checkpointing_enable()`) like the
        # LLM's layers: `loss` then checkpoints the head one `diffusion_batch_mul` copy at a time.
        self.gradient_checkpointing = False
        self.token_dim = token_dim
        self.input_proj = nn.Linear(token_dim, width)
        self.time_embed = MMARTimestepEmbedder(width)
        self.condition_proj = nn.Linear(condition_dim, width)
        # Per-dimension statistics the LLM states are standardised with before `condition_proj`: identity (0, 1)
        # unless `set_condition_statistics` fills them. A pretrained LLM's last states carry a few massive constant
        # dimensions (SmolLM2: one dimension ~48 where the median is ~0.5, 87 % of the energy in 8 of 576), which
        # would drown the small caption-dependent ones in the projection.
        self.register_buffer("condition_mean", torch.zeros(condition_dim))
        self.register_buffer("condition_std", torch.ones(condition_dim))
        self.blocks = nn.ModuleList(MMARHeadResBlock(width) for _ in range(depth))
        self.final_layer = MMARHeadFinalLayer(width, token_dim)
        self.boi_proj = nn.Linear(condition_dim, condition_dim) if boi_condition else None

    def zero_initialised_linears(self) -> list[nn.Linear]:
        """The adaLN modulations and the output layer start at zero (DiT / MAR): an untrained head predicts 0 and
        every residual block starts as the identity. `boi_proj` starts at zero too: the `<boi>` path adds nothing
        until it has learnt to."""
        boi = [self.boi_proj] if self.boi_proj is not None else []
        return [*(block.ada_ln[-1] for block in self.blocks), self.final_layer.ada_ln[-1], self.final_layer.linear,
                *boi]

    def add_boi_states(self, conditions: torch.Tensor, boi_states: torch.Tensor) -> torch.Tensor:
        """The conditions [..., H] of image tokens plus `boi_proj` of their image's `<boi>` state [..., H] (the same
        leading shape, or broadcastable: [B, 1, H] for every token of B images); unchanged without `boi_proj`."""
        if self.boi_proj is None:
            return conditions
        return conditions + self.boi_proj(boi_states.to(self.boi_proj.weight.dtype)).to(conditions.dtype)

    def embed_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """The head's embedding of LLM states [..., H] -> [..., width]. The masked-AR sampler computes it once per
        step and passes it as `condition_embedding` to each of the head's diffusion steps."""
        dtype = self.condition_proj.weight.dtype
        condition = (condition.to(dtype) - self.condition_mean.to(dtype)) / self.condition_std.to(dtype)
        return self.condition_proj(condition)

    @torch.no_grad()
    def set_condition_statistics(self, conditions: torch.Tensor, min_std: float = 1e-3) -> None:
        """Standardise each dimension of the head's conditions from now on with the mean and standard deviation of
        `conditions` [M, H] (LLM states at masked image positions; a data-dependent initialisation, as Glow's ActNorm):
        every dimension then reaches `condition_proj` at a comparable scale. `min_std` keeps constant dimensions
        finite."""
        if conditions.ndim != 2 or conditions.shape[-1] != self.condition_mean.numel():
            raise ValueError(f"conditions must be [M, {self.condition_mean.numel()}], got {tuple(conditions.shape)}")
        if conditions.shape[0] < 2:
            raise ValueError(f"need at least 2 conditions to estimate a standard deviation, got {conditions.shape[0]}")
        if not math.isfinite(min_std) or min_std <= 0:
            raise ValueError(f"min_std must be a positive finite number, got {min_std}")
        conditions = conditions.float()
        if not torch.isfinite(conditions).all():
            raise ValueError("conditions hold NaN or inf values")
        self.condition_mean.copy_(conditions.mean(0))
        self.condition_std.copy_(conditions.std(0).clamp_min(min_std))

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

    def loss(self, conditions: torch.Tensor, targets: torch.Tensor, scheduler, batch_mul: int = 1,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
             timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """
        MSE of the head's prediction for clean tokens `targets` [M, D] given LLM states `conditions` [M, H]. Each
        token is drawn `batch_mul` times with a fresh uniform timestep and noise (from `generator` when given, so
        that an evaluation loss is a function of its inputs) while the LLM ran once. As in diffusers' training loops,
        `noise` [batch_mul * M, D] and `timesteps` [batch_mul * M] may be given instead (copy k of every token in
        rows k*M .. (k+1)*M - 1). The regression target is the scheduler's `prediction_type`: v = alpha_t * noise -
        sigma_t * x0, the noise, or x0.
        """
        clean = targets.float().repeat(batch_mul, 1)
        if (noise is None) != (timesteps is None):
            raise ValueError("pass both noise and timesteps, or neither")
        if noise is None:
            draw_device = generator.device if generator is not None else clean.device
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator,
                                      device=draw_device)
            noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=draw_device)
        elif noise.shape != clean.shape or timesteps.shape != clean.shape[:1]:
            raise ValueError(f"noise {tuple(noise.shape)} and timesteps {tuple(timesteps.shape)} must be "
                             f"{tuple(clean.shape)} and {tuple(clean.shape[:1])} (batch_mul={batch_mul} copies of "
                             f"{targets.shape[0]} tokens)")
        noise, timesteps = noise.to(clean.device, clean.dtype), timesteps.to(clean.device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        prediction_type = scheduler.config.prediction_type
        if prediction_type == "v_prediction":
            target = scheduler.get_velocity(clean, noise, timesteps)
        elif prediction_type == "epsilon":
            target = noise
        else:
            target = clean
        # The dtype from the parameter object: reading `self.input_proj.weight` outside a forward would make DeepSpeed
        # ZeRO-3 gather that one weight on this process alone.
        noisy = noisy.to(next(self.parameters()).dtype)
        # Embedding the M states once serves all `batch_mul` copies (copy k is rows k*M .. (k+1)*M - 1).
        condition_embedding = self.embed_condition(conditions)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            # The head's activations on batch_mul copies of every masked token are most of MMAR's extra training
            # memory. Checkpointed one copy at a time, the backward pass holds a single copy's for one extra head
            # forward. Inputs go positionally: the reentrant checkpoint (e.g. from peft) takes no kwargs.
            prediction = torch.cat([
                self._gradient_checkpointing_func(self.forward_embedded, noisy_copy, timesteps_copy,
                                                  condition_embedding)
                for noisy_copy, timesteps_copy in zip(noisy.chunk(batch_mul), timesteps.chunk(batch_mul))
            ])
        else:
            prediction = self(noisy, timesteps, condition_embedding=condition_embedding.repeat(batch_mul, 1))
        return nn.functional.mse_loss(prediction.float(), target)

    @torch.no_grad()
    def sample(self, conditions: torch.Tensor, scheduler, num_inference_steps: int, initial_noise: torch.Tensor,
               uncond_conditions: torch.Tensor | None = None, guidance_scale: float | torch.Tensor = 1.0,
               generator: list[torch.Generator] | torch.Generator | None = None,
               temperature: float = 1.0, step_noise: torch.Tensor | None = None,
               compile_mode: str | None = None) -> torch.Tensor:
        """
        Reverse diffusion of M tokens from `initial_noise` [M, D] given LLM states `conditions` [M, H], with
        classifier-free guidance against `uncond_conditions` [M, H] (None: no CFG; `guidance_scale` a float or one
        per row, [M, 1]). `generator` is passed to every `scheduler.step` (a list: one per token row); `step_noise`
        [num_inference_steps, M, D] (standard normal) is instead MMARScheduler's noise of each step, drawn by the
        caller. `temperature` scales MMARScheduler's injected noise. `compile_mode` "dynamic" or "static" runs the
        head through `torch.compile` (see `compiled_head`).
        """
        from .scheduling_mmar import MMARScheduler

        if temperature != 1.0 and not isinstance(scheduler, MMARScheduler):
            raise ValueError(
                f"temperature={temperature} needs an MMARScheduler (its step scales the injected noise); "
                f"{type(scheduler).__name__} has no temperature: use temperature=1.0"
            )
        step_kwargs = {"generator": generator}
        if isinstance(scheduler, MMARScheduler):
            step_kwargs["temperature"] = temperature
        scheduler.set_timesteps(num_inference_steps, device=conditions.device)
        if step_noise is not None and step_noise.shape[0] < len(scheduler.timesteps):
            raise ValueError(f"step_noise holds {step_noise.shape[0]} steps for {len(scheduler.timesteps)} timesteps")
        sample = initial_noise * scheduler.init_noise_sigma
        with_cfg = uncond_conditions is not None
        # The LLM states are fixed for the whole diffusion loop: embed them once, not at every head step.
        condition_embedding = self.embed_condition(
            torch.cat([conditions, uncond_conditions]) if with_cfg else conditions)
        forward = self.forward_embedded if compile_mode is None else compiled_head(self, compile_mode)
        dtype = self.input_proj.weight.dtype
        for index, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(sample, t)
            if with_cfg:  # the conditional and unconditional predictions share one x_t
                model_input = torch.cat([model_input, model_input])
            output = forward(model_input.to(dtype), t.reshape(1).to(conditions.device), condition_embedding).float()
            if with_cfg:
                output_cond, output_uncond = output.chunk(2)
                output = output_uncond + guidance_scale * (output_cond - output_uncond)
            if step_noise is not None:
                step_kwargs["variance_noise"] = step_noise[index]
            sample = scheduler.step(output, t, sample, **step_kwargs).prev_sample
        return sample


def compiled_head(head: MMARDiffusionHead, mode: str):
    """`head.forward_embedded` through `torch.compile`, compiled once per head and mode. "dynamic" compiles one graph
    for any number of token rows; "static" pads the rows to the next power of two (zeros, sliced off after) so that
    a few fixed-shape graphs serve every masked-AR step. The first calls pay the compilation (tens of seconds on a
    CPU); the outputs equal the eager head's up to float rounding."""
    compiled = head.__dict__.setdefault("_compiled_forward", {})
    if mode not in compiled:
        compiled[mode] = torch.compile(head.forward_embedded, dynamic=mode == "dynamic")
    forward = compiled[mode]
    if mode == "dynamic":
        return forward

    def padded(noisy_tokens, timesteps, condition_embedding):
        rows = noisy_tokens.shape[0]
        bucket = 1 << max(rows - 1, 0).bit_length()
        pad = (0, 0, 0, bucket - rows)
        output = forward(nn.functional.pad(noisy_tokens, pad), timesteps, nn.functional.pad(condition_embedding, pad))
        return output[:rows]

    return padded


def boi_states(hidden_states: torch.Tensor, image_positions: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """The state just before each image span (its `<boi>`): [num_images, 1, H], images in the order of
    `hidden_states[image_positions]`."""
    rows, columns = image_positions.nonzero(as_tuple=True)  # row-major: the images' order of appearance
    first_rows, first_columns = rows[::tokens_per_image], columns[::tokens_per_image]
    if (first_columns == 0).any():
        raise ValueError("boi_condition reads the <boi> before each image span, but a span starts its sequence")
    return hidden_states[first_rows, first_columns - 1].unsqueeze(1)


__all__ = ["MMARDiffusionHead"]
