"""MMARPipeline: text -> image with MMAR as a diffusers `DiffusionPipeline` (model, processor, scheduler)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

try:  # guarded: transformers' remote-code import check must not demand diffusers for text-only use
    from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin
except ImportError as error:  # pragma: no cover
    raise ImportError("MMARPipeline needs diffusers: pip install diffusers") from error
from transformers import ProcessorMixin

from .input_checks_mmar import check_bool, resolve_pretrained_path
from .modeling_mmar import MMARForConditionalGeneration

if TYPE_CHECKING:  # never run: diffusers copies only the modules a remote-code file names itself
    from .configuration_mmar import MMARConfig  # noqa: F401
    from .diffusion_head_mmar import MMARDiffusionHead  # noqa: F401
    from .embedder_mmar import MMARImageEmbedder  # noqa: F401
    from .generation_mmar import MMARGenerationMixin  # noqa: F401
    from .image_experts_mmar import ImageExpertRouter  # noqa: F401
    from .image_features_mmar import image_positions_in  # noqa: F401
    from .image_span_runner_mmar import ImageSpanRunner  # noqa: F401
    from .image_tokens_mmar import image_block_ids  # noqa: F401
    from .inpainting_mmar import token_mask_from_mask_image  # noqa: F401
    from .outputs_mmar import MMARImageFeaturesOutput  # noqa: F401
    from .sampling_schedules_mmar import masked_counts  # noqa: F401
    from .save_load_mmar import MMARSaveLoadMixin  # noqa: F401
    from .scheduling_mmar import MMARScheduler  # noqa: F401


INSTALLED_MODULE = "modeling_mmar.pipeline_mmar"
# Remote-code module names in an exported model_index.json -> the modules of the installed package.
INSTALLED_COMPONENT_MODULES = {"modeling_mmar": "modeling_mmar.modeling_mmar",
                               "processing_mmar": "processors.processing_mmar",
                               "scheduling_mmar": "modeling_mmar.scheduling_mmar"}


class MMARPipeline(DiffusionPipeline):
    r"""
    Generates images from captions with an `MMARForConditionalGeneration`.

    Components:
        model (`MMARForConditionalGeneration`): the LLM, its image tokenizer and diffusion head.
        processor (`MMARProcessor`): tokenizes captions into `<bos>caption<boi>` prompts.
        scheduler (`SchedulerMixin`): the diffusion head's sampler: `default_sampling_scheduler(model.config)`
            (DPM-Solver++ on the model's diffusion process, 10 steps; what a trained model's folder saves), or e.g.
            `MMARScheduler.from_model_config(model.config)` (MAR's DDPM, 100 steps, with `temperature`).

    ```python
    pipe = MMARPipeline(model=model, processor=processor, scheduler=default_sampling_scheduler(model.config))
    image = pipe("a handwritten seven", generator=torch.Generator().manual_seed(0)).images[0]
    pipe.save_pretrained("mmar-pipe")
    ```

    `model_index.json` names the components by module (`modeling_mmar.modeling_mmar`, `processors.processing_mmar`,
    `modeling_mmar.scheduling_mmar`). diffusers only resolves such modules once they are imported (it never imports
    a module because a repository names it), so `import modeling_mmar, processors` before
    `MMARPipeline.from_pretrained("mmar-pipe")`. A folder written by `mmar export` is also a diffusers custom
    pipeline (`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` without this package).
    """

    model_cpu_offload_seq = "model"

    def __init__(self, model: MMARForConditionalGeneration, processor: ProcessorMixin, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(model=model, processor=processor, scheduler=scheduler)

    def _tokenize(self, prompts: list[str]) -> dict:
        if self.processor is None:
            raise ValueError("MMARPipeline needs a processor to tokenize text prompts")
        batch = self.processor(text=prompts, generation_mode="image", return_tensors="pt")
        device = self._execution_device
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        # diffusers takes str only; a folder that does not exist is named here, not as a malformed repo id.
        return super().from_pretrained(resolve_pretrained_path(pretrained_model_name_or_path, "pipeline"), **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if __name__ == INSTALLED_MODULE and isinstance(config.get("_class_name"), list):
            # An exported folder also carries this code for `DiffusionPipeline.from_pretrained(...,
            # trust_remote_code=True)`; the installed class loads it with the installed code instead.
            config["_class_name"] = config["_class_name"][1]
            for name, value in config.items():
                if isinstance(value, list) and value and value[0] in INSTALLED_COMPONENT_MODULES:
                    config[name] = [INSTALLED_COMPONENT_MODULES[value[0]], *value[1:]]
        return loaded

    @staticmethod
    def _as_list(prompt, name: str) -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{name} must be a string or a non-empty list of strings, got {prompt!r:.80}")
        return prompts

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_iter: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 3.0,
        guidance_schedule: str = "linear",
        temperature: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        use_cache: bool = True,
        final_num_inference_steps: int | None = None,
        reconstruction_steps: int | None = None,
        token_cache_interval: int | str | None = "auto",
        guidance_cache_interval: int | None = None,
        compile_head: str | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Args:
            prompt: caption(s), e.g. "a handwritten seven".
            negative_prompt: caption(s) steered away from by classifier-free guidance (default: the empty caption).
            num_images_per_prompt: images per caption.
            num_iter: masked-AR steps (default min(64, tokens per image)).
            num_inference_steps: diffusion steps per token (default: the scheduler's `default_num_inference_steps`,
                else 10).
            guidance_scale: classifier-free guidance scale (1.0 disables the unconditional branch).
            guidance_schedule: "linear" (grows with the revealed tokens) or "constant".
            temperature: scales the noise of every reverse diffusion step (needs a stochastic scheduler:
                `MMARScheduler`; the default DPM-Solver++ injects none).
            generator: one generator, or one per image (`len(prompt) * num_images_per_prompt`).
            output_type: "pil" (default), "np" (floats in [0, 1]), "pt" or "latent" (continuous image tokens).
            return_dict: return an `ImagePipelineOutput` (else a tuple).
            use_cache: reuse the prompts' KV cache at every masked-AR step.
            Training-free accelerations (`MMARForConditionalGeneration.generate` and the README's Performance section
            say what each costs in quality); all but the token cache are off by default (`None`):
            final_num_inference_steps: diffusion step annealing (DiSA): the head's steps fall linearly from
                `num_inference_steps` at the first masked-AR step to this at the last.
            reconstruction_steps: two-stage sampling (GtR): a checkerboard half of the tokens over the first
                `num_iter - reconstruction_steps` steps, the other half in the last `reconstruction_steps`.
            token_cache_interval: LazyMAR's token cache: a full step every that many steps; in between only changed
                and sampled tokens run through the LLM. Default "auto": 8 where the cache allows it (prompt cache
                on, full-attention layers), else full steps; `None`: exact full steps.
            guidance_cache_interval: LazyMAR's condition cache: a full step every that many steps; in between the
                unconditional rows reuse the last full step's (unconditional - conditional) difference.
            compile_head: "dynamic" or "static" (row counts padded to powers of two): torch.compile the head.
        """
        return self._generate(prompt, negative_prompt, return_dict, num_images_per_prompt=num_images_per_prompt,
                              num_iter=num_iter, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              guidance_schedule=guidance_schedule, temperature=temperature, generator=generator,
                              use_cache=use_cache, output_type=output_type,
                              final_num_inference_steps=final_num_inference_steps,
                              reconstruction_steps=reconstruction_steps, token_cache_interval=token_cache_interval,
                              guidance_cache_interval=guidance_cache_interval, compile_head=compile_head)

    def _generate(self, prompt, negative_prompt, return_dict: bool, **sampling) -> ImagePipelineOutput | tuple:
        check_bool("return_dict", return_dict)
        inputs = self._tokenize(self._as_list(prompt, "prompt"))
        if negative_prompt is not None:  # one for all prompts or one per prompt: the sampler pairs them up
            negative_inputs = self._tokenize(self._as_list(negative_prompt, "negative_prompt"))
            inputs["negative_prompt_ids"] = negative_inputs["input_ids"]
            inputs["negative_prompt_attention_mask"] = negative_inputs["attention_mask"]
        # The sampling loop owns every default and check; the pipeline hands it its progress bar, as diffusers
        # pipelines wrap their denoising loops.
        images = self.model.generate(**inputs, **sampling, generation_mode="image", scheduler=self.scheduler,
                                     progress_bar=self.progress_bar)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


__all__ = ["MMARPipeline"]
