"""What MMAR adds to `PreTrainedModel.from_pretrained` / `save_pretrained`: frozen parts stay frozen after loading,
saved weights are readable by others, and the remote-code `auto_map` names every Auto class users expect."""

import os

from .image_experts_mmar import freeze_text_model_of
from .input_checks_mmar import resolve_pretrained_path, shareable_permissions

# Remote-code auto_map entries that `save_pretrained` of the model with heads adds beside the ones transformers
# writes itself.
REMOTE_CODE_AUTO_MAP = {
    "AutoModel": "modeling_mmar.MMARModel",
    "AutoModelForImageTextToText": "modeling_mmar.MMARForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_mmar.MMARForConditionalGeneration",
}


class MMARSaveLoadMixin:
    """Put before `PreTrainedModel` in the bases. `remote_code_auto_map`: the entries `save_pretrained` adds to
    `config.auto_map` when the class is registered for an Auto class (None: only what transformers writes)."""

    remote_code_auto_map: dict[str, str] | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        resolved = resolve_pretrained_path(pretrained_model_name_or_path, "model")
        if isinstance(pretrained_model_name_or_path, str) and resolved != pretrained_model_name_or_path:
            # diffusers loaded this class from a pipeline's code-only model/ folder under trust_remote_code=True
            kwargs.setdefault("trust_remote_code", True)
        loaded = super().from_pretrained(resolved, *args, **kwargs)
        # Loading replaces every parameter by a fresh `nn.Parameter(requires_grad=True)`: freeze again what the
        # config says is frozen (the VAE, and the text LLM under `freeze_text_model`), so that optimizers, PEFT
        # and parameter counts see it so.
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        for module in model.modules():
            if callable(getattr(module, "freeze_image_tokenizer", None)):  # MMARModel
                module.freeze_image_tokenizer()
        freeze_text_model_of(model)  # config.freeze_text_model
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes auto_map entries only for AutoConfig and the class's own auto class; users of the
        # remote code also expect AutoModel and AutoModelForCausalLM to resolve, whoever saved the folder.
        if self.remote_code_auto_map and self._auto_class is not None:
            self.config.auto_map = {**self.remote_code_auto_map, **(getattr(self.config, "auto_map", None) or {})}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        for name in os.listdir(save_directory):  # the weights come from temporary files (0600): readable as saved
            if name.endswith(".safetensors"):
                shareable_permissions(os.path.join(save_directory, name))
        return result
