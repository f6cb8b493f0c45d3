"""README.md's usage snippet runs as written against a saved model folder (the demo's, here a tiny one)."""

import re
from pathlib import Path

import numpy as np
import torch
from conftest import digits_to_pixel_values
from test_pipeline import build_pipeline

README = Path(__file__).resolve().parents[1] / "README.md"


def usage_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- usage-snippet -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its <!-- usage-snippet --> block"
    return match.group(1)


def test_the_usage_snippet_runs_and_decodes_plain_text(tmp_path, monkeypatch, digits):
    pipe = build_pipeline()
    folder = tmp_path / "mmar-demo" / "model"  # laid out as `mmar train` / `mmar demo` write it
    pipe.model.save_pretrained(folder)
    pipe.processor.save_pretrained(folder)
    pipe.scheduler.save_pretrained(folder / "scheduler")
    pipe.save_config(folder)
    monkeypatch.chdir(tmp_path)  # the snippet names the demo's folder relative to the working directory
    image = ((digits_to_pixel_values(digits[0][:1])[0, 0].numpy() + 1) * 127.5).astype(np.uint8)
    namespace = {"image": image}
    exec(compile(usage_snippet().replace("num_inference_steps=50", "num_inference_steps=4"), "README.md", "exec"),
         namespace)
    (answer,) = namespace["answer"]
    assert isinstance(answer, str) and "<eos>" not in answer and "<img>" not in answer
    assert len(namespace["images"]) == 1 and namespace["images"][0].size == (8, 8)
    assert torch.is_tensor(namespace["prompts"]["input_ids"])
