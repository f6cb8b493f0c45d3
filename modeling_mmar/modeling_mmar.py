"""MMAR: one decoder-only LLM over text and continuous image tokens, with a per-token MLP diffusion head."""

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import local_torch_dtype
from transformers.masking_utils import create_masks_for_generate as _create_masks
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_mmar import MMARConfig
from .diffusion_head_mmar import MMARDiffusionHead, boi_states, per_image_diffusion_draws
from .embedder_mmar import MMARImageEmbedder
from .generation_mmar import MMARGenerationMixin
from .image_experts_mmar import IMAGE_POSITIONS_KWARG, add_image_experts, freeze_text_model_of
from .image_features_mmar import (count_image_spans, encode_image_features, image_features_from_encoder_outputs,
                                  image_positions_in, span_block_ids)
from .input_checks_mmar import check_generator, check_labels, check_sequence, embedding_rows
from .outputs_mmar import MMARCausalLMOutputWithPast, MMARImageFeaturesOutput, MMARModelOutputWithPast  # noqa: F401
from .save_load_mmar import REMOTE_CODE_AUTO_MAP, MMARSaveLoadMixin

if TYPE_CHECKING:  # never run: diffusers copies only the modules a remote-code file names itself
    from .sampling_mmar import generate_images  # noqa: F401
from .image_tokens_mmar import check_image_mask, check_pixel_values, patchify, unpatchify

logger = logging.get_logger(__name__)

# Eval-mode forwards without a `generator` draw the diffusion loss's timesteps and noise from a generator seeded with
# this, so that evaluation losses are reproducible and comparable between checkpoints.
EVAL_DIFFUSION_SEED = 0

try:  # the VAE is optional (pixel-patch tokens need none); keeps remote code importable without diffusers
    from diffusers import AutoencoderKL
except ImportError:  # pragma: no cover
    AutoencoderKL = None


class MMARPreTrainedModel(MMARSaveLoadMixin, PreTrainedModel):
    config: MMARConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MMARDiffusionHead", "MMARImageEmbedder"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flex_attn = True
    # FlashAttention only honours a 2D padding mask: the bidirectional image spans would be silently lost.
    _supports_flash_attn = False
    _can_compile_fullgraph = False
    _keep_in_fp32_modules_strict = ["vae"]  # dropped by __init__ for pixel-patch models, which have no VAE
    # The diffusion MSE is a per-batch mean: let Trainer divide by gradient-accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, config: MMARConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        if config.vae_config is None:  # no module of that name: nothing to keep in fp32
            self._keep_in_fp32_modules_strict = []

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MMARImageEmbedder):
            init.normal_(module.position_embedding, std=0.02)
            init.normal_(module.mask_embedding, std=0.02)
        if isinstance(module, MMARDiffusionHead):  # identity standardisation until set_condition_statistics
            init.zeros_(module.condition_mean)
            init.ones_(module.condition_std)
        head = getattr(self, "diffusion_head", None)
        if isinstance(module, nn.Linear) and head is not None and any(
                module is linear for linear in head.zero_initialised_linears()):
            init.zeros_(module.weight)
            init.zeros_(module.bias)


