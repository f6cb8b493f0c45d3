"""MMAR configuration: a causal-LM `text_config`, an optional KL-VAE and the image-token geometry."""

# No `from __future__ import annotations` here: @strict skips the type check of string annotations, so field
# types must stay real types for `MMARConfig(image_size="8")` to be rejected.
import contextvars
import dataclasses
import inspect

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, GenerationConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

try:  # only to check vae_config's keys; the config itself never needs diffusers
    from diffusers import AutoencoderKL
except ImportError:  # pragma: no cover
    AutoencoderKL = None

# Generation parameters are dropped by PreTrainedConfig (they belong in GenerationConfig), not refused.
GENERATION_PARAMETERS = frozenset(getattr(GenerationConfig, "_get_default_generation_params", dict)())

# The embedded default: a tiny Qwen2 that trains on 8x8 handwritten digits on a laptop CPU.
DEFAULT_TEXT_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "max_position_embeddings": 512,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}

NOISE_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")
IMAGE_EXPERTS = (None, "ffn", "attention")
# Keyword arguments that are not MMARConfig fields but that PreTrainedConfig itself reads (or that saved config.json
# files and transformers' loaders carry); any other unknown keyword is refused by name instead of kept silently.
PASS_THROUGH_KWARGS = frozenset({
    "model_type", "auto_map", "name_or_path", "_name_or_path", "torch_dtype", "num_labels", "_commit_hash",
    "output_attentions", "attn_implementation", "experts_implementation", "per_layer_config", "quantization_config",
    "_attn_implementation", "_attn_implementation_internal", "_experts_implementation",
    "_experts_implementation_internal", "rope_scaling", "rope_theta",
})
# True while a config is rebuilt from a saved dict: config.json keeps every attribute set on a config after it was
# built (transformers' contract, its common tests set norm epsilons so), and such files must load again.
_REBUILDING_FROM_DICT = contextvars.ContextVar("mmar_config_rebuilding_from_dict", default=False)


