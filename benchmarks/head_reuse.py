"""Prototype of a sampler optimisation the harness showed is worth making in the model: reuse the diffusion head's
condition and timestep embeddings across its calls.

Where the time goes (cpu-small profile of `model.generate` with DDIM 25): about 60 % in the diffusion head, which
runs num_iter x num_inference_steps times. At every one of those calls the head recomputes
- `condition_proj(condition)` although the condition (the LLM state) is fixed for a whole masked-AR step, and
- the sinusoidal timestep embedding and its 2-layer MLP for every token row although all rows share one timestep.
Computing the first once per masked-AR step and the second once per diffusion step (one row, broadcast) removes 3 of
the head's ~13 linear layers per call and all of its per-row timestep work; the result is the same up to float
rounding (`tests/test_benchmarks.py` checks it against `model.generate`).

The change proposed for the model (modeling_mmar/diffusion_head_mmar.py + sampling_mmar.py, owned elsewhere):
`MMARDiffusionHead.embed_condition(condition)` and `forward(noisy, timesteps, condition=None, *,
condition_embedding=None)` that embeds a single timestep once and broadcasts it; `HeadSampler.sample` embeds the
conditions before its loop and passes `t.reshape(1)`. Until then `reused_head_embeddings()` swaps this sampler in.
"""

from __future__ import annotations

import contextlib

import torch

from modeling_mmar import sampling_mmar
from modeling_mmar.sampling_mmar import HeadSampler


def head_forward(head, noisy_tokens: torch.Tensor, time_embedding: torch.Tensor, condition_embedding: torch.Tensor):
    """`MMARDiffusionHead.forward` given its two embeddings ([1 or N, width] and [N, width])."""
    y = time_embedding + condition_embedding
    x = head.input_proj(noisy_tokens)
    for block in head.blocks:
        x = block(x, y)
    return head.final_layer(x, y)


class ReusedEmbeddingHeadSampler(HeadSampler):
    """`HeadSampler` with the condition embedded once per masked-AR step and the timestep once per diffusion step;
    same random draws in the same order, same scheduler calls."""

    def sample(self, cond, uncond, guidance: float, randomness, per_image: int):
        scheduler, head, dim = self.scheduler, self.head, self.head.token_dim
        scheduler.set_timesteps(self.num_inference_steps, device=cond.device)
        sample = randomness.normal(per_image, dim) * scheduler.init_noise_sigma
        conditions = cond if uncond is None else torch.cat([cond, uncond])
        condition_embedding = head.condition_proj(conditions.to(self.head_dtype))
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(sample, t)
            if uncond is not None:
                model_input = torch.cat([model_input, model_input])
            time_embedding = head.time_embed(t.reshape(1).to(cond.device))
            output = head_forward(head, model_input.to(self.head_dtype), time_embedding, condition_embedding).float()
            if uncond is not None:
                output_cond, output_uncond = output.chunk(2)
                output = output_uncond + guidance * (output_cond - output_uncond)
            sample = scheduler.step(output, t, sample, **self._step_kwargs(randomness, per_image, dim)).prev_sample
        return sample


@contextlib.contextmanager
def reused_head_embeddings():
    """Within the block, `model.generate(generation_mode="image")` samples with `ReusedEmbeddingHeadSampler`."""
    original = sampling_mmar.HeadSampler
    sampling_mmar.HeadSampler = ReusedEmbeddingHeadSampler
    try:
        yield
    finally:
        sampling_mmar.HeadSampler = original


__all__ = ["ReusedEmbeddingHeadSampler", "head_forward", "reused_head_embeddings"]