class MMARModel(MMARPreTrainedModel):
    """The backbone LLM, the frozen continuous image tokenizer (VAE or pixel patches) and the image embedder."""

    # A full MMARForConditionalGeneration checkpoint also holds the two heads: the base model loads without them.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^diffusion_head\."]

    def __init__(self, config: MMARConfig):
        super().__init__(config)
        self.language_model = AutoModel.from_config(config.text_config)
        if config.image_expert is not None:  # own weights for image positions, see image_experts_mmar.py
            add_image_experts(self.language_model, config.image_expert)
        if config.vae_config is not None:
            if AutoencoderKL is None:
                raise ImportError("vae_config is set but diffusers is not installed: pip install diffusers")
            with local_torch_dtype(torch.float32):  # a frozen fp32 tokenizer, whatever dtype the model is built in
                self.vae = AutoencoderKL(**config.vae_config)
        else:
            self.vae = None
        self.freeze_image_tokenizer()
        self.image_embedder = MMARImageEmbedder(
            token_dim=config.token_dim,
            hidden_size=config.text_config.hidden_size,
            tokens_per_image=config.tokens_per_image,
            depth=config.embedder_depth,
            num_heads=config.embedder_num_heads,
        )
        # Inside an MMARForConditionalGeneration the diffusion loss is computed by the owner's forward, after this
        # one: a training call with masked image tokens that does not come through it drops that loss.
        self._owner_computes_image_loss = False
        self._inside_owner_forward = False
        self.post_init()
        freeze_text_model_of(self)

    def _check_image_loss_not_bypassed(self, image_mask: torch.Tensor) -> None:
        if (self._owner_computes_image_loss and not self._inside_owner_forward and self.training
                and torch.is_grad_enabled() and bool(image_mask.any())):
            raise RuntimeError(
                "The backbone of an MMARForConditionalGeneration was called with masked image tokens outside the "
                "model's own forward, so the diffusion loss would be silently dropped (trl's SFTTrainer replaces "
                "the forward by a fused LM head that computes the text loss only). Train with "
                "training.finetune.MMARSFTTrainer (trl) or MMARTrainer (transformers), which keep both losses"
            )

    def freeze_image_tokenizer(self):
        """The VAE is a fixed tokenizer: no gradients, always in eval mode."""
        if self.vae is not None:
            self.vae.requires_grad_(False)
            self.vae.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.freeze_image_tokenizer()  # never dropout / batch-stat updates / gradients in the tokenizer
        return self

    # ---------------- continuous image tokenizer ----------------
    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], [N, C, H, W] -> clean continuous tokens [N, tokens_per_image, token_dim] (no grad)."""
        check_pixel_values(pixel_values, self.config.num_channels, self.config.image_size)
        cfg = self.config
        if self.vae is not None:
            vae_dtype = next(self.vae.parameters()).dtype
            latents = self.vae.encode(pixel_values.to(vae_dtype)).latent_dist.mode()
        else:
            latents = pixel_values
        latents = (latents.float() - cfg.vae_shift_factor) * cfg.vae_scaling_factor
        return patchify(latents, cfg.patch_size)

    @torch.no_grad()
    def decode_image_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Exact inverse of `encode_images` (up to the VAE's reconstruction): tokens -> pixels in about [-1, 1]."""
        cfg = self.config
        latents = unpatchify(image_tokens.float(), cfg.patch_size, cfg.latent_channels, cfg.tokens_per_side)
        latents = latents / cfg.vae_scaling_factor + cfg.vae_shift_factor
        if self.vae is None:
            return latents
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(latents.to(vae_dtype)).sample.float()

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                           image_tokens: torch.Tensor | None = None, **kwargs) -> MMARImageFeaturesOutput:
        r"""
        The images as the LLM reads them: `pooler_output` [N, tokens_per_image, hidden] replaces their `<img>`
        spans (`MMARImageFeaturesOutput`; `generate` encodes prompt images once through this method).

        pixel_values: images in [-1, 1], [N, C, H, W]; or image_tokens: their clean continuous tokens [N, L, D].
        image_mask: bool [N, tokens_per_image], True = replaced by the mask embedding.
        output_hidden_states / output_attentions: the image embedder's (default: the config's).
        """
        return encode_image_features(self, pixel_values, image_tokens, image_mask,
                                     kwargs.get("output_hidden_states", self.config.output_hidden_states),
                                     kwargs.get("output_attentions", self.config.output_attentions))

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Bool [batch, seq]: the `<img>` positions, from `input_ids`, else from the `<img>` embedding in
        `inputs_embeds` (as transformers' VLMs find image tokens in embedded inputs)."""
        return image_positions_in(input_ids, inputs_embeds, self.get_input_embeddings(), self.config.image_token_id)

    def _image_span_masks(self, inputs_embeds, attention_mask, cache, position_ids, block_ids):
        """Causal text + bidirectional image spans, built for the attention implementation the layers use."""
        if attention_mask is not None and attention_mask.ndim == 4:  # a caller-made 4D mask is used as given
            return attention_mask
        text_config = self.config.get_text_config()
        masks = _create_masks(
            config=text_config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
            block_sequence_ids=block_ids,
        )
        # FlashAttention-style kernels (and layer types without a mask function) only get the 2D padding mask back:
        # the image spans would silently turn causal.
        for mask in masks.values() if isinstance(masks, dict) else [masks]:
            if mask is None or (isinstance(mask, torch.Tensor) and mask.ndim == 2):
                raise ValueError(
                    f"attn_implementation={text_config._attn_implementation!r} cannot express MMAR's bidirectional "
                    "image spans; use 'sdpa', 'eager' or 'flex_attention'"
                )
        return masks

    # ---------------- forward ----------------
    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_tokens: torch.FloatTensor | None = None,
        image_mask: torch.BoolTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MMARModelOutputWithPast:
        r"""
        pixel_values: images in [-1, 1], one per image span (`<img>` x tokens_per_image) of the sequence, in order.
        image_tokens: the same images given as clean continuous tokens instead of pixels (used by the sampler).
        mm_encoder_outputs: {"image": get_image_features(...)}, images encoded beforehand (as `generate` does).
        image_mask: bool [num_images, tokens_per_image]; True replaces the token by the mask embedding.

        The image spans are found in `input_ids`, or in `inputs_embeds` as the embedding of `<img>`. With images,
        each span attends to itself bidirectionally. Without images, `<img>` tokens are ordinary (causal) tokens
        with their own embedding, as transformers' VLMs treat image placeholders when no images come.
        """
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        features = (mm_encoder_outputs or {}).get("image")
        given = [name for name, value in (("pixel_values", pixel_values), ("image_tokens", image_tokens),
                                          ("mm_encoder_outputs", features)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"Pass images once, as pixel_values, image_tokens or mm_encoder_outputs; got {given}")
        check_sequence(input_ids, inputs_embeds, attention_mask, position_ids, cache,
                       embedding_rows(self.get_input_embeddings()),
                       getattr(cfg.get_text_config(), "max_position_embeddings", None))
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        block_ids = None
        image_positions = self.get_placeholder_mask(input_ids, inputs_embeds)
        num_spans = count_image_spans(image_positions, cfg.tokens_per_image, cfg.image_token_id) if given else 0
        if given:
            if features is None:
                features = self.get_image_features(pixel_values=pixel_values, image_tokens=image_tokens,
                                                   image_mask=image_mask, return_dict=True)
            image_embeds, image_tokens = image_features_from_encoder_outputs(features, num_spans)
            if image_mask is not None:
                check_image_mask(image_mask, num_spans, cfg.tokens_per_image)
                self._check_image_loss_not_bypassed(image_mask)
            inputs_embeds = inputs_embeds.masked_scatter(image_positions.unsqueeze(-1).expand_as(inputs_embeds),
                                                         image_embeds.to(inputs_embeds.dtype).reshape(-1))
            block_ids = span_block_ids(image_positions, cache.get_seq_length() if cache is not None else 0)
        elif image_mask is not None:
            raise ValueError("image_mask was given without images")
        elif image_positions.any():
            logger.warning_once("The sequence holds <img> tokens but no images were given: they are read as ordinary "
                                "text tokens (pass pixel_values or image_tokens to fill the image spans)")

        return self.forward_embedded(inputs_embeds, attention_mask, position_ids, cache, block_ids, use_cache,
                                     image_tokens=image_tokens, image_positions=image_positions if given else None,
                                     **kwargs)

    def forward_embedded(self, inputs_embeds, attention_mask=None, position_ids=None, cache=None, block_ids=None,
                         use_cache=None, image_tokens=None, image_positions=None, **kwargs) -> MMARModelOutputWithPast:
        """The LLM over embedded inputs, the image spans of `block_ids` (`image_block_ids`) bidirectional, the
        `image_positions` (bool [batch, seq]) run by the image experts if any. Checks nothing: `forward` checks what
        users pass, the image sampler calls this at every masked-AR step with inputs it checked once (and a dict of
        masks it built once, which is used as given)."""
        if image_positions is not None and self.config.image_expert is not None:
            kwargs[IMAGE_POSITIONS_KWARG] = image_positions
        if block_ids is not None and not isinstance(attention_mask, dict):
            attention_mask = self._image_span_masks(inputs_embeds, attention_mask, cache, position_ids, block_ids)
        outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs)
        return MMARModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_tokens=image_tokens,
        )


