"""Hub model cards for exported MMAR folders (`huggingface_hub.ModelCard` + the template in this folder)."""

from .model_card import TEMPLATE_PATH, render_model_card

__all__ = ["TEMPLATE_PATH", "render_model_card"]
