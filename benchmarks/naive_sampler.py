"""The naive MAR sampling loop: the baseline that the optimised `model.generate(generation_mode="image")` is
measured against.

It is the masked-AR algorithm exactly as the MAR reference code reads, with none of the optimisations:
- no prefix KV cache: the whole sequence `prompt <boi> [image span]` runs through the LLM at every masked-AR step;
- separate conditional and unconditional passes: the LLM runs once on the conditional rows and once on the
  unconditional rows, and the diffusion head is called once for each at every diffusion step;
- a 100-step DDPM head (`MMARScheduler`, the training process respaced to `num_inference_steps`).

Randomness is drawn like the optimised sampler draws it (per image: order of revelation, then for each masked-AR
step x_T and the noise of all its diffusion steps), so with the same scheduler and step count both give the same
images; a different scheduler or step count changes the samples but not their distribution, which is what the
quality comparison (digit-FD, generated-digit accuracy) checks.
"""

from __future__ import annotations

import torch
from diffusers.image_processor import VaeImageProcessor

from modeling_mmar import MMARScheduler
from modeling_mmar.sampling_mmar import (
    PerImageRandomness,
    build_prompt_rows,
    cosine_masked_counts,
    guidance_for_step,
)


class NaiveCallCounter:
    """Counts the sequential LLM passes and diffusion-head calls of one naive run."""

    def __init__(self):
        self.backbone_passes = 0
        self.head_calls = 0


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from a left-padded mask (pads get 1, like `GenerationMixin`)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _span_hidden(model, prefix_ids, prefix_mask, tokens, still_masked) -> torch.Tensor:
    """LLM states at the image positions: the full sequence `prefix + span`, no cache."""
    cfg = model.config
    num_tokens = cfg.tokens_per_image
    span_ids = torch.full((prefix_ids.shape[0], num_tokens), cfg.image_token_id, dtype=torch.long,
                          device=prefix_ids.device)
    mask = torch.cat([prefix_mask, torch.ones_like(span_ids)], dim=1)
    out = model.model(input_ids=torch.cat([prefix_ids, span_ids], dim=1), attention_mask=mask,
                      position_ids=_positions(mask), image_tokens=tokens, image_mask=still_masked, use_cache=False)
    return out.last_hidden_state[:, -num_tokens:]


def _head_sample(model, scheduler, cond, uncond, guidance, temperature, num_inference_steps, randomness, per_image,
                 counter):
    """Sample the tokens conditioned on `cond` [M, H] (CFG against `uncond`, or None), one head call per branch."""
    head = model.diffusion_head
    dim = head.token_dim
    scheduler.set_timesteps(num_inference_steps, device=cond.device)
    counts = [per_image] * len(randomness.generators)
    sample = randomness.normal(counts, dim) * scheduler.init_noise_sigma
    step_noise = randomness.normal_per_step(counts, dim, len(scheduler.timesteps)) if temperature > 0 else None
    for index, t in enumerate(scheduler.timesteps):
        timesteps = t.reshape(1).expand(sample.shape[0]).to(cond.device)
        output = head(sample, timesteps, cond).float()
        counter.head_calls += 1
        if uncond is not None:
            output_uncond = head(sample, timesteps, uncond).float()
            counter.head_calls += 1
            output = output_uncond + guidance * (output - output_uncond)
        noise = step_noise[index] if step_noise is not None else None
        sample = scheduler.step(output, t, sample, temperature=temperature, variance_noise=noise).prev_sample
    return sample


@torch.no_grad()
def naive_generate(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    *,
    num_iter: int,
    guidance_scale: float = 3.0,
    guidance_schedule: str = "linear",
    temperature: float = 1.0,
    num_inference_steps: int = 100,
    generator: torch.Generator | list[torch.Generator] | None = None,
    output_type: str = "pt",
    counter: NaiveCallCounter | None = None,
):
    """One image per `<bos>caption<boi>` prompt row, the naive way. Returns [B, C, H, W] in [0, 1] ("pt") or the
    continuous image tokens [B, L, D] ("latent")."""
    cfg = model.config
    num_tokens = cfg.tokens_per_image
    if not 1 <= num_iter <= num_tokens:
        raise ValueError(f"num_iter must be in [1, tokens_per_image={num_tokens}], got {num_iter}")
    if output_type not in ("pt", "latent"):
        raise ValueError(f"output_type must be 'pt' or 'latent', got {output_type!r}")
    counter = counter if counter is not None else NaiveCallCounter()
    device = model.device
    batch_size = input_ids.shape[0]
    with_uncond = guidance_scale != 1.0
    prefix_ids, prefix_mask = build_prompt_rows(input_ids, attention_mask, None, None, cfg, 1, with_uncond)
    prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device)
    scheduler = MMARScheduler.from_model_config(cfg)
    randomness = PerImageRandomness(generator, batch_size, device)
    orders = randomness.permutations(num_tokens)

    tokens = torch.zeros(batch_size, num_tokens, cfg.token_dim, device=device)
    still_masked = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=device)
    revealed = 0
    for masked_after in cosine_masked_counts(num_tokens, num_iter):
        hidden_cond = _span_hidden(model, prefix_ids[:batch_size], prefix_mask[:batch_size], tokens, still_masked)
        counter.backbone_passes += 1
        hidden_uncond = None
        if with_uncond:
            hidden_uncond = _span_hidden(model, prefix_ids[batch_size:], prefix_mask[batch_size:], tokens,
                                         still_masked)
            counter.backbone_passes += 1
        revealed_after = num_tokens - masked_after
        leaving = orders[:, revealed:revealed_after]
        if leaving.shape[1]:
            gather = leaving.unsqueeze(-1).expand(-1, -1, hidden_cond.shape[-1])
            cond = hidden_cond.gather(1, gather).flatten(0, 1)
            uncond = hidden_uncond.gather(1, gather).flatten(0, 1) if with_uncond else None
            guidance = guidance_for_step(guidance_scale, guidance_schedule, revealed_after, num_tokens)
            new_tokens = _head_sample(model, scheduler, cond, uncond, guidance, temperature, num_inference_steps,
                                      randomness, leaving.shape[1], counter)
            tokens.scatter_(1, leaving.unsqueeze(-1).expand(-1, -1, cfg.token_dim),
                            new_tokens.view(batch_size, -1, cfg.token_dim).to(tokens.dtype))
            still_masked.scatter_(1, leaving, False)
        revealed = revealed_after

    if output_type == "latent":
        return tokens
    pixels = model.model.decode_image_tokens(tokens)
    return VaeImageProcessor(do_normalize=True).postprocess(pixels.float(), output_type="pt")


__all__ = ["NaiveCallCounter", "naive_generate"]
