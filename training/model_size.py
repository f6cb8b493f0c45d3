"""Parameter count of an MMAR model per component, without allocating its weights.

    python -m training.model_size training/configs/model/paper-0.5b.json

The model is built on the meta device (shapes only), so even the paper's 0.5B geometry with its KL-16 VAE
needs no memory and no weights. The file is an `MMARConfig` JSON (its keyword arguments, or a saved
`config.json`).
"""

from __future__ import annotations

import argparse
import sys

import torch

COMPONENTS = ("language_model", "lm_head", "vae", "image_embedder", "diffusion_head")


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def parameter_counts(model) -> dict[str, int]:
    """Parameters per component of an `MMARForConditionalGeneration`, plus `total` and `trainable`.

    A tied `lm_head` shares the input embedding's tensor: it counts 0 here and once in `language_model`, so the
    components always add up to `total` (unique parameters).
    """
    backbone = model.model
    tied = model.lm_head.weight is backbone.language_model.get_input_embeddings().weight
    counts = {
        "language_model": _count(backbone.language_model),
        "lm_head": 0 if tied else _count(model.lm_head),
        "vae": _count(backbone.vae),
        "image_embedder": _count(backbone.image_embedder),
        "diffusion_head": _count(model.diffusion_head),
    }
    counts["total"] = _count(model)  # Module.parameters() yields a shared tensor once
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if sum(counts[name] for name in COMPONENTS) != counts["total"]:
        raise RuntimeError(f"component counts {counts} do not add up to the total: a component is missing")
    return counts


def load_config(path: str):
    from modeling_mmar import MMARConfig

    return MMARConfig.from_json_file(path)


def build_on_meta(config):
    """`MMARForConditionalGeneration(config)` with every tensor on the meta device: shapes, no memory."""
    from modeling_mmar import MMARForConditionalGeneration

    with torch.device("meta"):
        return MMARForConditionalGeneration(config)


def format_counts(counts: dict[str, int], config) -> str:
    lines = [
        f"image geometry: {config.image_size}x{config.image_size}x{config.num_channels} -> "
        f"{config.tokens_per_image} tokens of dim {config.token_dim}",
    ]
    width = max(len(name) for name in counts)
    for name, value in counts.items():
        share = f"{100 * value / counts['total']:5.1f} %" if name not in ("total", "trainable") else ""
        lines.append(f"{name:<{width}}  {value:>15,}  {value / 1e6:10.2f} M  {share}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.model_size", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="MMARConfig JSON file, e.g. training/configs/model/paper-0.5b.json")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    counts = parameter_counts(build_on_meta(config))
    print(format_counts(counts, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
