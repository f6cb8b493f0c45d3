"""Text -> image: MMAR's masked-autoregressive sampling loop.

Every row is `prompt <boi> [image span]`. The prompt prefix never changes, so it runs through the LLM once and
its KV cache is reused at each of the `num_iter` masked-AR steps, where only the image span runs again (visible
tokens embedded, the mask embedding elsewhere). The tokens leaving the mask at a step are sampled by the
per-token diffusion head with a diffusers scheduler, all of them (every image, conditional and unconditional
rows) in one head call per scheduler step. Randomness is per image: the order of revelation, x_T and the
per-step head noise come from that image's own generator in a fixed order, so an image generated in a batch
equals the one generated alone with the same generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from .image_span_runner_mmar import ImageSpanRunner
from .inpainting_mmar import (
    check_image_for_inpainting,
    expand_images,
    pixel_mask_from_token_mask,
    token_mask_from_mask_image,
)
from .input_checks_mmar import (
    check_attention_mask,
    check_bool,
    check_callable,
    check_choice,
    check_fits_positions,
    check_float,
    check_generator,
    check_int,
    check_token_ids,
    embedding_rows,
)
from .sampling_schedules_mmar import (
    annealed_inference_steps,
    cosine_masked_counts,
    guidance_for_step,
    masked_counts,
    structure_first,
)
from .scheduling_mmar import (  # raises the ImportError that says to install diffusers
    DEFAULT_NUM_INFERENCE_STEPS,
    MMARScheduler,
    default_sampling_scheduler,
)

try:  # guarded so that transformers' remote-code import check does not demand diffusers for text-only use
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as error:  # pragma: no cover
    raise ImportError("MMAR image generation needs diffusers: pip install diffusers") from error

logger = logging.get_logger(__name__)

GUIDANCE_SCHEDULES = ("linear", "constant")
OUTPUT_TYPES = ("pt", "np", "pil", "latent")
DEFAULT_NUM_ITER = 64
COMPILE_MODES = ("dynamic", "static")  # torch.compile of the diffusion head

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


class PerImageRandomness:
    """Draws every random number of image i from generator i, in the same order whatever the batch is."""

    def __init__(self, generator, batch_size: int, device: torch.device):
        if isinstance(generator, (list, tuple)):  # one per image: check_generator checked the count at the edge
            self.generators = list(generator)
        else:
            self.generators = [generator] * batch_size
        self.device = device

    def permutations(self, num_tokens: int) -> torch.Tensor:
        """One random order of revelation per image: [B, L]."""
        orders = []
        for g in self.generators:
            rand_device = g.device if g is not None else torch.device("cpu")
            orders.append(torch.randperm(num_tokens, generator=g, device=rand_device).to(self.device))
        return torch.stack(orders)

    def per_row_generators(self, counts: list[int]) -> list[torch.Generator] | None:
        """Image i's generator for each of its `counts[i]` token rows (what randn_tensor takes for per-row draws);
        None when some image has no generator (the global RNG then draws for all)."""
        if any(g is None for g in self.generators):
            return None
        return [g for g, count in zip(self.generators, counts) for _ in range(count)]

    def normal(self, counts: list[int], dim: int) -> torch.Tensor:
        """Standard normal [sum(counts), dim], image-major: `counts[i]` rows from image i's generator."""
        draws = [randn_tensor((count, dim), generator=g, device=self.device, dtype=torch.float32)
                 for g, count in zip(self.generators, counts)]
        return torch.cat(draws)

    def normal_per_step(self, counts: list[int], dim: int, num_steps: int) -> torch.Tensor:
        """Standard normal [num_steps, sum(counts), dim]: the noise of every reverse diffusion step, image-major in
        each step, drawn in one call per image (`counts[i]` rows per step from image i's generator)."""
        draws = [randn_tensor((num_steps, count, dim), generator=g, device=self.device, dtype=torch.float32)
                 for g, count in zip(self.generators, counts)]
        return torch.cat(draws, dim=1)


