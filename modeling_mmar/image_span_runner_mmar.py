"""The LLM side of a masked-AR step: the image span of every row run on top of the fixed prompt prefix.

Every row is `prompt <boi> [image span]`. The prefix never changes, so it runs once and its KV cache is reused at
every step, where only the image span runs again (exact: `use_cache=False`, the reference path, re-runs the whole
sequence). Two caches from LazyMAR (arXiv 2503.12450) skip more work at the price of an approximation, with a full
step every `n` masked-AR steps that bounds the error:

- Token cache (`token_cache_interval=n`; image generation's default "auto" is n = 8 where the cache allows it):
  between full steps only the span tokens whose input changed since their row last ran (the tokens revealed since)
  and the tokens sampled at this step run through the LLM; the others' keys and values come from the step that last
  computed them.
- Condition cache (`guidance_cache_interval=n`): between full steps only the conditional rows run; the
  unconditional rows' states are the conditional ones plus the difference (unconditional - conditional) of the last
  full step.
"""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache

# What token_cache_interval="auto" (the default of image generation) uses where the cache allows it: the cpu-sampler
# benchmark found a full step every 8 masked-AR steps quality-neutral on both models it measures (16 and 64 image
# tokens) and the fastest such setting (README, Performance).
DEFAULT_TOKEN_CACHE_INTERVAL = 8


def _check_interval(name: str, value) -> int | str | None:
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be None (off), \"auto\" or an int >= 1 (a full masked-AR step every that many "
                         f"steps; 1 = every step, the same as off), got {value!r}")
    return None if value == 1 else value


