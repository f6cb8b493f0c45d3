"""The model card of a (tiny) demo run: Hub metadata from its metrics.json, and usage snippets that really run."""

import json
import re

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from hub_cards import render_model_card
from training.cli import main as mmar
from training.demo import run_demo

# A demo run in seconds: a 1-layer backbone, 3 training steps, 10 generated digits with 2 masked-AR steps.
TINY_DEMO = [
    "training.max_steps=3", "training.eval_strategy='no'", "training.logging_steps=1",
    "model.text_config.hidden_size=32", "model.text_config.intermediate_size=64",
    "model.text_config.num_hidden_layers=1", "model.head_width=32",
    "evaluation.seeds_per_digit=1", "evaluation.num_iter=2", "evaluation.num_inference_steps=2",
    "evaluation.batch_size=400",
]


@pytest.fixture(scope="module")
def exported_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    metrics = run_demo(str(root / "mmar-demo"), overrides=TINY_DEMO)
    assert mmar(["export", str(root / "mmar-demo" / "model"), str(root / "export")]) == 0
    return root / "export", metrics


def python_snippets(card_text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card_text, flags=re.DOTALL)


def test_card_metadata_comes_from_the_run(exported_demo):
    export_dir, metrics = exported_demo
    card = ModelCard.load(export_dir / "README.md")
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag) == ("apache-2.0", "transformers", "any-to-any")
    assert {"mmar", "custom_code"} <= set(data.tags)
    assert data.datasets == ["sklearn-digits"]
    assert "image → text and text generation: `pip install torch transformers`" in card.text  # what to install
    results = {(r.task_type, r.metric_name): r.metric_value for r in data.eval_results}
    assert results[("image-text-to-text", "held-out caption accuracy")] == round(metrics["caption_accuracy"], 4)
    assert results[("text-to-image", "generated-digit accuracy (SVC judge)")] == round(
        metrics["generated_digit_accuracy"], 4)
    assert results[("text-to-image", "digit-FD generated vs held-out")] == round(metrics["digit_fd"], 4)
    # The sample grid travels with the card, and the table shows the run's numbers.
    assert "![" in card.text and "(samples.png)" in card.text and (export_dir / "samples.png").is_file()
    assert f"| held-out caption accuracy | {metrics['caption_accuracy']:.1%} |" in card.text
    assert f"| training steps | {metrics['train_steps']} |" in card.text


def test_card_snippets_run_against_the_exported_folder(exported_demo, tmp_path, monkeypatch):
    export_dir, _ = exported_demo
    snippets = python_snippets((export_dir / "README.md").read_text())
    assert len(snippets) == 3
    assert all(f'"{export_dir}"' in snippet for snippet in (snippets[0], snippets[2]))
    monkeypatch.chdir(tmp_path)  # the snippets save their images in the working folder

    namespace = {}
    exec(compile(snippets[0], "card: text -> image", "exec"), namespace)  # noqa: S102  (the card's own code)
    generated = Image.open(tmp_path / "generated.png")
    assert generated.size == (8, 8)
    exec(compile(snippets[1], "card: image -> text", "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["answer"], str) and namespace["inputs"]["pixel_values"].shape == (1, 1, 8, 8)
    exec(compile(snippets[2], "card: pipeline", "exec"), {})  # noqa: S102  (stand-alone)
    from_pipeline = Image.open(tmp_path / "pipeline.png")
    assert from_pipeline.size == (8, 8)
    # Same seed, same caption, same settings: the pipeline and model.generate draw the same image.
    assert list(from_pipeline.getdata()) == list(generated.getdata())


def test_card_for_a_hub_repo_and_a_backbone(exported_demo):
    export_dir, metrics = exported_demo
    card = render_model_card(export_dir, metrics=metrics, base_model="Qwen/Qwen2-0.5B",
                             repo_id="someone/mmar-digits", save=False)
    assert card.data.base_model == "Qwen/Qwen2-0.5B" and card.data.model_name == "mmar-digits"
    assert all('"someone/mmar-digits"' in s for s in (python_snippets(card.text)[0], python_snippets(card.text)[2]))
    assert "Built on [Qwen/Qwen2-0.5B]" in card.text
    with pytest.raises(ValueError, match="config.json"):
        render_model_card(export_dir / "scheduler")
    with pytest.raises(ValueError, match="metrics"):
        render_model_card(export_dir, metrics=export_dir / "missing.json", save=False)
    assert json.loads((export_dir / "metrics.json").read_text())["train_steps"] == metrics["train_steps"]
