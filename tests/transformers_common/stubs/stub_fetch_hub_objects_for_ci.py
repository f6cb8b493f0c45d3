"""Stands in for transformers' `utils/fetch_hub_objects_for_ci.py` (repo root `utils/`, not in the sdist).

In transformers' CI, `url_to_local_path(url)` returns the file that CI pre-downloaded from the Hub, else the URL.
These tests run offline, so an image URL maps to a local PNG: a real handwritten digit from scikit-learn (shipped with
it, no download), scaled up to 64x64 RGB. Other URLs (videos, audio) are returned unchanged: MMAR's processor has no
video or audio component, so the tests that would read them do not run.
"""

import os
import tempfile

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _local_digit_png() -> str:
    path = os.path.join(tempfile.gettempdir(), f"mmar-hf-common-tests-digit-{getattr(os, 'getuid', lambda: 0)()}.png")
    if not os.path.exists(path):
        import numpy as np
        from PIL import Image
        from sklearn.datasets import load_digits

        digit = load_digits().images[0]  # [8, 8] in [0, 16]
        pixels = np.kron((digit * 255 / 16).astype(np.uint8), np.ones((8, 8), dtype=np.uint8))
        scratch = f"{path}.{os.getpid()}.tmp"
        Image.fromarray(pixels).convert("RGB").save(scratch, format="PNG")
        os.replace(scratch, path)  # atomic: concurrent test workers never read half a file
    return path


def url_to_local_path(url, return_url_if_not_found=True):
    if url.lower().endswith(IMAGE_SUFFIXES):
        return _local_digit_png()
    return url if return_url_if_not_found else url.split("/")[-1]
