"""MMAR against Janus-style VQ autoregression: transformers' own `JanusForConditionalGeneration`, same backbone.

Both models get the same text backbone config (the MMAR subject's `text_config`: hidden size, layers, heads) and the
same number of image tokens L per image; both run classifier-free guidance with the conditional and unconditional
rows in one batch. Janus makes one sequential LLM pass per image token (L); MMAR makes one per masked-AR step
(num_iter, plus one prompt prefill). Figures: seconds per image (generation + decoding to pixels), sequential LLM
passes per image, and MMAR's speed-up, measured side by side. Weights are random: this is about speed only.

transformers 5.24 note: Janus' image `generate` builds a StaticCache by default, and then fails with
`AttributeError: 'dict' object has no attribute 'to'` (its loop calls `.to()` on the attention mask, which
`prepare_inputs_for_generation` turns into a dict of 4D masks for compileable caches). Passing a `DynamicCache`
avoids that code path; the harness tries the default first and records which one ran.
"""

from __future__ import annotations

import math

import torch
from transformers import DynamicCache, GenerationConfig, JanusConfig, JanusForConditionalGeneration

from .counters import count_calls
from .profiling import profile_call, sampler_regions
from .sampler_bench import SamplerVariant, make_runner
from .subjects import digit_prompts, random_subject
from .timing import ratio, side_by_side

SPEEDUP_TARGET = 10.0
JANUS_CODEBOOK_SIZE = 1024  # VQ codebook entries (Janus-Pro: 16384); the generation head's output width


def janus_config(text_config: dict, num_image_tokens: int, boi_token_id: int, image_token_id: int) -> JanusConfig:
    """A tiny Janus whose LLM is `text_config` and whose images are `num_image_tokens` VQ tokens."""
    side = math.isqrt(num_image_tokens)
    if side * side != num_image_tokens:
        raise ValueError(f"Janus images are square token grids: num_image_tokens={num_image_tokens} is not a square")
    hidden = text_config["hidden_size"]
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 4 * side,
              "patch_size": 4, "projection_dim": hidden, "num_image_tokens": num_image_tokens, "mlp_ratio": 2.0}
    vq = {"embed_dim": 8, "num_embeddings": JANUS_CODEBOOK_SIZE, "latent_channels": 32, "base_channels": 32,
          "channel_multiplier": [1, 2], "num_res_blocks": 1, "projection_dim": hidden,
          "image_token_embed_dim": hidden, "num_hidden_layers": 1}
    return JanusConfig(text_config=dict(text_config), vision_config=vision, vq_config=vq,
                       image_token_id=image_token_id)


class JanusRunner:
    """`JanusForConditionalGeneration.generate(generation_mode="image")` + VQ decoding, for `prompts`."""

    def __init__(self, model: JanusForConditionalGeneration, prompts: dict, guidance_scale: float, boi_token_id: int):
        self.model, self.prompts = model, prompts
        text = model.config.text_config
        self.generation_config = GenerationConfig(
            do_sample=True, guidance_scale=guidance_scale, pad_token_id=text.pad_token_id,
            bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
            generation_kwargs={"boi_token_id": boi_token_id},
        )
        self.cache_used = self._pick_cache()

    def _generate(self, dynamic_cache: bool):
        kwargs = {"cache": DynamicCache(config=self.model.config.text_config)} if dynamic_cache else {}
        tokens = self.model.generate(**self.prompts, generation_mode="image",
                                     generation_config=copy_config(self.generation_config), **kwargs)
        return self.model.decode_image_tokens(tokens)

    def _pick_cache(self) -> str:
        try:
            self._generate(dynamic_cache=False)
            return "static (Janus default)"
        except AttributeError as error:  # transformers 5.24: see the module docstring (fails at the first token)
            self.default_cache_error = f"{type(error).__name__}: {error}"
            return "dynamic (the default static cache fails in this transformers version)"

    def __call__(self):
        return self._generate(dynamic_cache=self.cache_used.startswith("dynamic"))