class MMARForConditionalGeneration(MMARPreTrainedModel, MMARGenerationMixin):
    """MMAR with the LM head (text) and the diffusion head (images). One forward gives both losses."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # The backbone's plan shards embed_tokens over the vocabulary; the head (tied to it or not) is sharded alike.
    _tp_plan = {"lm_head": "colwise_gather_output"}
    remote_code_auto_map = REMOTE_CODE_AUTO_MAP  # save_pretrained names every Auto class users expect

    def __init__(self, config: MMARConfig):
        super().__init__(config)
        self.model = MMARModel(config)
        self.model._owner_computes_image_loss = True
        hidden = config.text_config.hidden_size
        self.lm_head = nn.Linear(hidden, config.text_config.vocab_size, bias=False)
        self.diffusion_head = MMARDiffusionHead(
            token_dim=config.token_dim, condition_dim=hidden, width=config.head_width, depth=config.head_depth,
            boi_condition=config.boi_condition,
        )
        self._noise_scheduler = None
        self.post_init()
        freeze_text_model_of(self)

    @classmethod
    def from_text_model(cls, text_model_or_path, vae=None, tokenizer=None, image_size=None, patch_size=None,
                        num_channels=None, dtype=None, gguf_file=None, **config_kwargs):
        r"""
        A new MMAR model around a pretrained causal LM, whose weights are kept exactly.

        Args:
            text_model_or_path: an `AutoModelForCausalLM` model, its local path / Hub id, a `.gguf` file, or an
                embedded name ("smollm2"). The embeddings grow by the image tokens its tokenizer lacks.
            vae: `None` (pixel-patch tokens), a diffusers `AutoencoderKL` or its path (a pipeline folder's `vae/`
                works too); its weights and scaling/shift factors are kept.
            tokenizer: the LLM's tokenizer or its path (default: the text model's path), left unchanged.
            image_size, patch_size, num_channels: image geometry (default: the VAE's, else MMARConfig's).
            dtype: dtype of the new model (default: the text model's; the VAE stays float32).
            gguf_file: a GGUF checkpoint inside the folder `text_model_or_path` (needs `pip install gguf`).
            **config_kwargs: any other `MMARConfig` field (head_width, image_expert, freeze_text_model, ...).

        ```python
        model = MMARForConditionalGeneration.from_text_model("Qwen/Qwen2-0.5B", vae="path/to/kl16", image_size=256)
        processor = MMARProcessor.from_text_model("Qwen/Qwen2-0.5B", model.config)  # the tokenizer + image tokens
        ```
        """
        from .convert_text_model_to_mmar import from_text_model

        return from_text_model(cls, text_model_or_path, vae=vae, tokenizer=tokenizer, image_size=image_size,
                               patch_size=patch_size, num_channels=num_channels, dtype=dtype, gguf_file=gguf_file,
                               **config_kwargs)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values=None, image_mask=None, image_tokens=None, **kwargs):
        return self.model.get_image_features(pixel_values, image_mask=image_mask, image_tokens=image_tokens, **kwargs)

    @property
    def noise_scheduler(self):
        """The training-time diffusion process, an `MMARScheduler` (built lazily: model init may run on the meta
        device, and understanding-only users need no diffusers)."""
        if self._noise_scheduler is None:
            from .scheduling_mmar import MMARScheduler

            self._noise_scheduler = MMARScheduler.from_model_config(self.config)
        return self._noise_scheduler

    def diffusion_loss(self, conditions: torch.Tensor, targets: torch.Tensor,
                       generator: torch.Generator | list[torch.Generator] | None = None,
                       image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The head's loss on tokens `targets` [M, D] given LLM states `conditions` [M, H] (`MMARDiffusionHead.loss`).
        With a list of generators, one per image of `image_mask` (whose True tokens are the M targets), each image's
        timesteps and noise come from its own generator (`per_image_diffusion_draws`)."""
        batch_mul, noise, timesteps = self.config.diffusion_batch_mul, None, None
        if isinstance(generator, (list, tuple)):
            timesteps, noise = per_image_diffusion_draws(generator, image_mask, batch_mul, targets.shape[-1],
                                                         self.noise_scheduler.config.num_train_timesteps)
            generator = None
        return self.diffusion_head.loss(conditions, targets, self.noise_scheduler, batch_mul, generator=generator,
                                        noise=noise, timesteps=timesteps)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_tokens: torch.FloatTensor | None = None,
        image_mask: torch.BoolTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        labels: torch.LongTensor | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MMARCausalLMOutputWithPast:
        r"""
        pixel_values: images in [-1, 1], one per image span of the sequence (in order of appearance); or
            image_tokens (clean continuous tokens), or mm_encoder_outputs (see `MMARModel.forward`).
        image_mask: bool [num_images, tokens_per_image]. True = hidden from the LLM (mask embedding) and a
            diffusion target. None = every image fully visible (understanding).
        labels: text labels, -100 where no text loss (image tokens, prompt, padding). Shifted internally.
        generator: draws the diffusion loss's timesteps and noise. Without one, training draws them from the global
            RNG (seeded by `set_seed`), and eval mode from a generator seeded with `EVAL_DIFFUSION_SEED`, so that an
            evaluation loss is a function of the inputs and the weights alone (every call draws the same sequence).
            A list holds one generator per image: an image's draws then do not depend on the rest of its batch, so a
            batch split over several processes is noised as it is in one (as `mmar train` does).
        """
        shift_labels = kwargs.pop("shift_labels", None)  # targets already aligned with the logits (sequence parallel)
        outputs = self._backbone_forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_tokens=image_tokens,
            image_mask=image_mask,
            mm_encoder_outputs=mm_encoder_outputs,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        text_loss = None
        if labels is not None and input_ids is not None:
            check_labels(labels, *input_ids.shape, logits.shape[-1])
        if labels is not None and logits.shape[1] != labels.shape[1]:
            raise ValueError(
                f"labels cover {labels.shape[1]} positions but logits_to_keep={logits_to_keep} kept "
                f"{logits.shape[1]}: compute the text loss with logits_to_keep=0"
            )
        if (labels is not None and (labels[:, 1:] != -100).any()) or (shift_labels is not None
                                                                       and (shift_labels != -100).any()):
            text_loss = self.loss_function(logits=logits, labels=labels, shift_labels=shift_labels,
                                           vocab_size=self.config.text_config.vocab_size)

        image_loss = None
        if image_mask is not None and image_mask.any():
            if outputs.image_tokens is None:
                raise ValueError("image_mask needs the images' clean tokens (the diffusion targets): pass pixel_values "
                                 "or image_tokens, or mm_encoder_outputs from get_image_features with the same images")
            # MAR-style: a token's condition is the hidden state at its own position (no shift).
            image_positions = self.model.get_placeholder_mask(input_ids, inputs_embeds)
            image_hidden = hidden_states[image_positions]  # [num_images * tokens_per_image, H], image order
            if self.config.boi_condition:  # projected once per image, added to each of its tokens
                image_hidden = self.diffusion_head.add_boi_states(
                    image_hidden.view(*image_mask.shape, -1),
                    boi_states(hidden_states, image_positions, self.config.tokens_per_image)).flatten(0, 1)
            flat_mask = image_mask.reshape(-1)
            targets = outputs.image_tokens.reshape(-1, outputs.image_tokens.shape[-1])
            if generator is None and not self.training:
                generator = torch.Generator(device=image_hidden.device).manual_seed(EVAL_DIFFUSION_SEED)
            check_generator(generator, image_mask.shape[0], what="images")
            image_loss = self.diffusion_loss(image_hidden[flat_mask], targets[flat_mask], generator=generator,
                                             image_mask=image_mask)

        loss = None
        if text_loss is not None:
            loss = self.config.text_loss_weight * text_loss
        if image_loss is not None:
            weighted = self.config.image_loss_weight * image_loss
            loss = weighted if loss is None else loss + weighted

        return MMARCausalLMOutputWithPast(
            loss=loss,
            text_loss=text_loss,
            image_loss=image_loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_tokens=outputs.image_tokens,
        )

    def _backbone_forward(self, **inputs) -> MMARModelOutputWithPast:
        """The backbone's forward for a call that computes the diffusion head's part itself (its loss or statistics)."""
        self.model._inside_owner_forward = True
        try:
            return self.model(**inputs)
        finally:
            self.model._inside_owner_forward = False

    @torch.no_grad()
    def standardize_head_conditions(self, input_ids: torch.LongTensor, image_mask: torch.BoolTensor,
                                    attention_mask: torch.Tensor | None = None, **image_inputs) -> int:
        """Data-dependent initialisation of the diffusion head's input for a pretrained backbone (whose last states
        have a few massive dimensions): standardise each dimension with the statistics of the states at the masked
        image positions of a training batch (the collator's output; `labels` ignored). Returns how many were used."""
        if image_mask is None or not bool(image_mask.any()):
            raise ValueError("standardize_head_conditions needs a batch with masked image tokens (generation rows)")
        image_inputs.pop("labels", None)
        hidden_states = self._backbone_forward(input_ids=input_ids, attention_mask=attention_mask,
                                               image_mask=image_mask, **image_inputs).last_hidden_state
        image_positions = self.model.get_placeholder_mask(input_ids, None)
        conditions = hidden_states[image_positions][image_mask.reshape(-1).to(hidden_states.device)]
        self.diffusion_head.set_condition_statistics(conditions)
        return conditions.shape[0]


__all__ = [
    "MMARPreTrainedModel",
    "MMARModel",
    "MMARForConditionalGeneration",
    "MMARModelOutputWithPast",
    "MMARCausalLMOutputWithPast",
]