@strict
class MMARConfig(PreTrainedConfig):
    r"""
    Configuration of an MMAR model: one decoder-only LLM that reads continuous image tokens and
    generates them with a per-token MLP diffusion head.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of any causal LM, resolved through `AutoConfig` (defaults to a tiny Qwen2).
        vae_config (`dict`, *optional*):
            Keyword arguments of diffusers' `AutoencoderKL`; `None` tokenizes raw pixel patches.
        image_size (`int`, *optional*, defaults to 8):
            Side of the (square) images in pixels.
        num_channels (`int`, *optional*, defaults to 1):
            Image channels (3 = RGB, 1 = grayscale).
        patch_size (`int`, *optional*, defaults to 2):
            Side of a token's patch, in latent pixels (pixels when `vae_config` is None).
        vae_scaling_factor (`float`, *optional*, defaults to 1.0):
            Latents (or pixels) are multiplied by it before patchifying.
        vae_shift_factor (`float`, *optional*, defaults to 0.0):
            Subtracted from latents before scaling.
        embedder_depth (`int`, *optional*, defaults to 0):
            Bidirectional transformer blocks in the image embedder (0 = a linear embedding).
        embedder_num_heads (`int`, *optional*, defaults to 4):
            Attention heads of those blocks.
        head_width (`int`, *optional*, defaults to 256):
            Width of the diffusion head's MLP.
        head_depth (`int`, *optional*, defaults to 3):
            Residual blocks of the diffusion head.
        diffusion_batch_mul (`int`, *optional*, defaults to 4):
            Fresh (timestep, noise) draws per masked token per forward (MAR's `diffusion_batch_mul`).
        num_train_timesteps (`int`, *optional*, defaults to 1000):
            Steps of the head's diffusion process.
        noise_schedule (`str`, *optional*, defaults to `"squaredcos_cap_v2"`):
            Its beta schedule: `"squaredcos_cap_v2"` (cosine), `"linear"` or `"scaled_linear"`.
        prediction_type (`str`, *optional*, defaults to `"v_prediction"`):
            What the head regresses: `"v_prediction"` (MMAR's choice), `"epsilon"` or `"sample"`.
        image_loss_weight (`float`, *optional*, defaults to 1.0):
            `loss = text_loss_weight * text_loss + image_loss_weight * image_loss`: the weight of the generation task
            (the image loss comes from generated images only).
        text_loss_weight (`float`, *optional*, defaults to 1.0):
            The weight of the text loss, i.e. of the understanding task in MMAR's training batches.
        boi_token_id (`int`, *optional*, defaults to 4):
            Id of `<boi>`, which opens an image span.
        image_token_id (`int`, *optional*, defaults to 5):
            Id of `<img>`, one per image token of a span.
        eoi_token_id (`int`, *optional*, defaults to 6):
            Id of `<eoi>`, which closes an image span.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Whether `lm_head` shares the text model's input embeddings.
        image_expert (`str`, *optional*):
            Separate weights for image positions, initialised from the LLM's: `None` (every weight shared),
            `"ffn"` (each decoder layer's `.mlp` gets an image copy) or `"attention"` (the MLP and the q/k/v/o
            projections). Text positions always run the original weights (see `image_experts_mmar.py`).
        freeze_text_model (`bool`, *optional*, defaults to `False`):
            Freeze every original LLM weight (layers, norms, embeddings, `lm_head`): with an image expert, text-only
            inputs then give the original LLM's hidden states exactly, before and after training.
        boi_condition (`bool`, *optional*, defaults to `False`):
            Also condition the diffusion head on each image's `<boi>` state: the LLM's last hidden state at the
            `<boi>` before the image (a text position: it has read the prompt, not the image) goes through the
            head's zero-initialised `boi_proj` (H -> H) and is added to every image token's own state. Not in the
            paper (whose head reads the token's own state only): a direct path from the caption to the head for
            short runs on a frozen text model, where the image positions learn to read the caption late or never.
    """

    model_type = "mmar"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2", init_kwargs=DEFAULT_TEXT_CONFIG)
    }

    text_config: dict | PreTrainedConfig | None = None
    vae_config: dict | None = None
    image_size: int = 8
    num_channels: int = 1
    patch_size: int = 2
    vae_scaling_factor: float | int = 1.0
    vae_shift_factor: float | int = 0.0
    embedder_depth: int = 0
    embedder_num_heads: int = 4
    head_width: int = 256
    head_depth: int = 3
    diffusion_batch_mul: int = 4
    num_train_timesteps: int = 1000
    noise_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    image_loss_weight: float | int = 1.0
    text_loss_weight: float | int = 1.0
    boi_token_id: int = 4
    image_token_id: int = 5
    eoi_token_id: int = 6
    tie_word_embeddings: bool = False
    image_expert: str | None = None
    freeze_text_model: bool = False
    boi_condition: bool = False

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        token = _REBUILDING_FROM_DICT.set(True)
        try:
            return super().from_dict(config_dict, **kwargs)
        finally:
            _REBUILDING_FROM_DICT.reset(token)

    @classmethod
    def from_json_file(cls, json_file):
        token = _REBUILDING_FROM_DICT.set(True)
        try:
            return super().from_json_file(json_file)
        finally:
            _REBUILDING_FROM_DICT.reset(token)

    def __post_init__(self, **kwargs):
        unknown = sorted(set(kwargs) - PASS_THROUGH_KWARGS - GENERATION_PARAMETERS)
        if unknown and not _REBUILDING_FROM_DICT.get():  # a typo in a direct construction is refused by name
            fields = sorted(f.name for f in dataclasses.fields(self) if not f.name.startswith("_"))
            raise ValueError(f"MMARConfig got unknown argument(s) {unknown}; its fields are: {', '.join(fields)}")
        super().__post_init__(**kwargs)  # text_config becomes a PreTrainedConfig here
        # 1 -> 1.0 in config.json
        for name in ("vae_scaling_factor", "vae_shift_factor", "image_loss_weight", "text_loss_weight"):
            setattr(self, name, float(getattr(self, name)))
        # Checked here too (not only by @strict's validators) so that users get a plain ValueError.
        self.validate_mmar()

    def validate_mmar(self):
        """Raise `ValueError` naming the field for impossible geometry or unknown values."""
        self._check_text_config()
        self._check_vae_config()
        self._check_image_geometry()
        self._check_diffusion()
        self._check_image_token_ids()
        self._check_image_expert()

    # --- derived geometry (one source of truth, also used by the processor builders) ---
    @property
    def vae_downsample_factor(self) -> int:
        if self.vae_config is None:
            return 1
        return 2 ** (len(self.vae_config.get("block_out_channels", (64,))) - 1)

    @property
    def latent_channels(self) -> int:
        if self.vae_config is None:
            return self.num_channels
        return int(self.vae_config.get("latent_channels", 4))

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_downsample_factor

    @property
    def tokens_per_side(self) -> int:
        return self.latent_size // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        return self.tokens_per_side**2

    @property
    def token_dim(self) -> int:
        return self.latent_channels * self.patch_size**2

    # --- validation (validate_mmar also runs under @strict on save_pretrained) ---
    def _check_text_config(self):
        text_config = self.text_config
        if type(text_config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ValueError(
                f"MMARConfig.text_config must be the config of a causal LM (AutoModelForCausalLM), got model_type "
                f"{getattr(text_config, 'model_type', None)!r}"
            )
        for name in ("hidden_size", "vocab_size"):
            if not isinstance(getattr(text_config, name, None), int):
                raise ValueError(f"MMARConfig.text_config needs an integer {name}, got {getattr(text_config, name, None)!r}")

    def _check_vae_config(self):
        vae = self.vae_config
        if vae is None:
            return
        if AutoencoderKL is not None:
            known = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
            unknown = sorted(set(vae) - known)
            if unknown:
                raise ValueError(f"MMARConfig.vae_config has keys that AutoencoderKL does not take: {unknown}")
        levels = len(vae.get("block_out_channels", (64,)))
        for name in ("down_block_types", "up_block_types"):
            if name in vae and len(vae[name]) != levels:
                raise ValueError(
                    f"MMARConfig.vae_config['{name}'] has {len(vae[name])} blocks but block_out_channels has {levels}"
                )
        for name in ("in_channels", "out_channels"):
            if vae.get(name, 3) != self.num_channels:
                raise ValueError(
                    f"MMARConfig.num_channels ({self.num_channels}) must equal vae_config['{name}'] ({vae.get(name, 3)})"
                )
        if int(vae.get("latent_channels", 4)) < 1:
            raise ValueError(f"MMARConfig.vae_config['latent_channels'] must be >= 1, got {vae.get('latent_channels')}")

    def _check_image_geometry(self):
        for name in ("image_size", "num_channels", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"MMARConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_channels not in (1, 3):
            raise ValueError(f"MMARConfig.num_channels must be 1 (grayscale) or 3 (RGB), got {self.num_channels}")
        if self.image_size % self.vae_downsample_factor:
            raise ValueError(
                f"MMARConfig.image_size ({self.image_size}) must be divisible by the VAE's down-sampling factor "
                f"({self.vae_downsample_factor})"
            )
        if self.latent_size % self.patch_size:
            raise ValueError(
                f"MMARConfig.patch_size ({self.patch_size}) must divide the latent size ({self.latent_size} = "
                f"image_size {self.image_size} / VAE factor {self.vae_downsample_factor})"
            )

    def _check_diffusion(self):
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"MMARConfig.noise_schedule must be one of {NOISE_SCHEDULES}, got {self.noise_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"MMARConfig.prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        for name in ("head_width", "head_depth", "diffusion_batch_mul", "num_train_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"MMARConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.embedder_depth < 0:
            raise ValueError(f"MMARConfig.embedder_depth must be >= 0, got {self.embedder_depth}")
        if self.embedder_depth > 0 and (
            self.embedder_num_heads < 1 or self.text_config.hidden_size % self.embedder_num_heads
        ):
            raise ValueError(
                f"MMARConfig.embedder_num_heads ({self.embedder_num_heads}) must divide the LLM hidden size "
                f"({self.text_config.hidden_size}) when embedder_depth > 0"
            )
        if not self.vae_scaling_factor > 0:
            raise ValueError(f"MMARConfig.vae_scaling_factor must be > 0, got {self.vae_scaling_factor}")
        for name in ("image_loss_weight", "text_loss_weight"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"MMARConfig.{name} must be a finite number >= 0, got {getattr(self, name)}")

    def _check_image_token_ids(self):
        ids = {"boi_token_id": self.boi_token_id, "image_token_id": self.image_token_id,
               "eoi_token_id": self.eoi_token_id}
        if len(set(ids.values())) != 3:
            raise ValueError(f"MMARConfig image special-token ids must be distinct, got {ids}")
        vocab_size = self.text_config.vocab_size
        for name, value in ids.items():
            if not 0 <= value < vocab_size:
                raise ValueError(f"MMARConfig.{name}={value} is outside the text vocabulary (size {vocab_size})")
        # A padding/bos/eos id that is also `<img>` would turn padding into image spans.
        for text_name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            text_ids = getattr(self.text_config, text_name, None)
            text_ids = set(text_ids) if isinstance(text_ids, (list, tuple)) else {text_ids}
            for name, value in ids.items():
                if value in text_ids:
                    raise ValueError(f"MMARConfig.{name}={value} collides with text_config.{text_name}")

    def _check_image_expert(self):
        if self.image_expert not in IMAGE_EXPERTS:
            raise ValueError(f"MMARConfig.image_expert must be one of {IMAGE_EXPERTS}, got {self.image_expert!r}")


__all__ = ["IMAGE_EXPERTS", "MMARConfig"]
