"""The Hub model card of an exported MMAR folder, rendered with `huggingface_hub.ModelCard` from the template here.

YAML metadata (license, `library_name`, `pipeline_tag`, tags, datasets, `base_model` and a `model-index` built from
the run's metrics.json), the sample grid, the evaluation table and runnable usage snippets (AutoModel + generate in
both directions, MMARPipeline) that load the model from `repo_id` (or from the folder itself when there is none).
When the folder holds the app (`app.py`, written by `mmar export`), the card also carries the Hugging Face Space keys
in its front matter (`sdk: gradio`, `app_file: app.py`, ...), a screenshot of the app and the link to the Space.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card_template.md"
SAMPLES_IMAGE = "samples.png"
APP_FILE = "app.py"
TAGS = ["mmar", "custom_code", "multimodal", "text-to-image", "image-to-text", "image-generation", "diffusion",
        "masked-autoregressive"]

# The embedded default's data: scikit-learn's 1,797 real handwritten digits (UCI ML), split 80 / 20 by digit.
DIGITS_DATASET = {"type": "sklearn-digits", "name": "scikit-learn handwritten digits (UCI ML, 8x8)",
                  "split": "heldout"}
DIGITS_DESCRIPTION = (
    "Measured by `{command}` on the held-out 20 % of scikit-learn's handwritten digits (never trained on). "
    "Generated digits are read by an independent judge (an SVC trained on the train split only); digit-FD is the "
    "Fréchet distance between generated and held-out digits in the feature space of a small MLP classifier "
    "(lower is better)."
)
# metrics.json key -> (task type, task name, metric type, readable name); these feed the model-index.
MODEL_INDEX_METRICS = {
    "caption_accuracy": ("image-text-to-text", "Digit captioning", "accuracy", "held-out caption accuracy"),
    "generated_digit_accuracy": ("text-to-image", "Digit generation", "accuracy",
                                 "generated-digit accuracy (SVC judge)"),
    "digit_fd": ("text-to-image", "Digit generation", "frechet_distance", "digit-FD generated vs held-out"),
}
# Further numbers shown in the table only.
TABLE_ONLY_METRICS = {
    "digit_fd_floor_train_vs_heldout": "digit-FD floor: real train vs held-out digits",
    "digit_fd_ceiling_noise": "digit-FD ceiling: uniform noise vs held-out digits",
    "judge_heldout_accuracy": "judge accuracy on real held-out digits",
    "train_steps": "training steps",
}
PERCENT_METRICS = {"caption_accuracy", "generated_digit_accuracy", "judge_heldout_accuracy"}
GENERATION_DEFAULTS = {"num_iter": 16, "guidance_scale": 3.0, "num_inference_steps": 50, "max_new_tokens": 4}
DIGITS_IMAGE_CODE = (
    "import numpy as np\n"
    "from PIL import Image\n"
    "from sklearn.datasets import load_digits\n"
    "\n"
    "digit = load_digits().images[7]  # a real handwritten seven, ink in 0..16\n"
    "image = Image.fromarray(np.uint8(digit * 255 / 16))"
)
GENERIC_IMAGE_CODE = "from PIL import Image\n\nimage = Image.open(\"image.png\")"


def _load_metrics(metrics) -> dict:
    if metrics is None:
        return {}
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        if not path.is_file():
            raise ValueError(f"metrics file {str(path)!r} does not exist")
        metrics = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict or the path of a metrics.json, got {type(metrics).__name__}")
    return metrics


def _format(value, percent: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if percent:
        return f"{value:.1%}"
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}"


def _count_parameters(export_dir: Path) -> int:
    """Parameters in the folder's safetensors files (read from their headers: no tensor is loaded)."""
    total = 0
    for path in sorted(export_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                count = 1
                for size in handle.get_slice(key).get_shape():
                    count *= size
                total += count
    return total


def _is_digits_run(metrics: dict, config: dict) -> bool:
    return ("mmar_demo" in metrics or "mmar_finetune" in metrics
            or "caption_accuracy" in metrics and config.get("image_size") == 8)


def _eval_results(metrics: dict, dataset: dict) -> list[EvalResult]:
    results = []
    for key, (task_type, task_name, metric_type, metric_name) in MODEL_INDEX_METRICS.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            results.append(EvalResult(
                task_type=task_type, task_name=task_name, dataset_type=dataset["type"], dataset_name=dataset["name"],
                dataset_split=dataset.get("split"), metric_type=metric_type, metric_name=metric_name,
                metric_value=round(float(value), 4),
            ))
    return results


def _metric_rows(metrics: dict) -> list[tuple[str, str]]:
    names = {key: spec[3] for key, spec in MODEL_INDEX_METRICS.items()} | TABLE_ONLY_METRICS
    rows = [(name, _format(metrics[key], key in PERCENT_METRICS)) for key, name in names.items() if key in metrics]
    # Fine-tuning runs (`mmar finetune`) also record the base model's numbers and the original task's.
    for block, suffix in (("before", "before fine-tuning"), ("english_after", "original captions, after"),
                          ("english_before", "original captions, before")):
        values = metrics.get(block)
        if isinstance(values, dict):
            rows += [(f"{name} ({suffix})", _format(values[key], key in PERCENT_METRICS))
                     for key, name in names.items() if key in values]
    return rows


def render_model_card(
    export_dir,
    metrics=None,
    base_model: str | None = None,
    repo_id: str | None = None,
    model_id: str | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    example_prompt: str | None = None,
    example_question: str | None = None,
    space_id: str | None = None,
    app_screenshot: str | None = None,
    app_screenshot_is_demo: bool = False,
    space_metadata: dict | None = None,
    save: bool = True,
) -> ModelCard:
    """Render (and by default save as `export_dir/README.md`) the model card of an exported MMAR folder.

    Args:
        export_dir: the exported folder (config.json, safetensors, processor, scheduler/); a `samples.png` in it is
            shown as the sample grid.
        metrics: a metrics.json path or dict (e.g. `mmar demo`'s); fills the model-index and the evaluation table.
        base_model: Hub id of the backbone the model was built from / fine-tuned from.
        repo_id: Hub id of this model (its name titles the card).
        model_id: what the snippets load (default: `repo_id`, else the folder's path).
        license, datasets: card metadata (datasets default to the digits for a digits run).
        example_prompt, example_question: texts used in the snippets (default: metrics["examples"], else the
            digits' caption / question).
        space_id: Hub id of the Gradio Space that runs this folder's app.py (the card links it).
        app_screenshot: file name (in export_dir) of a screenshot of the app, shown on the card;
            app_screenshot_is_demo says it was taken on the digits demo model, not on this one.
        space_metadata: the Space's front-matter keys (sdk, sdk_version, app_file, title, ...).
    """
    export_dir = Path(export_dir)
    config_path = export_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{str(export_dir)!r} has no config.json: render the card of an exported MMAR folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") != "mmar":
        raise ValueError(f"{str(config_path)!r} is not an MMAR config (model_type {config.get('model_type')!r})")
    metrics = _load_metrics(metrics)
    examples = metrics.get("examples") or {}  # a run may name its own prompts (e.g. `mmar finetune`'s style)
    digits = _is_digits_run(metrics, config)
    dataset = DIGITS_DATASET if digits else {"type": (datasets or ["custom"])[0], "name": (datasets or ["custom"])[0]}
    if datasets is None and digits:
        datasets = [DIGITS_DATASET["type"]]
    model_id = model_id or repo_id or str(export_dir.resolve())
    model_name = model_id.rstrip("/").split("/")[-1]

    has_app = (export_dir / APP_FILE).is_file()
    if app_screenshot is not None and not (export_dir / app_screenshot).is_file():
        raise ValueError(f"app_screenshot {app_screenshot!r} is not a file in {str(export_dir)!r}")
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="any-to-any",
        tags=list(TAGS),
        datasets=datasets,
        base_model=base_model,
        model_name=model_name,
        eval_results=_eval_results(metrics, dataset) or None,
        **(space_metadata if has_app and space_metadata else {}),
    )
    text_config = config.get("text_config") or {}
    vae = config.get("vae_config")
    latent_channels = vae.get("latent_channels", 4) if vae else config.get("num_channels", 1)
    downsample = 2 ** (len(vae.get("block_out_channels", [64])) - 1) if vae else 1
    tokens_per_side = config["image_size"] // downsample // config["patch_size"]
    evaluation = {**GENERATION_DEFAULTS, **{k: v for k, v in (metrics.get("evaluation") or {}).items()
                                            if k in GENERATION_DEFAULTS}}
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        title=model_name,
        model_id=model_id,
        base_model=base_model,
        backbone=f"{text_config.get('model_type', '?')}, hidden size {text_config.get('hidden_size', '?')}, "
                 f"{text_config.get('num_hidden_layers', '?')} layers, vocabulary {text_config.get('vocab_size', '?')}",
        image_tokenizer=(f"KL-VAE (diffusers AutoencoderKL, {downsample}x down-sampling, {latent_channels} latent "
                         f"channels), patch {config['patch_size']}") if vae else
                        f"raw pixel patches of {config['patch_size']}x{config['patch_size']}",
        image_size=config["image_size"],
        num_channels=config.get("num_channels", 1),
        tokens_per_image=tokens_per_side**2,
        token_dim=latent_channels * config["patch_size"] ** 2,
        head_width=config.get("head_width"),
        head_depth=config.get("head_depth"),
        prediction_type=config.get("prediction_type"),
        num_parameters=_format(_count_parameters(export_dir)),
        samples_image=SAMPLES_IMAGE if (export_dir / SAMPLES_IMAGE).is_file() else None,
        metric_rows=_metric_rows(metrics),
        dataset_description=DIGITS_DESCRIPTION.format(
            command="mmar finetune" if "mmar_finetune" in metrics else "mmar demo") if digits else None,
        example_prompt=example_prompt or examples.get("example_prompt")
        or ("a handwritten seven" if digits else "a photo of a cat"),
        example_question=example_question or examples.get("example_question")
        or ("What digit is this?" if digits else "What is in the image?"),
        example_image_code=DIGITS_IMAGE_CODE if digits else GENERIC_IMAGE_CODE,
        app_file=APP_FILE if has_app else None,
        space_id=space_id,
        app_screenshot=app_screenshot,
        app_screenshot_is_demo=app_screenshot_is_demo,
        **evaluation,
    )
    if save:
        card.save(str(export_dir / "README.md"))
    return card


__all__ = ["render_model_card", "TEMPLATE_PATH"]