def _generation_prompts(ids, mask, config, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as the processor builds them (`<bos>caption<boi>`, left-padded), checked on the tensors: right-padded
    rows are left-aligned and a missing final `<boi>` is appended, so the image span starts right after every row."""
    if mask is None:
        mask = torch.ones_like(ids)
    check_attention_mask(mask, *ids.shape)
    if mask.ndim != 2:
        raise ValueError(f"the attention mask of {name} must be a 2D padding mask [batch, sequence_length]")
    mask = mask.to(device=ids.device, dtype=torch.long)
    empty = (mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"{name} holds no tokens in row(s) {empty} (shape {tuple(ids.shape)}): a prompt needs at least <bos>, "
            "which the processor adds (processor(text=..., generation_mode='image'))"
        )
    if (((ids == config.image_token_id) | (ids == config.eoi_token_id)) & mask.bool()).any():
        raise ValueError(
            f"{name} already contains an image span (<img> id {config.image_token_id} or <eoi> id "
            f"{config.eoi_token_id}); image generation prompts are `<bos>caption<boi>`: build them with "
            "processor(text=..., generation_mode='image')"
        )
    trailing_pads = (mask.flip(-1).cumsum(-1) == 0).sum(-1, keepdim=True)
    if trailing_pads.any():  # right-padded: rotate each row so that its prompt ends at the last column
        index = (torch.arange(ids.shape[1], device=ids.device) - trailing_pads) % ids.shape[1]
        ids, mask = ids.gather(1, index), mask.gather(1, index)
    missing_boi = ids[:, -1:] != config.boi_token_id
    if missing_boi.any():
        column = torch.ones_like(ids[:, :1])
        ids = torch.where(missing_boi, torch.cat([ids, column * config.boi_token_id], 1),
                          torch.cat([column * _pad_id(config), ids], 1))
        mask = torch.where(missing_boi, torch.cat([mask, column], 1), torch.cat([column * 0, mask], 1))
    return ids, mask


def _pad_id(config) -> int:
    return config.text_config.pad_token_id if config.text_config.pad_token_id is not None else 0


def _left_pad(ids, mask, length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - ids.shape[1]
    return (torch.nn.functional.pad(ids, (extra, 0), value=pad_id),
            torch.nn.functional.pad(mask, (extra, 0), value=0))


def build_prompt_rows(input_ids, attention_mask, negative_ids, negative_mask, config, num_images_per_prompt: int,
                      with_uncond: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Left-padded `[cond rows; uncond rows]` prefixes ending with `<boi>`, `num_images_per_prompt` rows per prompt.
    Uncond rows are the negative prompts (one for all, one per prompt, or one per image) when given, else the empty
    caption `<bos><boi>` (`<boi>` alone when the prompt has no `<bos>`).
    """
    ids, mask = _generation_prompts(input_ids, attention_mask, config, "input_ids")
    num_prompts = ids.shape[0]
    ids, mask = ids.repeat_interleave(num_images_per_prompt, 0), mask.repeat_interleave(num_images_per_prompt, 0)
    if not with_uncond:
        return ids, mask
    if negative_ids is not None:
        negative, negative_mask = _generation_prompts(negative_ids, negative_mask, config, "negative_prompt_ids")
        if negative.shape[0] == 1:
            negative, negative_mask = negative.expand(ids.shape[0], -1), negative_mask.expand(ids.shape[0], -1)
        elif negative.shape[0] == num_prompts:
            negative = negative.repeat_interleave(num_images_per_prompt, 0)
            negative_mask = negative_mask.repeat_interleave(num_images_per_prompt, 0)
        elif negative.shape[0] != ids.shape[0]:
            raise ValueError(
                f"got {negative.shape[0]} negative prompts for {num_prompts} prompts (negative_prompt_ids, or the "
                "pipeline's negative_prompt); pass one negative prompt per prompt, or a single one for all"
            )
    else:
        bos = config.text_config.bos_token_id
        first_token = ids.gather(1, mask.argmax(-1, keepdim=True))
        has_bos = (first_token == bos) & (mask.sum(-1, keepdim=True) > 1)
        if bos is None:
            has_bos = torch.zeros_like(has_bos)
        column = torch.ones_like(first_token)
        negative = torch.cat([torch.where(has_bos, first_token, column * _pad_id(config)),
                              column * config.boi_token_id], 1)
        negative_mask = torch.cat([has_bos.long(), column], 1)
    length = max(ids.shape[1], negative.shape[1])
    ids, mask = _left_pad(ids, mask, length, _pad_id(config))
    negative, negative_mask = _left_pad(negative, negative_mask, length, _pad_id(config))
    return torch.cat([ids, negative]), torch.cat([mask, negative_mask])


def _say_what_the_mask_covers(to_generate: torch.Tensor) -> None:
    untouched = [b for b, row in enumerate(to_generate) if not row.any()]
    if untouched:
        logger.warning(f"mask_image covers no token of image(s) {untouched}: they are returned unchanged")


def check_scheduler(scheduler, config) -> None:
    if not (hasattr(scheduler, "set_timesteps") and hasattr(scheduler, "step")):
        raise ValueError(
            f"scheduler must be a diffusers scheduler with set_timesteps/step, got {type(scheduler).__name__}"
        )
    scheduler_config = getattr(scheduler, "config", {})
    for name, expected in (("num_train_timesteps", config.num_train_timesteps),
                           ("prediction_type", config.prediction_type), ("beta_schedule", config.noise_schedule)):
        value = scheduler_config.get(name)
        if value is not None and value != expected:
            raise ValueError(
                f"scheduler.config.{name}={value!r} but the diffusion head was trained with {name}={expected!r}; "
                "build it from the model's scheduler config, e.g. DDIMScheduler.from_config(pipe.scheduler.config)"
            )


@torch.no_grad()
def generate_images(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    *,
    negative_prompt_ids: torch.LongTensor | None = None,
    negative_prompt_attention_mask: torch.Tensor | None = None,
    num_iter: int | None = None,
    guidance_scale: float = 3.0,
    guidance_schedule: str = "linear",
    temperature: float = 1.0,
    num_inference_steps: int | None = None,
    scheduler=None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    use_cache: bool = True,
    output_type: str = "pt",
    num_images_per_prompt: int = 1,
    show_progress: bool = True,
    progress_bar: Callable[[list[int]], Iterable[int]] | None = None,
    callback_on_step_end: StepCallback | None = None,
    image: torch.Tensor | None = None,
    mask_image=None,
    final_num_inference_steps: int | None = None,
    reconstruction_steps: int | None = None,
    token_cache_interval: int | str | None = "auto",
    guidance_cache_interval: int | None = None,
    compile_head: str | None = None,
    token_type_ids: torch.Tensor | None = None,  # accepted (the processor may return it) and not needed
    **unexpected,
):
    """
    Generate `num_images_per_prompt` images per prompt row of `input_ids` (`<bos>caption<boi>`, left-padded).
    Returns a tensor [B, C, H, W] in [0, 1] ("pt"), an array [B, H, W, C] in [0, 1] ("np"), a list of PIL images
    ("pil") or the continuous image tokens [B, L, D] ("latent"). This function owns every default and check of image
    generation; `MMARForConditionalGeneration.generate` documents the arguments. `progress_bar` wraps the list of
    masked-AR steps (e.g. a `DiffusionPipeline.progress_bar`); by default a tqdm bar when `show_progress`.
    Inpainting: `image` (pixel_values [1 | prompts | B, C, H, W] in [-1, 1]) and `mask_image` (white = regenerate,
    see inpainting_mmar): tokens outside the mask are visible from the first step and returned exactly; the order,
    cosine schedule and `num_iter` run over the masked tokens only. The accelerations (`final_num_inference_steps`,
    `reconstruction_steps`, `token_cache_interval`, `guidance_cache_interval`, `compile_head`) are documented in
    `MMARForConditionalGeneration.generate`; only the token cache is on by default ("auto").
    """
    if unexpected:
        raise ValueError(
            f"generation_mode='image' does not take {sorted(unexpected)} (see MMARForConditionalGeneration.generate)"
        )
    cfg = model.config
    num_tokens = cfg.tokens_per_image
    if input_ids is None:
        raise ValueError("image generation needs input_ids: the tokenized prompts `<bos>caption<boi>`")
    check_token_ids("input_ids", input_ids, embedding_rows(model.get_input_embeddings()))
    if negative_prompt_ids is not None:
        check_token_ids("negative_prompt_ids", negative_prompt_ids, embedding_rows(model.get_input_embeddings()))
    check_int("num_images_per_prompt", num_images_per_prompt, 1)
    batch_size = input_ids.shape[0] * num_images_per_prompt
    check_image_for_inpainting(image, mask_image, input_ids.shape[0], num_images_per_prompt)
    if image is not None:
        to_generate = token_mask_from_mask_image(mask_image, cfg, batch_size).to(model.device)
        known_tokens = model.model.encode_images(expand_images(image, input_ids.shape[0], num_images_per_prompt)
                                                 .to(model.device))
        _say_what_the_mask_covers(to_generate)
    else:
        to_generate = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=model.device)
        known_tokens = torch.zeros(batch_size, num_tokens, cfg.token_dim, device=model.device)
    most_masked = int(to_generate.sum(-1).max())
    num_iter = min(DEFAULT_NUM_ITER, max(most_masked, 1)) if num_iter is None else num_iter
    check_int("num_iter", num_iter, 1, num_tokens)
    check_float("guidance_scale", guidance_scale, low=0.0)
    check_choice("guidance_schedule", guidance_schedule, GUIDANCE_SCHEDULES)
    check_float("temperature", temperature, low=0.0)
    check_choice("output_type", output_type, OUTPUT_TYPES)
    check_bool("use_cache", use_cache)
    check_bool("show_progress", show_progress)
    check_callable("progress_bar", progress_bar)
    check_callable("callback_on_step_end", callback_on_step_end)
    check_generator(generator, batch_size)
    scheduler = default_sampling_scheduler(cfg) if scheduler is None else scheduler
    check_scheduler(scheduler, cfg)
    if temperature != 1.0 and not isinstance(scheduler, MMARScheduler):
        raise ValueError(
            f"temperature={temperature} scales the noise a DDPM sampler injects at every head step; "
            f"{type(scheduler).__name__} (the default head sampler is DPM-Solver++) injects none: pass "
            "scheduler=MMARScheduler.from_model_config(model.config) (MAR's DDPM, 100 steps) to sample with a "
            "temperature, or use temperature=1.0"
        )
    if num_inference_steps is None:
        num_inference_steps = getattr(scheduler, "config", {}).get("default_num_inference_steps",
                                                                   DEFAULT_NUM_INFERENCE_STEPS)
    check_int("num_inference_steps", num_inference_steps, 1)
    if final_num_inference_steps is not None:
        check_int("final_num_inference_steps", final_num_inference_steps, 1)
    if reconstruction_steps is not None:
        if num_iter < 2:
            raise ValueError(f"reconstruction_steps (two-stage sampling) needs num_iter >= 2, got num_iter={num_iter}")
        check_int("reconstruction_steps", reconstruction_steps, 1, num_iter - 1)
    if token_cache_interval != "auto" and token_cache_interval is not None:
        check_int("token_cache_interval", token_cache_interval, 1)
    if guidance_cache_interval is not None:
        check_int("guidance_cache_interval", guidance_cache_interval, 1)
    if compile_head is not None:
        check_choice("compile_head", compile_head, COMPILE_MODES)

    device = model.device
    with_uncond = guidance_scale != 1.0  # s = 1 is plain conditional sampling: no unconditional rows at all
    prefix_ids, prefix_mask = build_prompt_rows(input_ids, attention_mask, negative_prompt_ids,
                                                negative_prompt_attention_mask, cfg, num_images_per_prompt, with_uncond)
    check_fits_positions(prefix_mask.sum(-1).max().item() + num_tokens,
                         getattr(cfg.get_text_config(), "max_position_embeddings", None), "the prompt plus its image span")
    randomness = PerImageRandomness(generator, batch_size, device)
    # Each image's own random order, restricted to the tokens it regenerates (all of them without a mask); two-stage
    # sampling moves the checkerboard's tokens first (each half keeps its random order).
    orders, schedules = [], []
    for b, order in enumerate(randomness.permutations(num_tokens)):
        order, num_structure = order[to_generate[b, order]], None
        if reconstruction_steps is not None:
            order, num_structure = structure_first(order, num_tokens)
        orders.append(order)
        schedules.append(masked_counts(len(order), num_iter, num_structure, reconstruction_steps))
    # MMARScheduler's noise for all head steps is drawn in one call per image; other schedulers draw it themselves.
    draws_step_noise = isinstance(scheduler, MMARScheduler) and temperature > 0

    tokens = known_tokens.float().clone()
    still_masked = to_generate.clone()
    if most_masked:
        runner = ImageSpanRunner(model, prefix_ids.to(device), prefix_mask.to(device), use_cache, batch_size,
                                 token_cache_interval=token_cache_interval,
                                 guidance_cache_interval=guidance_cache_interval)
        revealed = [0] * batch_size
        steps = range(num_iter)
        steps = tqdm(steps, disable=not show_progress, desc="masked-AR steps") if progress_bar is None else \
            progress_bar(steps)
        for step in steps:
            # The next tokens in each image's own order ([n_b] each; n_b can differ between images under masks).
            leaving = [order[revealed[b]:len(order) - schedules[b][step]] for b, order in enumerate(orders)]
            counts = [len(chosen) for chosen in leaving]
            sampled = torch.zeros_like(still_masked)
            for b, chosen in enumerate(leaving):
                sampled[b, chosen] = True
            cond_hidden, uncond_hidden = runner.hidden_states(step, tokens, still_masked, sampled)
            if sum(counts):
                cond = torch.cat([cond_hidden[b, chosen] for b, chosen in enumerate(leaving)])
                uncond = torch.cat([uncond_hidden[b, chosen] for b, chosen in enumerate(leaving)]) \
                    if with_uncond else None
                # Linear CFG grows with what each image shows (its known tokens count as revealed): one scale per row.
                scales = [guidance_for_step(guidance_scale, guidance_schedule, num_tokens - schedules[b][step],
                                            num_tokens) for b in range(batch_size)]
                guidance = scales[0] if len(set(scales)) == 1 else torch.tensor(
                    scales, device=device).repeat_interleave(torch.tensor(counts, device=device)).unsqueeze(-1)
                head_steps = annealed_inference_steps(num_inference_steps, final_num_inference_steps, step, num_iter)
                initial_noise = randomness.normal(counts, cfg.token_dim)
                step_noise = randomness.normal_per_step(counts, cfg.token_dim, head_steps) if draws_step_noise \
                    else None
                new_tokens = model.diffusion_head.sample(
                    cond, scheduler, head_steps, initial_noise, uncond_conditions=uncond, guidance_scale=guidance,
                    generator=None if draws_step_noise else randomness.per_row_generators(counts),
                    temperature=temperature, step_noise=step_noise, compile_mode=compile_head).to(tokens.dtype)
                for b, new in zip(range(batch_size), new_tokens.split(counts)):
                    tokens[b, leaving[b]] = new
                    still_masked[b, leaving[b]] = False
            runner.mark_changed(sampled)
            revealed = [len(order) - schedules[b][step] for b, order in enumerate(orders)]
            if callback_on_step_end is not None:
                callback_on_step_end(step, tokens.clone(), still_masked.clone())

    if output_type == "latent":
        return tokens
    pixels = model.model.decode_image_tokens(tokens)
    if image is not None and model.model.vae is None:  # pixel patches: the kept pixels are the input's, bit for bit
        keep = ~pixel_mask_from_token_mask(to_generate, cfg).to(device)
        given = expand_images(image, input_ids.shape[0], num_images_per_prompt).to(device).float()
        pixels = torch.where(keep, given, pixels)
    return VaeImageProcessor(do_normalize=True).postprocess(pixels.float(), output_type=output_type)


__all__ = ["PerImageRandomness", "build_prompt_rows", "cosine_masked_counts", "generate_images",
           "guidance_for_step"]
