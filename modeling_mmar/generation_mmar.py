"""Generation for MMAR: text generation through `GenerationMixin`, image generation through the masked-AR sampler."""

from __future__ import annotations

import torch
from transformers import GenerationMixin
from transformers.masking_utils import create_masks_for_generate as _create_masks
from transformers.utils.deprecation import deprecate_kwarg

from .image_tokens_mmar import image_block_ids
from .input_checks_mmar import check_attention_mask, check_fits_positions, check_token_ids, embedding_rows

GENERATION_MODES = ("text", "image")


class MMARGenerationMixin(GenerationMixin):
    """
    `generate(..., generation_mode="text")` (default): captions and answers exactly as for any transformers VLM;
    images in the prompt are encoded once at prefill, then decoding runs on the KV cache.
    `generate(..., generation_mode="image")`: text -> image with the masked-autoregressive sampler.
    """

    @torch.no_grad()
    def generate(self, inputs=None, generation_config=None, *args, generation_mode: str = "text", **kwargs):
        r"""
        Text mode takes every `GenerationMixin.generate` argument (`max_new_tokens`, `num_beams`, `do_sample`,
        `cache_implementation`, ...) plus `pixel_values` for the prompt's image spans. The image special tokens
        (`<boi>`, `<img>`, `<eoi>`) are never generated in text mode.

        Image mode (`generation_mode="image"`) returns one image per prompt and takes:
            input_ids / attention_mask: `<bos>caption<boi>` prompts, left-padded
                (`processor(text=prompts, generation_mode="image")`); a missing final `<boi>` is appended.
            negative_prompt_ids / negative_prompt_attention_mask: token ids of the unconditional (negative)
                prompts, one for all or one per prompt; default: the empty caption `<bos><boi>`.
            num_iter (`int`, default min(64, tokens_per_image)): masked-AR steps K (cosine schedule).
            guidance_scale (`float`, default 3.0): classifier-free guidance s on the head's output; 1.0 runs no
                unconditional rows.
            guidance_schedule (`"linear"` | `"constant"`): s_k = 1 + (s - 1) * revealed_k / L, or s.
            temperature (`float`, default 1.0): scales the noise injected at every reverse diffusion step; needs a
                stochastic head sampler, `scheduler=MMARScheduler.from_model_config(model.config)` (MAR's DDPM).
            num_inference_steps (`int`, default: the scheduler config's `default_num_inference_steps` (MMARScheduler:
                100), else 10): diffusion steps per token.
            scheduler: any diffusers scheduler with `set_timesteps`/`step` built for the model's diffusion
                process (default: `default_sampling_scheduler(model.config)`, DPM-Solver++ on that process, which
                matched the 100-step DDPM head's quality at 10 steps; e.g. `DDIMScheduler.from_config(...)`).
            generator: one `torch.Generator` or a list with one per prompt (per-image reproducibility).
            use_cache (`bool`, default True): reuse the prompt's KV cache at every step; False re-runs it.
            output_type (`"pt"` | `"np"` | `"pil"` | `"latent"`): [B,C,H,W] tensor in [0, 1], [B,H,W,C] float array
                in [0, 1], a list of PIL images, or the continuous image tokens [B, L, D].
            num_images_per_prompt (`int`, default 1): images per prompt row (generators: one per image).
            show_progress (`bool`, default True): tqdm bar over the masked-AR steps.
            progress_bar (`callable(steps) -> iterable`): wraps the steps instead (e.g. `pipe.progress_bar`).
            callback_on_step_end (`callable(step, image_tokens, still_masked)`): called after every step with
                copies of the tokens [B, L, D] and the bool mask [B, L] (True = not generated yet).

            Training-free accelerations (the README's Performance section measures each; all but the token cache are
            off by default, `None`):
            final_num_inference_steps (`int`): diffusion step annealing (DiSA, arXiv 2505.20297): the head's
                diffusion steps fall linearly from `num_inference_steps` at the first masked-AR step to this at the
                last (later tokens are conditioned on more of the image and are easier to sample).
            reconstruction_steps (`int` in [1, num_iter - 1]): two-stage sampling (GtR, arXiv 2510.17171): a
                checkerboard half of the tokens is generated over the first `num_iter - reconstruction_steps` steps
                (cosine schedule), the other half in the last `reconstruction_steps` steps.
            token_cache_interval (`int` | `"auto"` | `None`, default `"auto"`): LazyMAR's token cache (arXiv
                2503.12450): a full LLM step every that many masked-AR steps; in between only the span tokens revealed
                since their row last ran and the tokens sampled now run through the LLM, on the cached keys/values of
                the others (needs `use_cache`). "auto" = 8 with `use_cache` and a backbone whose cache layers are
                all full attention, full steps otherwise; `None`: the exact reference steps. An image never depends
                on its batch: rows that need different numbers of tokens (inpainting masks) run apart.
            guidance_cache_interval (`int`): LazyMAR's condition cache: a full LLM step every that many masked-AR
                steps; in between only the conditional rows run and the unconditional states are the conditional
                ones plus the (unconditional - conditional) difference of the last full step.
            compile_head (`"dynamic"` | `"static"`): run the diffusion head through `torch.compile` (compiled once per
                model; "static" pads the token rows to the next power of two so that a few fixed shapes compile).
        """
        if generation_mode not in GENERATION_MODES:
            raise ValueError(f"generation_mode must be one of {GENERATION_MODES}, got {generation_mode!r}")
        if generation_mode == "text":
            prompt = inputs if inputs is not None else kwargs.get("input_ids")
            if isinstance(prompt, torch.Tensor):
                if prompt.ndim == 0 or prompt.shape[-1] == 0:
                    raise ValueError(
                        f"input_ids holds no tokens (shape {tuple(prompt.shape)}): a prompt needs at least <bos>, "
                        "which the processor adds (processor(text=...))"
                    )
                self._check_text_generation_fits(prompt, generation_config, kwargs)
            self._suppress_image_special_tokens(generation_config, kwargs)
            self._encode_image_tokens_once(kwargs)
            return super().generate(inputs, generation_config, *args, **kwargs)

        if args or generation_config is not None:
            raise ValueError(
                "generation_mode='image' takes keyword arguments only (no GenerationConfig / logits processors: "
                "image tokens are continuous and sampled by the diffusion head)"
            )
        if "negative_prompt" in kwargs:
            raise ValueError(
                "model.generate takes the negative prompt as token ids (negative_prompt_ids, "
                "negative_prompt_attention_mask); pass text through MMARPipeline(negative_prompt=...)"
            )
        input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
        if inputs is not None and "input_ids" in kwargs:
            raise ValueError("Pass the prompts either as `inputs` or as `input_ids`, not both")
        from .sampling_mmar import generate_images  # needs diffusers: understanding and text generation do not

        return generate_images(self, input_ids, **kwargs)

    def _check_text_generation_fits(self, prompt, generation_config, kwargs) -> None:
        # Refused up front: past max_position_embeddings RoPE backbones extrapolate silently, learned ones crash.
        check_token_ids("input_ids", prompt, embedding_rows(self.get_input_embeddings()))
        check_attention_mask(kwargs.get("attention_mask"), *prompt.shape)
        config = generation_config or self.generation_config
        max_new_tokens = kwargs.get("max_new_tokens", config.max_new_tokens)
        if max_new_tokens is not None:
            total = prompt.shape[-1] + max_new_tokens
        else:
            total = max(kwargs.get("max_length", config.max_length) or 0, prompt.shape[-1] + 1)
        check_fits_positions(total, getattr(self.config.get_text_config(), "max_position_embeddings", None),
                             f"text generation ({prompt.shape[-1]} prompt tokens + max_new_tokens)")

    def _suppress_image_special_tokens(self, generation_config, kwargs) -> None:
        # Images are not produced token by token: a text-mode `<img>` would open a span of the wrong length.
        image_ids = {self.config.boi_token_id, self.config.image_token_id, self.config.eoi_token_id}
        requested = kwargs.get("suppress_tokens")
        if requested is None:
            requested = (generation_config or self.generation_config).suppress_tokens
        kwargs["suppress_tokens"] = sorted(set(requested or ()) | image_ids)

    def _encode_image_tokens_once(self, kwargs) -> None:
        # GenerationMixin encodes `pixel_values` once before prefill (get_image_features -> mm_encoder_outputs, then
        # regrouped for beam search); images given as clean tokens are encoded the same way here.
        image_tokens = kwargs.pop("image_tokens", None)
        if image_tokens is None:
            return
        if kwargs.get("pixel_values") is not None:
            raise ValueError("Pass images either as pixel_values or as image_tokens, not both")
        features = self.get_image_features(image_tokens=image_tokens, image_mask=kwargs.pop("image_mask", None),
                                           return_dict=True)
        kwargs["mm_encoder_outputs"] = {**(kwargs.get("mm_encoder_outputs") or {}), "image": features}

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def prepare_inputs_for_generation(
        self,
        input_ids,
        next_sequence_length=None,
        cache=None,
        attention_mask=None,
        inputs_embeds=None,
        is_first_iteration=False,
        token_type_ids=None,
        **kwargs,
    ):
        # `token_type_ids` (1 = image token) only serve `create_masks_for_generate` at prefill (compileable caches
        # get their masks precomputed); afterwards every new token is causal text.
        if is_first_iteration and token_type_ids is None and input_ids is not None:
            is_image = input_ids == self.config.image_token_id
            token_type_ids = is_image.long() if is_image.any() else None
        elif not is_first_iteration and kwargs.get("use_cache", True):
            token_type_ids = None
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            token_type_ids=token_type_ids,
            **kwargs,
        )
        model_inputs.pop("token_type_ids", None)  # forward finds the image spans in input_ids itself
        return model_inputs

    @staticmethod
    def create_masks_for_generate(
        config, inputs_embeds, attention_mask, cache, position_ids=None, token_type_ids=None,
        block_sequence_ids=None, **kwargs,
    ):
        """Masks precomputed by `generate` for compileable caches: causal text + bidirectional image spans."""
        if block_sequence_ids is None and token_type_ids is not None and bool((token_type_ids == 1).any()):
            block_sequence_ids = image_block_ids(token_type_ids, 1)
        return _create_masks(
            config=config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
            block_sequence_ids=block_sequence_ids,
        )


__all__ = ["MMARGenerationMixin"]
