"""Gradio components whose input errors name the control: gradio's own refusals ("Value 99 is greater than maximum
value 16.") do not say which slider, and an upload PIL cannot read fails before any handler runs. These templates
keep gradio's front end (`is_template`: the parent's Svelte component) and only reword those refusals."""

from __future__ import annotations

import gradio as gr
from PIL import Image, UnidentifiedImageError


def _label(component) -> str:
    return str(component.label or "This control")


class CheckedSlider(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error as error:
            raise gr.Error(f"{_label(self)}: {error.message}", print_exception=False) from None
        except (TypeError, ValueError) as error:
            raise gr.Error(f"{_label(self)} must be a number, got {payload!r:.40}", print_exception=False) from error


class CheckedNumber(gr.Number):
    is_template = True

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error as error:
            raise gr.Error(f"{_label(self)}: {error.message}", print_exception=False) from None
        except (TypeError, ValueError) as error:
            raise gr.Error(f"{_label(self)} must be a number, got {payload!r:.40}", print_exception=False) from error


class CheckedImageEditor(gr.ImageEditor):
    is_template = True

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
            raise gr.Error(f"{_label(self).split(':')[0]}: the file is not an image this app can read (upload a PNG, "
                           f"JPEG, WebP, GIF, BMP or TIFF image; {type(error).__name__})",
                           print_exception=False) from error


__all__ = ["CheckedImageEditor", "CheckedNumber", "CheckedSlider"]
