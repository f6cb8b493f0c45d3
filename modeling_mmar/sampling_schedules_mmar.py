"""What each masked-AR step of the image sampler does: how many tokens leave the mask and in which order, how many
diffusion steps the head takes for them, and at which classifier-free guidance scale.

The reference loop is MAR's: a random order, a cosine schedule over `num_iter` steps, the same number of head steps
at every step. Two training-free accelerations from the literature change the schedule, not the model:

- Diffusion step annealing (DiSA, arXiv 2505.20297): the later a token is sampled, the more of the image it is
  conditioned on and the easier its distribution; the head's number of diffusion steps falls linearly from
  `num_inference_steps` at the first masked-AR step to `final_num_inference_steps` at the last.
- Generation then reconstruction (GtR, arXiv 2510.17171): a checkerboard half of the tokens (the structure) is
  generated over the first `num_iter - reconstruction_steps` steps on the cosine schedule, the other half (each of its
  tokens between revealed neighbours) in the last `reconstruction_steps` steps.
"""

from __future__ import annotations

import math

import torch


def cosine_masked_counts(num_tokens: int, num_iter: int) -> list[int]:
    """How many tokens are still masked after each step: floor(L*cos(pi/2*(k+1)/K)), clamped to [1, masked-1];
    the last step reveals everything. At least one token leaves the mask per step while more than one is left."""
    masked, counts = num_tokens, []
    for step in range(num_iter):
        if step == num_iter - 1:
            masked = 0
        else:
            target = math.floor(num_tokens * math.cos(math.pi / 2 * (step + 1) / num_iter))
            masked = max(1, min(masked - 1, target))
        counts.append(masked)
    return counts


def two_stage_masked_counts(num_structure: int, num_detail: int, num_iter: int, reconstruction_steps: int) -> list[int]:
    """GtR's schedule: the `num_structure` tokens leave the mask on the cosine schedule over the first
    `num_iter - reconstruction_steps` steps, then the `num_detail` tokens in even shares over the last
    `reconstruction_steps`. Returns the tokens still masked after each step."""
    structure = [count + num_detail for count in cosine_masked_counts(num_structure, num_iter - reconstruction_steps)]
    detail = [num_detail - round(num_detail * (k + 1) / reconstruction_steps) for k in range(reconstruction_steps)]
    return structure + detail


def checkerboard(num_tokens: int) -> torch.Tensor:
    """True on the tokens of the square token grid whose row + column is even (GtR's structure tokens)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"reconstruction_steps needs a square grid of image tokens, got {num_tokens} tokens")
    index = torch.arange(num_tokens)
    return (index // side + index % side) % 2 == 0


def structure_first(order: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, int]:
    """`order` (token indices, random) rearranged so that the checkerboard's tokens come first, each half keeping
    its random order; returns it and the number of structure tokens."""
    on_board = checkerboard(num_tokens).to(order.device)[order]
    return torch.cat([order[on_board], order[~on_board]]), int(on_board.sum())


def masked_counts(order_length: int, num_iter: int, num_structure: int | None = None,
                  reconstruction_steps: int | None = None) -> list[int]:
    """Tokens still masked after each of the `num_iter` steps for an image that generates `order_length` tokens."""
    if order_length == 0:
        return [0] * num_iter
    if reconstruction_steps is None:
        return cosine_masked_counts(order_length, num_iter)
    return two_stage_masked_counts(num_structure, order_length - num_structure, num_iter, reconstruction_steps)


def annealed_inference_steps(num_inference_steps: int, final_num_inference_steps: int | None, step: int,
                             num_iter: int) -> int:
    """DiSA's linear annealing: the head's diffusion steps at masked-AR step `step` (0-based) of `num_iter`."""
    if final_num_inference_steps is None or num_iter == 1:
        return num_inference_steps
    progress = step / (num_iter - 1)
    return max(1, round(num_inference_steps + (final_num_inference_steps - num_inference_steps) * progress))


def guidance_for_step(guidance_scale: float, schedule: str, revealed_after_step: int, num_tokens: int) -> float:
    """CFG scale of one step: constant, or linear s_k = 1 + (s - 1) * revealed_after_step / L."""
    if schedule == "constant":
        return guidance_scale
    return 1.0 + (guidance_scale - 1.0) * revealed_after_step / num_tokens


__all__ = ["annealed_inference_steps", "checkerboard", "cosine_masked_counts", "guidance_for_step", "masked_counts",
           "structure_first", "two_stage_masked_counts"]
