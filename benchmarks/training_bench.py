"""Training step: MMAR against the bare backbone causal LM on the same tokens, and where MMAR's overhead goes.

One step = forward, backward, AdamW step, zero_grad, on a batch from the real training collator (half
understanding, half generation samples, stage-1 masking). The bare LM is `AutoModelForCausalLM.from_config` of the
same `text_config`, trained on the same `input_ids` (its image spans are ordinary token ids). Figures:
- time: side-by-side rounds, MMAR's overhead = t_MMAR / t_LM - 1;
- peak memory: the largest total of live tensors during one step (parameters, gradients, optimizer state,
  activations), with its split by category at the peak (torch's MemTracker on CPU, the allocator on CUDA);
- overhead split: forward + backward of each MMAR-only part alone (image tokenizer, mask building, image embedder,
  diffusion loss = head x diffusion_batch_mul), and a torch.profiler table of one MMAR step with record_function
  regions around those parts, written next to the results.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM

from .profiling import profile_call
from .subjects import random_subject
from .timing import ratio, side_by_side, time_call



@contextlib.contextmanager
def head_checkpointing(model):
    """The diffusion head checkpointed one `diffusion_batch_mul` copy at a time (what `activation_checkpointing_enable()`
    adds for MMAR's own part), the LLM left as it is: MMAR's extra memory without touching the backbone's."""
    head = model.diffusion_head
    before = head.gradient_checkpointing, getattr(head, "_gradient_checkpointing_func", None)
    head._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
    head.gradient_checkpointing = True
    try:
        yield model
    finally:
        head.gradient_checkpointing, head._gradient_checkpointing_func = before


VARIANTS = {  # settings["variants"] entries: MMAR options timed beside MMAR as it is
    "head_checkpointing": ("MMAR, diffusion head checkpointed", head_checkpointing),
}
TIME_OVERHEAD_TARGET = 0.25
MEMORY_RATIO_TARGET = 1.3


@functools.lru_cache(maxsize=8)
def _digits(image_size: int, seed: int):
    from training.data import load_digits_dataset

    return load_digits_dataset(image_size=image_size, seed=seed)["train"]


def training_batch(subject, batch_size: int, seed: int = 0) -> dict:
    """A batch from the project's collator over real digits (resized to the model's image size)."""
    from training.collator import MMARDataCollator

    cfg = subject.model.config
    dataset = _digits(max(8, cfg.image_size), seed)
    collator = MMARDataCollator(subject.processor, cfg.tokens_per_image, seed=seed)
    rows = [dataset[i] for i in range(batch_size)]
    batch = collator(rows)
    if cfg.num_channels != batch["pixel_values"].shape[1]:  # e.g. RGB geometry on grayscale digits
        batch["pixel_values"] = batch["pixel_values"].expand(-1, cfg.num_channels, -1, -1).contiguous()
    return batch


def lm_batch(batch: dict) -> dict:
    """The same tokens for the bare causal LM: next-token loss on every real token."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


class TrainStep:
    """Callable: `steps` optimizer steps of `model` on `batch` (autocast to `autocast_dtype` when given)."""

    def __init__(self, model, batch: dict, steps: int = 1, autocast_dtype: torch.dtype | None = None, context=None,
                 optimizer=None):
        self.model, self.steps, self.autocast_dtype = model.train(), steps, autocast_dtype
        self.context = context or contextlib.nullcontext  # e.g. an option switched on for these steps only
        device = next(model.parameters()).device
        self.batch = {k: v.to(device) for k, v in batch.items()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        # Variants of one model share its optimizer: a second AdamW state would double its memory.
        self.optimizer = optimizer or torch.optim.AdamW(trainable, lr=1e-4)

    def __call__(self):
        return self.run(self.steps)

    def run(self, steps: int):
        device_type = next(self.model.parameters()).device.type
        autocast = (torch.autocast(device_type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        for _ in range(steps):
            with self.context(), autocast:
                loss = self.model(**self.batch).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss


def peak_memory(step: TrainStep, method: str = "auto") -> dict:
    """Peak live tensor bytes during one step (after a warm-up step: optimizer state exists) and its split by
    kind (parameters, gradients, optimizer state, activations, ...) at the peak. On CPU, `method` "auto" uses
    torch's MemTracker and falls back to the profiler's memory timeline where MemTracker cannot follow the model;
    "profiler" uses the timeline directly."""
    step.run(1)
    device = next(step.model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step.run(1)
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "start_bytes": start, "source": "torch.cuda"}
    if method == "profiler":
        return _profiled_peak(step)
    try:
        return _tracked_peak(step, device)
    except RuntimeError as error:
        if "doesn't require gradient" not in str(error):
            raise
        return _profiled_peak(step)  # MemTracker cannot hook frozen parameters (e.g. a VAE); the timeline can


def consistent_peaks(steps: dict) -> dict:
    """`peak_memory` of every step, all measured the same way: if one needs the profiler, all use it."""
    peaks = {name: peak_memory(step) for name, step in steps.items()}
    sources = {peak["source"] for peak in peaks.values()}
    if len(sources) > 1:
        peaks = {name: peak if "profiler" in peak["source"] else peak_memory(steps[name], method="profiler")
                 for name, peak in peaks.items()}
    return peaks


def _tracked_peak(step: TrainStep, device) -> dict:
    """torch's MemTracker (a TorchDispatchMode that follows every tensor storage, with categories); it agrees with
    torch.profiler's memory timeline to the byte on these steps and is several times faster."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(step.model, step.optimizer, *step.batch.values())
    with tracker:  # one step only: MemTracker follows a module through one iteration
        step.run(1)
    snapshot = tracker.get_tracker_snapshot("peak")[device]
    split = {str(getattr(k, "value", k)).lower(): v for k, v in snapshot.items() if k != "Total" and v}
    return {"peak_bytes": snapshot["Total"], "at_peak": split, "source": "torch MemTracker (live tensor storages)"}


def _profiled_peak(step: TrainStep) -> dict:
    """The largest total of live CPU tensors in torch.profiler's memory timeline of one step."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step.run(1)
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    return {"peak_bytes": max(sum(row) for row in sizes), "source": "torch.profiler memory timeline"}


def _median_seconds(fn, repeats: int) -> float:
    fn()
    return statistics.median(time_call(fn) for _ in range(repeats))


def overhead_parts(model, batch: dict, repeats: int) -> dict:
    """Seconds of each MMAR-only part alone (forward + backward where it has trainable weights)."""
    from modeling_mmar.image_tokens_mmar import image_block_ids

    inner, cfg = model.model, model.config
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    tokens = inner.encode_images(batch["pixel_values"])
    image_mask = batch["image_mask"]
    embeds = inner.get_input_embeddings()(input_ids).detach()
    block_ids = image_block_ids(input_ids, cfg.image_token_id)
    masked = int(image_mask.sum())
    conditions = torch.randn(masked, cfg.text_config.hidden_size, device=device, requires_grad=True)
    targets = tokens.reshape(-1, cfg.token_dim)[image_mask.reshape(-1)]

    def embedder():
        inner.image_embedder(tokens, image_mask).sum().backward()

    def diffusion_loss():
        model.diffusion_loss(conditions, targets).backward()

    parts = {
        "image tokenizer (VAE encode / patchify)": lambda: inner.encode_images(batch["pixel_values"]),
        "attention mask with image blocks": lambda: inner._image_span_masks(embeds, mask, None, None, block_ids),
        "image embedder fwd+bwd": embedder,
        f"diffusion loss fwd+bwd (head x diffusion_batch_mul={cfg.diffusion_batch_mul}, {masked} masked tokens)":
            diffusion_loss,
    }
    seconds = {name: _median_seconds(fn, repeats) for name, fn in parts.items()}
    model.zero_grad(set_to_none=True)
    return seconds


def profile_step(step: TrainStep, path: Path) -> dict:
    """One MMAR step under torch.profiler with regions around MMAR's parts; the top-ops table goes to `path`."""
    model = step.model
    inner = model.model
    step.run(1)
    return profile_call(lambda: step.run(1), path,
                        modules={"LLM": inner.language_model, "image embedder": inner.image_embedder,
                                 "LM head": model.lm_head},
                        methods={"image tokenizer": (inner, "encode_images"),
                                 "mask building": (inner, "_image_span_masks"),
                                 "diffusion loss (head x mul, fwd)": (model, "diffusion_loss")})


def flop_overhead(config, tokens_per_row: float, masked_per_row: float) -> float:
    """Expected training-step overhead of MMAR from parameter counts (FLOPs ~ 6 x params x rows through them):
    (head x diffusion_batch_mul x masked tokens + embedder x image tokens) / (LLM + LM head x all tokens).
    Attention FLOPs and the frozen tokenizer are left out (both sides of the comparison would grow)."""
    from modeling_mmar import MMARForConditionalGeneration

    with torch.device("meta"):
        model = MMARForConditionalGeneration(config)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    language_model = model.model.language_model
    llm = count(language_model) - count(language_model.get_input_embeddings()) + count(model.lm_head)
    head = count(model.diffusion_head) * config.diffusion_batch_mul * masked_per_row
    embedder = count(model.model.image_embedder) * config.tokens_per_image
    return (head + embedder) / (llm * tokens_per_row)


def flop_estimates(measured_config, batch: dict) -> dict:
    """Expected overhead for the measured geometry and for the paper's (Qwen2-0.5B, 256 tokens) with the same
    task mix and masking."""
    import json

    from modeling_mmar import MMARConfig

    rows = batch["input_ids"].shape[0]
    masked_fraction = float(batch["image_mask"].float().mean())
    text_tokens = batch["attention_mask"].sum().item() / rows - measured_config.tokens_per_image
    paper_path = Path(__file__).resolve().parent.parent / "training" / "configs" / "model" / "paper-0.5b.json"
    paper = MMARConfig(**json.loads(paper_path.read_text()))
    estimates = {}
    for name, config in (("measured geometry", measured_config), ("paper-0.5b geometry", paper)):
        tokens = config.tokens_per_image + text_tokens
        estimates[name] = flop_overhead(config, tokens, masked_fraction * config.tokens_per_image)
    return estimates


def run_training_benchmark(settings: dict, repeats: int, out_dir: Path | None = None, device="cpu",
                           autocast_dtype=None, geometry: dict | None = None) -> dict:
    """settings: batch_size, steps_per_round, image_tokens (list: scaling over sequence length; the first entry is
    the headline geometry), profile (bool: for the first entry, the overhead split, FLOP estimate and profiler
    table), variants (list of VARIANTS keys: MMAR options timed beside MMAR, e.g. "head_checkpointing").
    `geometry`: MMARConfig overrides (default: the demo's geometry with image_size = 2 * sqrt(image_tokens),
    patch 2); weights are random (speed does not depend on them)."""
    rows, profile_regions, flops = [], None, None
    for index, num_tokens in enumerate(settings["image_tokens"]):
        side = int(round(num_tokens ** 0.5))
        overrides = dict(geometry) if geometry else {
            "image_size": 2 * side, "patch_size": 2,
            "text_config": {"max_position_embeddings": max(128, num_tokens + 64)}}
        run_subject = random_subject(**overrides)
        mmar = run_subject.model.to(device)
        torch.manual_seed(0)
        backbone = AutoModelForCausalLM.from_config(mmar.config.text_config).to(device)
        batch = training_batch(run_subject, settings["batch_size"])
        steps = settings.get("steps_per_round", 1)
        candidates = {"lm": TrainStep(backbone, lm_batch(batch), steps, autocast_dtype),
                      "MMAR": TrainStep(mmar, batch, steps, autocast_dtype)}
        for variant in settings.get("variants", ()):
            label, option = VARIANTS[variant]
            candidates[label] = TrainStep(mmar, batch, steps, autocast_dtype,
                                          context=lambda option=option: option(mmar),
                                          optimizer=candidates["MMAR"].optimizer)
        timings = side_by_side(candidates, repeats=repeats, warmup=1)
        memory = consistent_peaks(candidates)
        for name in candidates:
            if name == "lm":
                continue
            slowdown = ratio(timings[name], timings["lm"])  # t_mmar / t_lm per round
            row = {
                "model": name,
                "image_tokens": num_tokens,
                "sequence_length": int(batch["input_ids"].shape[1]),
                "batch_size": settings["batch_size"],
                "lm_seconds_per_step": timings["lm"].median / steps,
                "mmar_seconds_per_step": timings[name].median / steps,
                "time_ratio": slowdown.summary(),
                "time_overhead": slowdown.median - 1.0,
                "lm_peak_memory_mb": memory["lm"]["peak_bytes"] / 2**20,
                "mmar_peak_memory_mb": memory[name]["peak_bytes"] / 2**20,
                "memory_ratio": memory[name]["peak_bytes"] / memory["lm"]["peak_bytes"],
                "memory_at_peak_mb": {
                    "mmar": {k: v / 2**20 for k, v in memory[name].get("at_peak", {}).items()},
                    "lm": {k: v / 2**20 for k, v in memory["lm"].get("at_peak", {}).items()},
                },
                "memory_source": memory[name]["source"],
                "tokens_per_s_mmar": batch["input_ids"].numel() * steps / timings[name].median,
            }
            if index == 0 and name == "MMAR" and settings.get("profile", True):
                row["overhead_parts_s"] = overhead_parts(mmar, batch, repeats)
                flops = flop_estimates(mmar.config, batch)
                if out_dir is not None:
                    profile_regions = profile_step(candidates[name], out_dir / "training_profile.txt")
            rows.append(row)
    headline = rows[0]
    return {
        "name": "training",
        "title": "Training step: MMAR vs the bare backbone causal LM on the same tokens",
        "settings": {**settings, "repeats": repeats},
        "rows": rows,
        "profile": profile_regions,
        "flop_estimate": flops,
        "targets": targets(headline["time_overhead"], headline["memory_ratio"]),
    }


def targets(time_overhead: float, memory_ratio: float) -> dict:
    return {
        "time_overhead": {"value": time_overhead, "target": f"<= {TIME_OVERHEAD_TARGET:.0%}",
                          "met": time_overhead <= TIME_OVERHEAD_TARGET},
        "memory_ratio": {"value": memory_ratio, "target": f"<= {MEMORY_RATIO_TARGET:g}x",
                         "met": memory_ratio <= MEMORY_RATIO_TARGET},
    }


def overhead_targets(training: dict, cached_image_tokens: bool = False) -> dict:
    """The targets of a gpu_bench.run_gpu_training result (MMAR and LM side by side), for MMAR as it is or with
    `data.cache_image_tokens` (the VAE run once over the dataset)."""
    time_ratio = "time_ratio_cached_image_tokens" if cached_image_tokens else "time_ratio"
    memory = training["mmar_cached_image_tokens" if cached_image_tokens else "mmar"]["peak_memory_gb"]
    return targets(training[time_ratio]["median"] - 1.0, memory / training["lm"]["peak_memory_gb"])


__all__ = ["TrainStep", "consistent_peaks", "lm_batch", "overhead_parts", "overhead_targets", "peak_memory", "run_training_benchmark", "training_batch"]
