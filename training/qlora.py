"""QLoRA for MMAR: a 4-bit NF4 backbone (bitsandbytes) with LoRA on top; MMAR's own parts stay in full precision.

Only the backbone's Linear layers are quantized: the skip list names the VAE, the image embedder (with the mask
embedding), the diffusion head and the LM head by their full module paths (bitsandbytes matches names from the
start of the module path, so "vae" alone would not match `model.vae...`, and a custom skip list drops transformers'
default `lm_head` skip). Works on CPU (bitsandbytes >= 0.45) and CUDA.

    python -m training.qlora MODEL_DIR [--steps 5]     # memory before / after and a few training steps
"""

from __future__ import annotations

import argparse
import json
import time

import torch

# Full module paths kept in full precision.
FULL_PRECISION_MODULES = ("model.vae", "model.image_embedder", "diffusion_head", "lm_head")


def bnb_4bit_config(compute_dtype: torch.dtype | None = None):
    """NF4 with double quantization; compute in float32 on CPU, bfloat16 on CUDA unless told otherwise."""
    from transformers import BitsAndBytesConfig

    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(FULL_PRECISION_MODULES),
    )


def load_4bit(model_dir, compute_dtype: torch.dtype | None = None, device_map: str | None = None,
              **from_pretrained_kwargs):
    """An MMAR model from `model_dir` with its backbone in 4-bit NF4 (extra kwargs go to `from_pretrained`)."""
    from transformers import AutoModelForImageTextToText

    import modeling_mmar  # noqa: F401  (registers the MMAR Auto classes)

    device_map = device_map or ("cuda" if torch.cuda.is_available() else "cpu")
    return AutoModelForImageTextToText.from_pretrained(
        str(model_dir), quantization_config=bnb_4bit_config(compute_dtype), device_map=device_map,
        **from_pretrained_kwargs)


def quantized_module_names(model) -> list[str]:
    import bitsandbytes as bnb

    return [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]


def keep_4bit_weights_trainable(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; returns the number of layers changed.

    On CPUs with AVX512-BF16, a `Linear4bit` in eval mode repacks its weight in place into a CPU-inference layout
    (`packing_format_for_cpu`) on its first forward; a training step afterwards then fails inside `matmul_4bit`
    ("a view of a leaf Variable ... in-place operation"). A model that trains, and evaluates between steps, keeps
    the trainable layout: repacking is switched off, and any weight already repacked is converted back.
    """
    import bitsandbytes as bnb
    from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            quant_state = getattr(module.weight, "quant_state", None)
            if quant_state is not None and getattr(quant_state, "packing_format_for_cpu", False):
                module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    module.weight.data, quant_state)
            changed += 1
    return changed


def qlora_model(model_dir, compute_dtype: torch.dtype | None = None, gradient_checkpointing: bool = False,
                load_kwargs: dict | None = None, **lora_kwargs):
    """4-bit backbone + `prepare_model_for_kbit_training` + MMAR's LoRA recipe (`lora_kwargs`, see training.lora)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from .lora import lora_config

    model = load_4bit(model_dir, compute_dtype, **(load_kwargs or {}))
    quantized = quantized_module_names(model)
    outside = [name for name in quantized if not name.startswith("model.language_model.")]
    if outside:
        raise RuntimeError(f"Modules outside the backbone were quantized: {outside}")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    keep_4bit_weights_trainable(model)  # evaluation between training steps must not repack the weights
    return get_peft_model(model, lora_config(**{"model_config": model.config, **lora_kwargs}))


def weight_bytes(model, prefix: str = "") -> int:
    """Bytes held by parameters and buffers whose names start with `prefix` (4-bit weights count as packed)."""
    total = 0
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if name.startswith(prefix):
            total += tensor.numel() * tensor.element_size()
    return total


def memory_report(model) -> dict:
    """Weight memory of the whole model and of its backbone, in MiB."""
    mib = 2**20
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"model_mib": weight_bytes(base) / mib,
            "backbone_mib": weight_bytes(base, "model.language_model.") / mib,
            "footprint_mib": base.get_memory_footprint() / mib}


# ------------------------------------------------------------------------------------------------ measurement
def probe_loss(model, batch: dict, draws: int = 3) -> float:
    """Mean loss of `model` on one fixed batch over `draws` seeded diffusion draws (timesteps and noise), in eval
    mode: a low-variance before/after figure for a few training steps."""
    model.eval()
    with torch.no_grad():
        values = []
        for draw in range(draws):
            torch.manual_seed(draw)
            values.append(float(model(**batch).loss))
    model.train()
    return sum(values) / len(values)


def measure(model_dir, steps: int = 5, batch_size: int = 16, learning_rate: float = 1e-3, seed: int = 0) -> dict:
    """Full-precision vs 4-bit weight memory, then `steps` QLoRA steps on digits (loss on a fixed probe batch)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import processors  # noqa: F401

    from .collator import MMARDataCollator
    from .data import load_digits_dataset

    full = AutoModelForImageTextToText.from_pretrained(str(model_dir))
    report = {"full_precision": memory_report(full)}
    del full
    model = qlora_model(model_dir)
    report["4bit"] = memory_report(model)
    report["quantized_modules"] = len(quantized_module_names(model))
    processor = AutoProcessor.from_pretrained(str(model_dir))
    config = model.get_base_model().config
    rows = load_digits_dataset(image_size=config.image_size, seed=seed)["train"]
    collator = MMARDataCollator(processor, config.tokens_per_image, mask_ratio_min=0.0, seed=seed)
    device = next(p for p in model.parameters() if p.requires_grad).device
    probe = {k: v.to(device) for k, v in collator([rows[i] for i in range(64)]).items()}

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    report["loss_before"] = probe_loss(model, probe)
    start = time.monotonic()
    for step in range(steps):
        batch = collator([rows[(step * batch_size + i) % len(rows)] for i in range(batch_size)])
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    report["seconds_per_step"] = (time.monotonic() - start) / max(steps, 1)
    report["loss_after"] = probe_loss(model, probe)
    if torch.cuda.is_available():
        report["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.qlora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a saved MMAR model folder (e.g. ./mmar-demo/model)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model_dir, args.steps, args.batch_size, args.learning_rate), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["FULL_PRECISION_MODULES", "bnb_4bit_config", "load_4bit", "measure", "memory_report", "probe_loss",
           "qlora_model", "quantized_module_names", "weight_bytes"]