def copy_config(config: GenerationConfig) -> GenerationConfig:
    # Janus' generate resets guidance_scale on the config it gets: give it a fresh copy every call.
    return GenerationConfig.from_dict(config.to_dict())


def run_janus_benchmark(settings: dict, repeats: int, base_text_config: dict | None = None,
                        name: str = "janus", profile: bool = True) -> dict:
    """settings: tokens (list of L), images (batch), num_iter (list; capped at L), guidance_scale, scheduler,
    steps. One row per (L, num_iter)."""
    rows, notes = [], set()
    images = settings["images"]
    for num_tokens in settings["tokens"]:
        side = math.isqrt(num_tokens)
        subject = random_subject(image_size=2 * side, patch_size=2, **_text_overrides(base_text_config, num_tokens))
        mmar, cfg = subject.model, subject.model.config
        prompts = digit_prompts(subject.processor, [d % 10 for d in range(images)])
        torch.manual_seed(0)
        janus = JanusForConditionalGeneration(
            janus_config(cfg.text_config.to_dict(), num_tokens, cfg.boi_token_id, cfg.image_token_id)).eval()
        janus_runner = JanusRunner(janus, prompts, settings["guidance_scale"], cfg.boi_token_id)
        notes.add(f"Janus cache: {janus_runner.cache_used}")
        if hasattr(janus_runner, "default_cache_error"):
            notes.add(f"Janus default-cache error: {janus_runner.default_cache_error}")
        variant = SamplerVariant(f"MMAR {settings['scheduler']} {settings['steps']}", scheduler=settings["scheduler"],
                                 steps=settings["steps"])
        candidates, passes = {"janus": janus_runner}, {}
        for num_iter in sorted({min(k, num_tokens) for k in settings["num_iter"]}):
            sampling = {"num_iter": num_iter, "guidance_scale": settings["guidance_scale"]}
            candidates[num_iter] = make_runner(mmar, variant, prompts, list(range(images)), sampling)
        for key, runner in candidates.items():  # the warm-up run counts the sequential LLM passes
            backbone = janus.model.language_model if key == "janus" else mmar.model.language_model
            with count_calls(backbone=backbone) as calls:
                runner()
            passes[key] = calls["backbone"]
        timings = side_by_side(candidates, repeats=repeats, warmup=0)
        largest = max(k for k in candidates if k != "janus")
        shares = None
        if profile:  # where MMAR's time goes at this size (its largest num_iter)
            runner = candidates[largest]
            shares = profile_call(runner, **sampler_regions(mmar, runner.scheduler))["regions_share"]
        for key in candidates:
            if key == "janus":
                continue
            rows.append({
                "image_tokens": num_tokens,
                "mmar_num_iter": key,
                "mmar_sampler": variant.name,
                "mmar_seconds_per_image": timings[key].median / images,
                "janus_seconds_per_image": timings["janus"].median / images,
                "mmar_backbone_passes": passes[key],
                "janus_backbone_passes": passes["janus"],
                "speedup": ratio(timings["janus"], timings[key]).summary(),
                **({"mmar_time_share": shares} if key == largest and shares is not None else {}),
            })
    return {
        "name": name,
        "title": "MMAR vs Janus (transformers JanusForConditionalGeneration), same backbone, same image tokens",
        "settings": {**settings, "repeats": repeats, "janus_codebook": JANUS_CODEBOOK_SIZE},
        "rows": rows,
        "notes": sorted(notes),
        "target": f">= {SPEEDUP_TARGET:g}x",
    }


def _text_overrides(base_text_config: dict | None, num_tokens: int) -> dict:
    """The subject's text config, with positions enough for prompt + image span."""
    overrides = dict(base_text_config or {})
    overrides["max_position_embeddings"] = max(overrides.get("max_position_embeddings", 128), num_tokens + 64)
    return {"text_config": overrides}


__all__ = ["JanusRunner", "janus_config", "run_janus_benchmark"]