class ImageSpanRunner:
    """Runs the image span of every row through the LLM on top of the fixed prompt prefix.

    Rows are `[conditional rows; unconditional rows]` (`num_conditional` of the former). The prompts are checked once
    by `generate_images`; every masked-AR step then goes straight to `MMARModel.forward_embedded` with the image
    embeddings, span layout and attention masks built here (masks once per shape).
    """

    def __init__(self, model, prefix_ids, prefix_mask, use_cache: bool, num_conditional: int,
                 token_cache_interval: int | str | None = None, guidance_cache_interval: int | None = None):
        self.backbone = model.model
        cfg = model.config
        self.num_tokens = cfg.tokens_per_image
        self.num_conditional = num_conditional
        self.token_cache_interval = _check_interval("token_cache_interval", token_cache_interval)
        self.guidance_cache_interval = _check_interval("guidance_cache_interval", guidance_cache_interval)
        if self.token_cache_interval not in (None, "auto") and not use_cache:
            raise ValueError("token_cache_interval reuses keys and values across steps: it needs use_cache=True")
        rows, prefix_length = prefix_ids.shape
        device = prefix_ids.device
        self.full_mask = torch.cat([prefix_mask, torch.ones(rows, self.num_tokens, dtype=prefix_mask.dtype,
                                                            device=device)], dim=1)
        # Positions from the attention mask (left padding): pads get 1 like GenerationMixin, the image continues
        # right after each row's own prompt.
        prefix_positions = (prefix_mask.cumsum(-1) - 1).masked_fill(prefix_mask == 0, 1)
        self.span_positions = prefix_mask.sum(-1, keepdim=True) + torch.arange(self.num_tokens, device=device)
        # One image block per row, after `prefix_length` text positions.
        self.block_ids = torch.cat([torch.full((rows, prefix_length), -1, dtype=torch.long, device=device),
                                    torch.zeros(rows, self.num_tokens, dtype=torch.long, device=device)], dim=1)
        prefix_embeds = self.backbone.get_input_embeddings()(prefix_ids)
        self.embed_dtype, self.hidden_size = prefix_embeds.dtype, prefix_embeds.shape[-1]
        self.text_config = cfg.get_text_config()
        self.caches, self.masks = {}, {}  # prefix caches and attention masks by the rows they serve
        # boi_condition: the head reads each row's `<boi>` state too, the prefix's last (prompts are left-padded).
        self.head = model.diffusion_head if cfg.boi_condition else None
        self.boi_states = None
        if use_cache or self.head is not None:
            cache = DynamicCache(config=self.text_config) if use_cache else None
            prefix_states = self.backbone.language_model(inputs_embeds=prefix_embeds, attention_mask=prefix_mask,
                                                         position_ids=prefix_positions, cache=cache,
                                                         use_cache=use_cache).last_hidden_state
            if self.head is not None:
                self.boi_states = prefix_states[:, -1:]  # [rows, 1, H]
        if use_cache:
            self.caches[rows] = cache
            self.position_ids = self.span_positions
            self.prefix_embeds = None
        else:  # reference path: the whole sequence again at every step
            self.position_ids = torch.cat([prefix_positions, self.span_positions], dim=1)
            self.prefix_embeds = prefix_embeds
        self.use_cache = use_cache
        self.uncond_offset = None  # condition cache: unconditional - conditional states of the last full step
        if self.token_cache_interval == "auto":  # on where there is a cache that allows it, else exact full steps
            extendable = use_cache and self._extendable(self.caches[rows])
            self.token_cache_interval = DEFAULT_TOKEN_CACHE_INTERVAL if extendable else None
        if self.token_cache_interval:
            cache = self.caches[rows]
            if not self._extendable(cache):
                raise ValueError("token_cache_interval needs a backbone whose cache layers are all full-attention "
                                 "DynamicLayers (no sliding-window or recurrent layers)")
            self.prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
            self.span_kv = None  # per layer: keys, values [rows, kv_heads, L, head_dim] of the span
            self.hidden = torch.zeros(rows, self.num_tokens, self.hidden_size, dtype=self.embed_dtype, device=device)
            self.stale = torch.ones(rows, self.num_tokens, dtype=torch.bool, device=device)

    @staticmethod
    def _extendable(cache) -> bool:
        """Whether span keys/values can be cut out of and spliced into `cache` (full-attention layers only)."""
        return cache.is_croppable and all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)

    # ---------------- one masked-AR step ----------------
    def hidden_states(self, step: int, tokens: torch.Tensor, still_masked: torch.Tensor,
                      sampled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LLM states at the image positions for `tokens` [B, L, D] (`still_masked` hidden) at masked-AR step
        `step`: (conditional [B, L, H], unconditional [B, L, H] or None without CFG rows). `sampled` [B, L] bool:
        the tokens whose states this step's caller reads (the token cache always computes them)."""
        conditional = self.num_conditional
        rows = self.full_mask.shape[0]
        with_uncond = rows > conditional
        run_uncond = with_uncond and (self.guidance_cache_interval is None or self.uncond_offset is None
                                      or step % self.guidance_cache_interval == 0)
        run_rows = rows if run_uncond else conditional
        repeat = run_rows // conditional  # the unconditional rows see the same partial images
        image_embeds = self.backbone.image_embedder(tokens.repeat(repeat, 1, 1), still_masked.repeat(repeat, 1))
        image_embeds = image_embeds.to(self.embed_dtype)
        full_step = (self.token_cache_interval is None or self.span_kv is None
                     or step % self.token_cache_interval == 0)
        if full_step:
            hidden = self._full_span(image_embeds, run_rows)
        else:
            needed = self.stale[:run_rows] | (sampled.repeat(repeat, 1) if sampled is not None else False)
            hidden = self._partial_span(image_embeds, run_rows, needed)
        if self.head is not None:
            hidden = self.head.add_boi_states(hidden, self.boi_states[:run_rows])
        if not with_uncond:
            return hidden, None
        if run_uncond:
            cond, uncond = hidden[:conditional], hidden[conditional:]
            if self.guidance_cache_interval is not None:
                self.uncond_offset = uncond - cond
            return cond, uncond
        return hidden, hidden + self.uncond_offset

    def mark_changed(self, changed: torch.Tensor) -> None:
        """`changed` [B, L] bool: tokens revealed at this step (their inputs differ at the next step)."""
        if self.token_cache_interval:
            self.stale |= changed.repeat(self.full_mask.shape[0] // self.num_conditional, 1)

    # ---------------- the span through the LLM ----------------
    def _prefix_cache(self, rows: int):
        if rows not in self.caches:  # the conditional rows alone (condition cache): their part of the prefix cache
            cache = copy.deepcopy(self.caches[self.full_mask.shape[0]])
            cache.batch_select_indices(torch.arange(rows, device=self.full_mask.device))
            self.caches[rows] = cache
        return self.caches[rows]

    def _masks(self, rows: int, cache):
        if rows not in self.masks:  # the same masks serve every step: the prefix cache goes back to its length
            probe = torch.zeros(rows, self.position_ids.shape[1], self.hidden_size, dtype=self.embed_dtype,
                                device=self.full_mask.device)
            self.masks[rows] = self.backbone._image_span_masks(probe, self.full_mask[:rows], cache,
                                                               self.position_ids[:rows], self.block_ids[:rows])
        return self.masks[rows]

    def _full_span(self, image_embeds: torch.Tensor, rows: int) -> torch.Tensor:
        if not self.use_cache:
            masks = self._masks(rows, None)
            out = self.backbone.forward_embedded(torch.cat([self.prefix_embeds[:rows], image_embeds], dim=1),
                                                 attention_mask=masks, position_ids=self.position_ids[:rows],
                                                 use_cache=False, image_positions=self._image_positions(rows, None))
            return out.last_hidden_state[:, -self.num_tokens:]
        prefix = self._prefix_cache(rows)
        masks = self._masks(rows, prefix)
        croppable = prefix.is_croppable
        cache = prefix if croppable else copy.deepcopy(prefix)
        out = self.backbone.forward_embedded(image_embeds, attention_mask=masks, position_ids=self.position_ids[:rows],
                                             cache=cache, use_cache=True,
                                             image_positions=self._image_positions(rows, self.num_tokens))
        if self.token_cache_interval:  # keep the span's keys and values for the partial steps
            span_kv = [(layer.keys[:, :, -self.num_tokens:].clone(), layer.values[:, :, -self.num_tokens:].clone())
                       for layer in cache.layers]
            if self.span_kv is None:
                self.span_kv = span_kv
            else:
                for (keys, values), (new_keys, new_values) in zip(self.span_kv, span_kv):
                    keys[:rows], values[:rows] = new_keys, new_values
            self.hidden[:rows] = out.last_hidden_state
            self.stale[:rows] = False
        if croppable:  # back to the prompt prefix: the span's keys/values change at every step
            cache.crop(-self.num_tokens)
        return out.last_hidden_state

    def _partial_span(self, image_embeds: torch.Tensor, rows: int, needed: torch.Tensor) -> torch.Tensor:
        """Token cache: run the `needed` tokens on top of the prefix and the cached keys/values of the others. Rows
        needing as many tokens run together (whole images: all rows); rows of other counts (inpainting masks) run
        apart, so that no row runs extra tokens for another and an image never depends on its batch."""
        counts = needed.sum(-1)
        for count in counts.unique().tolist():
            if count:
                group = (counts == count).nonzero().squeeze(1)
                self._run_needed(image_embeds[group], group, needed[group], count)
        return self.hidden[:rows]

    def _run_needed(self, image_embeds: torch.Tensor, group: torch.Tensor, needed: torch.Tensor, queries: int):
        """Rows `group` [G] of the span, each with `queries` needed tokens (`needed` [G, L])."""
        ranked = torch.argsort((~needed).to(torch.uint8), dim=-1, stable=True)  # needed tokens first
        run, kept = ranked[:, :queries], ranked[:, queries:]

        def gather(tensor, index):  # [G, heads, L, d] at `index` [G, n] along the tokens
            return tensor.gather(2, index[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[-1]))

        cache = DynamicCache(ddp_cache_data=[
            (torch.cat([prefix_keys[group], gather(keys[group], kept)], dim=2),
             torch.cat([prefix_values[group], gather(values[group], kept)], dim=2))
            for (prefix_keys, prefix_values), (keys, values) in zip(self.prefix_kv, self.span_kv)],
            config=self.text_config)
        embeds = image_embeds.gather(1, run[..., None].expand(-1, -1, image_embeds.shape[-1]))
        positions = self.span_positions[group].gather(1, run)
        masks = self._partial_masks(group, queries, cache, positions)
        image_positions = torch.ones(len(group), queries, dtype=torch.bool, device=group.device)
        out = self.backbone.forward_embedded(embeds, attention_mask=masks, position_ids=positions, cache=cache,
                                             use_cache=True, image_positions=image_positions).last_hidden_state
        for layer, (keys, values) in zip(cache.layers, self.span_kv):
            index = run[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1])
            keys[group] = keys[group].scatter(2, index, layer.keys[:, :, -queries:])
            values[group] = values[group].scatter(2, index, layer.values[:, :, -queries:])
        self.hidden[group] = self.hidden[group].scatter(1, run[..., None].expand(-1, -1, out.shape[-1]), out)
        self.stale[group] = self.stale[group].scatter(1, run, False)

    def _image_positions(self, rows: int, length: int | None) -> torch.Tensor:
        """bool [rows, length]: which of the last `length` positions (all of them for None) the image experts run."""
        block_ids = self.block_ids[:rows]
        return block_ids[:, -length:] >= 0 if length else block_ids >= 0

    def _partial_masks(self, group: torch.Tensor, queries: int, cache, positions):
        key = ("partial", tuple(group.tolist()), queries)
        if key not in self.masks:  # every span token sees all others and the prompt; only padding is hidden
            probe = torch.zeros(len(group), queries, self.hidden_size, dtype=self.embed_dtype, device=positions.device)
            self.masks[key] = self.backbone._image_span_masks(probe, self.full_mask[group], cache, positions,
                                                              self.block_ids[group])
        return self.masks[key]


__all__ = ["DEFAULT_TOKEN_CACHE_INTERVAL", "ImageSpanRunner"]
