"""Input errors that name the control. gradio's own refusals ("Value 99 is greater than maximum value 16.") do not
say which slider, and an upload PIL cannot read fails inside gradio before any handler runs; `labelled` rewords
both on one component instance. (Wrapping the instance rather than subclassing the component keeps gradio's
component machinery, which writes a .pyi stub beside every module that defines a component class, out of it.)"""

from __future__ import annotations

import functools

import gradio as gr
from PIL import Image, UnidentifiedImageError

IMAGE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError)


def labelled(component):
    """`component` whose preprocessing refusals start with its label (images: say the file is not one)."""
    label = str(component.label or "This control").split(":")[0]
    preprocess = component.preprocess
    is_image = isinstance(component, (gr.ImageEditor, gr.Image))

    @functools.wraps(preprocess)
    def checked_preprocess(payload):
        try:
            return preprocess(payload)
        except gr.Error as error:
            raise gr.Error(f"{label}: {error.message}", print_exception=False) from None
        except IMAGE_ERRORS if is_image else (TypeError, ValueError) as error:
            reason = ("the file is not an image this app can read (upload a PNG, JPEG, WebP, GIF, BMP or TIFF image; "
                      f"{type(error).__name__})") if is_image else f"must be a number, got {payload!r:.40}"
            raise gr.Error(f"{label}: {reason}", print_exception=False) from error

    component.preprocess = checked_preprocess
    return component


__all__ = ["labelled"]
