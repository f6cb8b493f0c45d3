"""MMARInpaintPipeline: caption + image + mask -> the image with its masked tokens regenerated (in/outpainting)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .pipeline_mmar import ImagePipelineOutput, MMARPipeline

if TYPE_CHECKING:  # never run: diffusers copies only the modules a remote-code file names itself
    from .inpainting_mmar import token_mask_from_mask_image  # noqa: F401


class MMARInpaintPipeline(MMARPipeline):
    r"""
    Regenerates the masked part of an image with an `MMARForConditionalGeneration` (the components of
    `MMARPipeline`). The image becomes continuous tokens; tokens outside the mask are shown to the model from the first
    masked-AR step and returned exactly, the masked ones are sampled in a random order on the cosine schedule with CFG.
    `mask_image` is at image resolution, white = regenerate; a token is regenerated when any pixel of its cell is
    masked. A border mask outpaints; an empty prompt completes unconditionally.

    ```python
    pipe = MMARInpaintPipeline(model=model, processor=processor,
                               scheduler=default_sampling_scheduler(model.config))
    mask = np.zeros((8, 8), dtype=np.float32); mask[4:] = 1  # regenerate the lower half
    completed = pipe("a handwritten seven", image=digit, mask_image=mask).images[0]
    ```
    """

    def _pixel_values(self, image) -> torch.Tensor:
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images or image is None:
            raise ValueError("MMARInpaintPipeline needs `image`: a PIL image, an array or a list of them")
        size = self.model.config.image_size
        for i, picture in enumerate(images):
            shape = picture.size[::-1] if hasattr(picture, "size") and hasattr(picture, "convert") else \
                np.shape(picture)[:2] if not isinstance(picture, torch.Tensor) else tuple(picture.shape[-2:])
            if tuple(shape) != (size, size):
                raise ValueError(
                    f"image {i} is {shape[0]}x{shape[1]} (height x width) but the model's images are {size}x{size}: "
                    "resize the image and its mask together before inpainting"
                )
        if self.processor is None:
            raise ValueError("MMARInpaintPipeline needs a processor to turn images into pixel_values")
        pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return pixel_values.to(self._execution_device)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = "",
        image=None,
        mask_image=None,
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
            prompt: caption(s) of the completed image; "" (default) completes without a caption.
            image: the image(s) to complete at the model's resolution: PIL, arrays as the processor takes them; one
                shared, one per prompt, or one per generated image.
            mask_image: white / 1 = regenerate, at image resolution: a PIL image, a list of them (one per image), or an
                array / tensor [H, W], [N, H, W] or [N, 1, H, W] with N = 1 (shared) or one per generated image.
            num_iter: masked-AR steps over the masked tokens (default min(64, masked tokens)).
            Other arguments: as `MMARPipeline.__call__`.
        """
        if mask_image is None:
            raise ValueError("MMARInpaintPipeline needs `mask_image` (white = regenerate); use MMARPipeline to "
                             "generate whole images")
        return self._generate(prompt, negative_prompt, return_dict, image=self._pixel_values(image),
                              mask_image=mask_image, num_images_per_prompt=num_images_per_prompt, num_iter=num_iter,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              guidance_schedule=guidance_schedule, temperature=temperature, generator=generator,
                              use_cache=use_cache, output_type=output_type,
                              final_num_inference_steps=final_num_inference_steps,
                              reconstruction_steps=reconstruction_steps, token_cache_interval=token_cache_interval,
                              guidance_cache_interval=guidance_cache_interval, compile_head=compile_head)


__all__ = ["MMARInpaintPipeline"]
