"""`mmar train --config training/configs/digits.yaml [section.key=value ...]`: train MMAR with transformers' Trainer.

The run builds a tokenizer from the data's text, the model from the config's `model` section, the processor from
the model config, the datasets and the collator, then trains with `transformers.Trainer`, logging text and image
losses separately and evaluating on the held-out split. The output folder (`training.output_dir`) holds the model,
the processor and the scheduler (`AutoModelForImageTextToText`, `AutoProcessor` and `MMARPipeline` load it) and
`loss.png`. Multi-process: `accelerate launch --config_file training/configs/accelerate/ddp.yaml -m training.train
--config ...` (DDP, FSDP or DeepSpeed: training/distributed.py says what makes N processes train what one does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, set_seed

from .callbacks import MaskStageCallback, TimeBudgetCallback
from .checkpoints import check_complete_checkpoint, newest_complete_checkpoint
from .collator import MMARDataCollator
from .data import DIGIT_DATASETS, digits_corpus, load_digit_dataset, load_image_text_dataset
from .distributed import (check_launch, check_loss_composition, check_resume, choose_fsdp_units, every_parameter_gets_a_gradient,
                          engine_in_use, global_batch_loss, loss_part_counts, peak_memory_mib,
                          save_gathered_model, sharded_parameter_count, use_fsdp_on_cpu_processes)
from .image_token_cache import add_image_tokens
from .learning_rates import train_pretrained_weights_at
from .plots import plot_loss
from .row_noise import ROW_SEEDS, RowSeedCollator, row_generators
from .run_config import load_config
from .task_forwards import task_groups
from .threads import CpuThreadsCallback, cpu_has_native_bf16

LOSS_PARTS = ("text_loss", "image_loss")
MIN_LOSS_POINTS = 5  # a loss.png needs at least this many logged steps
# TrainingArguments defaults of a run unless the config sets them.
TRAINING_DEFAULTS = {
    "remove_unused_columns": False,  # rows hold raw images and text: the collator does all processing
    "report_to": "none",
    "prediction_loss_only": True,  # evaluation needs the losses only (no logits kept)
    # Every trainable parameter gets a gradient at every step (training.distributed): DDP need not search the graph
    # for unused ones.
    "ddp_find_unused_parameters": False,
}


class MMARTrainer(Trainer):
    """`Trainer` that logs MMAR's text and image losses beside the total, for training and evaluation, and uses
    its own (fixed-seed) collator for evaluation so that held-out losses are comparable along the run."""

    def __init__(self, *args, eval_data_collator=None, pretrained_learning_rate: float | None = None,
                 forward_per_task: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator
        self.pretrained_learning_rate = pretrained_learning_rate
        if forward_per_task and self.accelerator.num_processes > 1:  # check_launch says so before anything runs
            raise ValueError("forward_per_task runs two forwards per step: use it with one process")
        self.forward_per_task = forward_per_task
        self._loss_sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._loss_counts = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._loss_composition_checked = False
        self.mmar = _mmar_model(self.model)
        if self.mmar is not None:  # N processes train what one process trains (training/distributed.py)
            every_parameter_gets_a_gradient(self.mmar)

    def create_optimizer(self, model=None):
        """Trainer's optimizer; with `pretrained_learning_rate`, split by origin (training/learning_rates.py)."""
        fresh = self.optimizer is None  # Trainer returns the one it has; its groups are split already
        optimizer = super().create_optimizer(model)
        if fresh and self.pretrained_learning_rate is not None:
            train_pretrained_weights_at(optimizer, self.model if model is None else model,
                                        self.pretrained_learning_rate)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        seeds = inputs.pop(ROW_SEEDS, None)
        if seeds is not None and self.mmar is not None and inputs.get("image_mask") is not None:
            inputs["generator"] = row_generators(seeds)  # each row's diffusion noise from its own seed (row_noise.py)
        if self.forward_per_task and model.training and self.mmar is not None:
            groups = task_groups(inputs, self.mmar.config.image_token_id, self.mmar.config.tokens_per_image)
            if len(groups) > 1:  # the batch's loss, one forward per task (training/task_forwards.py)
                totals = torch.stack(loss_part_counts(inputs))
                parts = [self._loss_of(model, group, num_items_in_batch, totals, count_batch=index == 0)
                         for index, group in enumerate(groups)]
                loss = sum(part_loss for part_loss, _ in parts)
                return (loss, parts[-1][1]) if return_outputs else loss
        loss, outputs = self._loss_of(model, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _loss_of(self, model, inputs, num_items_in_batch, totals=None, count_batch=True):
        """One forward's loss; in training its share of the global batch's loss (`totals`: the counts of the whole
        batch when `inputs` is part of it), with each loss part's share kept for logging (the batch counted once:
        `count_batch` for one of its parts only)."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        split = "train" if model.training else "eval"
        if split == "train" and isinstance(outputs, dict) and self.mmar is not None:
            config = self.mmar.config
            if not self._loss_composition_checked:
                check_loss_composition(outputs, config)
                self._loss_composition_checked = True
            # The loss of the global batch, whatever the number of processes (or forwards) it is split over.
            loss, shares = global_batch_loss(outputs, inputs, config, self.accelerator.num_processes,
                                             lambda t: self.accelerator.reduce(t, reduction="sum"), totals)
            for name, (share, count) in shares.items():  # kept on the device: no synchronisation per step
                self._loss_sums[split][name] = self._loss_sums[split][name] + share
                if count_batch:
                    self._loss_counts[split][name] = self._loss_counts[split][name] + count
        else:
            for name in LOSS_PARTS:
                value = outputs.get(name) if isinstance(outputs, dict) else None
                if value is not None:
                    self._loss_sums[split][name] = self._loss_sums[split][name] + value.detach().double()
                    self._loss_counts[split][name] = self._loss_counts[split][name] + 1.0
        return loss, outputs

    def _drain_loss_parts(self, split: str) -> dict[str, float]:
        """Mean of each loss part since the last call, over every process (all processes must call this)."""
        sums, counts = self._loss_sums[split], self._loss_counts[split]
        values = torch.stack([
            torch.stack([torch.as_tensor(sums[n], dtype=torch.float64, device=self.args.device),
                         torch.as_tensor(counts[n], dtype=torch.float64, device=self.args.device)])
            for n in LOSS_PARTS
        ])
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        sums.clear()
        counts.clear()
        return {name: float(s / c) for name, (s, c) in zip(LOSS_PARTS, values.tolist()) if c > 1e-9}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the parts accumulated since the previous one
            logs.update(self._drain_loss_parts("train"))
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._drain_loss_parts("eval")  # forget anything not from this evaluation
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        for name, value in self._drain_loss_parts("eval").items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """As Trainer's, except under FSDP: the saved folder is the plain model's (its own class and remote code,
        full weights), also with a sharded state dict, whose checkpoints keep their shards only."""
        if not self.is_fsdp_enabled:
            return super().save_model(output_dir, _internal_call)
        sharded = "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type)
        if sharded and _internal_call:
            return  # checkpoint-N/pytorch_model_fsdp_0 holds the weights
        save_gathered_model(self, str(output_dir or self.args.output_dir))

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator


def _mmar_model(model):
    """The MMARForConditionalGeneration inside `model` (itself, or the base model of a peft model), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base if hasattr(base, "diffusion_head") and hasattr(base, "noise_scheduler") else None


@dataclass
class TrainingRun:
    """Everything a run builds; `run.trainer.train()` trains it."""

    config: dict
    tokenizer: object
    model: object
    processor: object
    train_dataset: object
    eval_dataset: object
    collator: MMARDataCollator
    trainer: MMARTrainer
    time_budget: TimeBudgetCallback


# ------------------------------------------------------------------------------------------------ building blocks
def build_datasets(data_config: dict, image_size: int, seed: int):
    """(train, held-out, tokenizer corpus) for the config's `data` section."""
    name = data_config.get("dataset", "digits")
    if name in DIGIT_DATASETS:
        splits = load_digit_dataset(name, image_size=data_config.get("image_size") or image_size, seed=seed)
        return splits["train"], splits["heldout"], digits_corpus()
    common = dict(image_column=data_config.get("image_column", "image"),
                  caption_column=data_config.get("caption_column", "text"),
                  streaming=bool(data_config.get("streaming", False)),
                  verify_images=bool(data_config.get("verify_images", True)))
    train = load_image_text_dataset(name, split=data_config.get("split", "train"), **common)
    if data_config.get("eval_split"):
        heldout = load_image_text_dataset(name, split=data_config["eval_split"], **common)
    elif common["streaming"]:
        raise ValueError("A streamed dataset needs data.eval_split (a held-out split cannot be carved from a stream)")
    else:
        parts = train.train_test_split(test_size=data_config.get("eval_fraction", 0.1), seed=seed)
        train, heldout = parts["train"], parts["test"]
    if common["streaming"]:
        limit = int(data_config.get("max_corpus_texts", 10000))
        corpus = [row["caption"] for _, row in zip(range(limit), train)]
    else:
        corpus = list(train["caption"])
    return train, heldout, corpus


def build_tokenizer_for(data_config: dict, corpus: list[str]):
    """A word-level tokenizer trained on the data's text, or `data.tokenizer` loaded (image tokens added if missing)."""
    from processors import add_image_tokens, build_tokenizer

    if data_config.get("tokenizer"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(data_config["tokenizer"])
        add_image_tokens(tokenizer)
        if tokenizer.pad_token is None:  # batches are padded; many causal-LM tokenizers ship without a pad token
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return build_tokenizer(corpus)


def _token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
        raise ValueError(f"The tokenizer has no {token} token: build it with processors.build_tokenizer")
    return int(token_id)


def build_model_config(model_config: dict, tokenizer, vae=None):
    """MMARConfig from the `model` section, with vocabulary size and special-token ids taken from the tokenizer,
    and the VAE's architecture, channels and latent shift / scale taken from `vae` (a loaded AutoencoderKL)."""
    from modeling_mmar import MMARConfig
    from modeling_mmar.convert_text_model_to_mmar import vae_init_kwargs

    model_config = dict(model_config or {})
    model_config.pop("vae", None)
    if vae is not None:
        derived = {"vae_config", "vae_scaling_factor", "vae_shift_factor", "num_channels"} & set(model_config)
        if derived:
            raise ValueError(f"model.vae is set: {sorted(derived)} come from the VAE's own config; remove them")
        model_config.update(
            vae_config=vae_init_kwargs(vae),
            vae_scaling_factor=float(vae.config.scaling_factor),
            vae_shift_factor=float(getattr(vae.config, "shift_factor", None) or 0.0),
            num_channels=int(vae.config.in_channels),
        )
    text_config = dict(model_config.pop("text_config", None) or {})
    text_config.setdefault("model_type", "qwen2")
    text_config.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return MMARConfig(
        text_config=text_config,
        boi_token_id=_token_id(tokenizer, "<boi>"),
        image_token_id=_token_id(tokenizer, "<img>"),
        eoi_token_id=_token_id(tokenizer, "<eoi>"),
        **model_config,
    )


def build_from_text_model(model_section: dict, vae=None):
    """(model, processor) around the pretrained LLM `model.base_model` (a folder / Hub id, a .gguf file, or an
    embedded name such as "smollm2"; `model.gguf_file` for a GGUF file inside a folder): its weights, tokenizer and
    chat template are kept, the other `model` keys are MMARConfig fields (image_expert, freeze_text_model, ...)."""
    from modeling_mmar import MMARForConditionalGeneration
    from modeling_mmar.convert_text_model_to_mmar import load_text_tokenizer
    from processors import MMARProcessor

    kwargs = {key: value for key, value in model_section.items() if key not in ("base_model", "gguf_file", "vae")}
    if "text_config" in kwargs:
        raise ValueError("model.base_model and model.text_config exclude each other: the architecture is the base "
                         "model's")
    tokenizer = load_text_tokenizer(model_section["base_model"], model_section.get("gguf_file"))
    model = MMARForConditionalGeneration.from_text_model(model_section["base_model"], gguf_file=model_section.get(
        "gguf_file"), tokenizer=tokenizer, vae=vae, **kwargs)
    return model, MMARProcessor.from_text_model(tokenizer, model.config)


def build_training_arguments(training_config: dict, output_dir: str | None = None) -> TrainingArguments:
    kwargs = {**TRAINING_DEFAULTS, **(training_config or {})}
    if output_dir is not None:
        kwargs["output_dir"] = output_dir
    if not kwargs.get("output_dir"):
        raise ValueError("training.output_dir is not set (where checkpoints and the trained model go)")
    if kwargs.get("remove_unused_columns"):
        raise ValueError("training.remove_unused_columns must be false: the collator needs the raw image and text")
    kwargs.pop("resume_from_checkpoint", None)  # an argument of Trainer.train, handled by train()
    max_steps, logging_steps = kwargs.get("max_steps", -1), kwargs.get("logging_steps", 500)
    if isinstance(max_steps, int) and max_steps > 0 and isinstance(logging_steps, int) and \
            max_steps < MIN_LOSS_POINTS * logging_steps and logging_steps > 1:
        # A short run (e.g. training.max_steps=20 with the config's logging_steps=50) would draw no loss curve.
        kwargs["logging_steps"] = max(1, max_steps // 20)
        print(f"Logging every {kwargs['logging_steps']} step(s): training.logging_steps={logging_steps} would log "
              f"fewer than {MIN_LOSS_POINTS} points of {max_steps} steps")
    if not torch.accelerator.is_available():
        # A machine without accelerators: say so, which lets bf16 autocast run on CPU and makes several launched
        # processes CPU processes talking over gloo.
        kwargs.setdefault("use_cpu", True)
        if kwargs.get("bf16") and cpu_has_native_bf16() is False:
            print("training.bf16=true on a CPU without native bf16 (no avx512_bf16 / amx_bf16 flag): torch emulates "
                  "bf16 autocast here, about 10x slower than fp32; training.bf16=false trains in fp32")
    return TrainingArguments(**kwargs)


def build_run(config: dict, output_dir: str | None = None) -> TrainingRun:
    """Build tokenizer, model, processor, data, collator and Trainer from a validated config dict."""
    from modeling_mmar import MMARForConditionalGeneration
    from modeling_mmar.convert_text_model_to_mmar import load_vae
    from processors import MMARProcessor

    seed = int(config.get("seed", 0))
    data_config = config.get("data") or {}
    model_section = config.get("model") or {}
    # `data.split_seed` fixes the train / held-out split while `seed` varies (e.g. the ablations' seeds).
    split_seed = int(data_config.get("split_seed", seed))
    train_dataset, eval_dataset, corpus = build_datasets(data_config, model_section.get("image_size", 8), split_seed)
    vae = load_vae(model_section.get("vae"))  # a trained image tokenizer (diffusers folder), or None
    if model_section.get("base_model"):  # a pretrained LLM with its own tokenizer
        if data_config.get("tokenizer"):
            raise ValueError("model.base_model brings its own tokenizer: remove data.tokenizer")
        set_seed(seed)  # the new parts' initial weights depend on the seed only
        model, processor = build_from_text_model(model_section, vae)
        tokenizer, model_config = processor.tokenizer, model.config
    else:
        tokenizer = build_tokenizer_for(data_config, corpus)
        model_config = build_model_config(model_section, tokenizer, vae)
        set_seed(seed)  # the model's initial weights depend on the seed only
        model = MMARForConditionalGeneration(model_config)
        if vae is not None:
            model.model.vae.load_state_dict(vae.state_dict())
        processor = MMARProcessor.from_model_config(model_config, tokenizer=tokenizer)

    collator_config = {**(config.get("collator") or {}), **(config.get("mask_schedule") or {})}
    collator = MMARDataCollator(processor, model_config.tokens_per_image, seed=seed, **collator_config)
    if collator.chat_replay_ratio:  # general chats answered by the (still untrained) model: the base LLM's answers
        from .chat_replay import base_chat_answers

        collator.set_chat_replay(base_chat_answers(model, processor.tokenizer))
        print(f"chat replay: {len(collator.chat_replay)} general questions with the base model's answers")
    if config.get("standardize_head_conditions"):
        standardize_head_conditions(model, collator, train_dataset, seed)
    stage_callback = MaskStageCallback(collator)
    # Held-out losses: the final stage's masking, one fixed draw per row (epoch 0, a different seed).
    eval_collator = MMARDataCollator(processor, model_config.tokens_per_image, seed=seed + 1, **{
        **collator_config, "mask_ratio_min": collator.mask_ratio_min_at(math.inf), "stage2_start_step": None})
    eval_collator.set_chat_replay(collator.chat_replay)

    args = build_training_arguments(config.get("training"), output_dir)
    if data_config.get("cache_image_tokens"):  # the frozen image tokenizer runs once per image, not every step
        train_dataset = add_image_tokens(train_dataset, model, processor)
        if eval_dataset is not None and args.eval_strategy != "no":
            eval_dataset = add_image_tokens(eval_dataset, model, processor)
    time_budget = TimeBudgetCallback(config.get("time_budget"))
    choose_fsdp_units(model)  # decoder layers only: the diffusion head as a unit of its own deadlocks
    use_fsdp_on_cpu_processes()  # accelerate would train DDP on CPU processes when FSDP is asked for
    trainer = MMARTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if args.eval_strategy != "no" else None,
        data_collator=RowSeedCollator(collator),  # + one diffusion-noise seed per row
        eval_data_collator=RowSeedCollator(eval_collator),
        processing_class=processor,
        callbacks=[stage_callback, time_budget, CpuThreadsCallback()],
        pretrained_learning_rate=config.get("pretrained_learning_rate"),
        forward_per_task=bool(config.get("forward_per_task", False)),
    )
    return TrainingRun(config, tokenizer, model, processor, train_dataset, eval_dataset, collator, trainer,
                       time_budget)


HEAD_STATISTICS_ROWS = 64  # training rows whose masked image positions set the head's condition statistics


def standardize_head_conditions(model, collator, train_dataset, seed: int) -> None:
    """`model.standardize_head_conditions` on a batch of HEAD_STATISTICS_ROWS random training rows as the collator
    makes them (the collator's draws depend on the row, not on the call: training sees the same rows unchanged)."""
    rows = np.random.default_rng(seed).choice(len(train_dataset), size=min(HEAD_STATISTICS_ROWS, len(train_dataset)),
                                              replace=False)
    batch = collator([train_dataset[int(i)] for i in rows])
    mmar = _mmar_model(model)
    count = mmar.standardize_head_conditions(**batch)
    std = mmar.diffusion_head.condition_std
    print(f"diffusion head: conditions standardised per dimension on {count} masked image states (standard "
          f"deviations {float(std.min()):.3g} to {float(std.max()):.3g})")


def save_trained(run: TrainingRun, output_dir: str | Path) -> None:
    """One folder that `AutoModelForImageTextToText`, `AutoProcessor` and `MMARPipeline` all load: model and
    processor at the top (transformers layout), the scheduler in `scheduler/`, and the pipeline's
    `model_index.json` (diffusers loads a component from the top folder when it has no subfolder of its own).
    Beside them: `log_history.json` and `loss.png`. Only the main process writes."""
    from modeling_mmar import MMARPipeline, default_sampling_scheduler

    run.trainer.save_model(str(output_dir))  # every process: sharded engines gather the weights
    if not run.trainer.is_world_process_zero():
        return
    # Trainer pickles its arguments beside the weights; a folder meant to be loaded and published holds
    # safetensors and JSON only (checkpoints keep the pickle Trainer needs to resume).
    Path(output_dir, "training_args.bin").unlink(missing_ok=True)
    Path(output_dir, "training_args.json").write_text(run.trainer.args.to_json_string(), encoding="utf-8")
    scheduler = default_sampling_scheduler(run.model.config)  # the fast sampler the pipeline then defaults to
    scheduler.save_pretrained(os.path.join(output_dir, "scheduler"))
    MMARPipeline(model=run.model, processor=run.processor, scheduler=scheduler).save_config(str(output_dir))
    history = run.trainer.state.log_history
    with open(os.path.join(output_dir, "log_history.json"), "w", encoding="utf-8") as f:
        json.dump(history, f, indent=1)
    if any("loss" in entry for entry in history):
        plot_loss(history, os.path.join(output_dir, "loss.png"))


def record_engine_and_memory(trainer) -> None:
    """The engine that trained, how many parameters it sharded and the peak memory of every process (MiB: accelerator
    allocation, else RSS), printed by the main process and kept in the run summary of the log history (`engine`,
    `num_processes`, `sharded_parameters` [sharded, all], `peak_memory_mib_per_process`)."""
    local = torch.tensor([peak_memory_mib()], dtype=torch.float64, device=trainer.args.device)
    values = [round(v, 1) for v in trainer.accelerator.gather(local).tolist()]
    engine = engine_in_use(trainer)
    sharded, total = sharded_parameter_count(trainer)
    summary = next((e for e in reversed(trainer.state.log_history) if "train_runtime" in e), None)
    if summary is not None:
        summary.update(engine=engine, num_processes=trainer.accelerator.num_processes,
                       peak_memory_mib_per_process=values, sharded_parameters=[sharded, total])
    if trainer.is_world_process_zero():
        print(f"Trained with {engine} on {trainer.accelerator.num_processes} process(es), {sharded} of {total} "
              f"parameters sharded; peak memory per process: {', '.join(f'{v:.0f} MiB' for v in values)}")


def train(config: dict, output_dir: str | None = None, resume_from_checkpoint: str | bool | None = None) -> TrainingRun:
    """Build a run from `config`, train it, save model / processor / scheduler / loss.png into the output dir."""
    # engine installed, world size divides a split batch, one process for forward_per_task: before anything runs
    check_launch(config.get("training"), forward_per_task=bool(config.get("forward_per_task", False)))
    run = build_run(config, output_dir)
    if resume_from_checkpoint is None:
        resume_from_checkpoint = (config.get("training") or {}).get("resume_from_checkpoint")
    if resume_from_checkpoint is True:
        resume_from_checkpoint = newest_complete_checkpoint(run.trainer.args.output_dir)
    elif resume_from_checkpoint:
        check_complete_checkpoint(resume_from_checkpoint)
    if resume_from_checkpoint:
        check_resume(resume_from_checkpoint)  # the engine and world size can resume what wrote it
    if resume_from_checkpoint and run.trainer.is_world_process_zero():
        print(f"Resuming from {resume_from_checkpoint}")
    run.trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
    record_engine_and_memory(run.trainer)
    if run.trainer.is_world_process_zero():
        print(run.time_budget.summary(run.trainer.state))
    losses = [entry["loss"] for entry in run.trainer.state.log_history if "loss" in entry]
    if losses and not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"Training diverged: non-finite loss in the log ({losses[-5:]})")
    save_trained(run, run.trainer.args.output_dir)
    run.trainer.accelerator.wait_for_everyone()  # no process leaves while the main one still writes the folder
    return run


# ------------------------------------------------------------------------------------------------ command line
def run_train_command(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    run = train(config, output_dir=args.output_dir)
    if run.trainer.is_world_process_zero():
        print(f"Saved model, processor and scheduler to {run.trainer.args.output_dir}")
    if run.trainer.accelerator.num_processes > 1:
        # Close the process group before the interpreter exits: left to exit, a DeepSpeed ZeRO-3 process was seen
        # aborting ("terminate called without an active exception"), which fails the whole launch.
        run.trainer.accelerator.end_training()
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import main as mmar

    return mmar(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # accelerate launch -m training.train --config ...
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The folder is saved and the process group closed. A DeepSpeed ZeRO-3 worker was still seen aborting in C++
        # destructors at interpreter exit ("terminate called without an active exception", SIGABRT), which fails the
        # whole launch: leave without running them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
