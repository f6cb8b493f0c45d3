"""Training on more than one process (accelerate's DDP, FSDP and DeepSpeed engines).

What makes N processes train what one process trains over the same global batch:
- `global_batch_loss`: each loss part is divided by its count over *all* processes (text CE by the label tokens,
  diffusion MSE by the masked image tokens), not by each process's own count, so that the gradient the engine
  averages over processes is the gradient of the global batch's loss. (Each process's own mean would weigh a
  process holding 3 label tokens like one holding 300.)
- `every_parameter_gets_a_gradient`: every trainable parameter gets a gradient on every process at every step, zero
  where its part of the model had nothing to do (a process whose rows are all understanding rows has no diffusion
  loss; one whose rows are all generation rows has no text loss). DDP otherwise needs find_unused_parameters, and the
  sharded engines reduce gradients in collectives that all processes must enter with the same tensors: FSDP2
  reduce-scatters per unit the parameters that have a gradient, DeepSpeed ZeRO buckets them, and a mismatch hangs or
  aborts ("Received data size doesn't match expected size" from gloo under ZeRO-2).
- `row_noise.py`: the diffusion noise of a row comes from the row's own seed (it otherwise depends on the batch): the
  model's `forward(generator=[...])` takes one generator per image.

Checks made before any process builds a model (`check_launch`): the engine the accelerate config names is installed,
and with `training.accelerator_config.split_batches` (one global batch split over the processes) the world size
divides the batch.

accelerate (1.16) enables FSDP only for accelerator devices: on CPU processes it trains with DDP instead, silently.
`use_fsdp_on_cpu_processes` asks it for its FSDP path there too (gloo), so that FSDP can be checked without GPUs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
from pathlib import Path

import torch

# Files and folders an engine writes into a checkpoint in place of (or beside) model.safetensors.
ENGINE_CHECKPOINT_WEIGHTS = ("pytorch_model_fsdp.bin", "pytorch_model_fsdp_0", "latest")


def _flag(env, name: str) -> bool:
    return str(env.get(name, "false")).lower() in ("1", "true", "yes")


def requested_engine(env=None) -> str | None:
    """'deepspeed', 'fsdp' or 'ddp' as the launcher asked (accelerate launch passes its config as environment
    variables), None for a single process started without a launcher."""
    env = os.environ if env is None else env
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _flag(env, "ACCELERATE_USE_FSDP"):
        return "fsdp"
    if int(env.get("WORLD_SIZE", "1") or 1) > 1:
        return "ddp"
    return None


def launched_world_size(env=None) -> int:
    env = os.environ if env is None else env
    return max(int(env.get("WORLD_SIZE", "1") or 1), 1)


def engine_is_installed(engine: str) -> bool:
    if engine == "deepspeed":
        return importlib.util.find_spec("deepspeed") is not None
    if engine == "fsdp":
        return importlib.util.find_spec("torch.distributed.fsdp") is not None and torch.distributed.is_available()
    return torch.distributed.is_available()


def check_launch(training_config: dict | None, env=None, forward_per_task: bool = False) -> None:
    """Refuse, before anything is built, a launch that cannot train what its configs say."""
    env = os.environ if env is None else env
    training_config = training_config or {}
    if forward_per_task and launched_world_size(env) > 1:  # DDP, FSDP and DeepSpeed expect one forward per backward
        raise ValueError(f"forward_per_task runs two forwards per step, which {launched_world_size(env)} processes "
                         "cannot share: set forward_per_task=false or launch one process")
    engine = requested_engine(env)
    if engine is not None and not engine_is_installed(engine):
        package = {"deepspeed": "deepspeed", "fsdp": "torch with torch.distributed",
                   "ddp": "torch with torch.distributed"}[engine]
        raise ValueError(f"The accelerate config asks for {engine.upper()} but {package} is not installed: "
                         f"pip install {'deepspeed' if engine == 'deepspeed' else 'torch'}, or launch with "
                         "training/configs/accelerate/ddp.yaml")
    world = launched_world_size(env)
    accelerator_config = training_config.get("accelerator_config") or {}
    if isinstance(accelerator_config, dict) and accelerator_config.get("split_batches"):
        batch = training_config.get("per_device_train_batch_size", 8)
        if world > 1 and batch % world:
            raise ValueError(
                f"training.accelerator_config.split_batches splits each batch of "
                f"training.per_device_train_batch_size={batch} rows over the {world} processes, but {world} does "
                f"not divide {batch}: choose a batch size that is a multiple of {world} or launch "
                f"{', '.join(str(n) for n in range(1, batch + 1) if batch % n == 0)} processes")


def checkpoint_engine(folder) -> tuple[str, int | None]:
    """('deepspeed', processes that wrote it) for a DeepSpeed checkpoint (its ZeRO partitions), ('fsdp', None) for an
    FSDP one (sharded or full state dict), ('plain', None) for a single-process or DDP one."""
    folder = Path(folder)
    if (folder / "latest").is_file() or any(folder.glob("global_step*")):
        partitions = {p.name for p in folder.glob("global_step*/*zero_pp_rank_*_optim_states.pt")}
        return "deepspeed", len(partitions) or None
    if (folder / "pytorch_model_fsdp.bin").exists() or (folder / "pytorch_model_fsdp_0").is_dir():
        return "fsdp", None
    return "plain", None


def check_resume(folder, env=None) -> None:
    """A checkpoint resumes under the engine that wrote it: DeepSpeed's with DeepSpeed on as many processes (ZeRO
    partitions its optimizer state by process and cannot re-partition it), FSDP's with FSDP (any number of processes:
    sharded checkpoints are re-sharded on load), DDP / single-process ones without a sharded engine (any number)."""
    env = os.environ if env is None else env
    written_by, processes = checkpoint_engine(folder)
    engine = requested_engine(env) or "single process"
    world = launched_world_size(env)
    name = Path(folder).name
    if written_by == "deepspeed" and engine != "deepspeed":
        raise ValueError(f"{name} is a DeepSpeed checkpoint: resume it with the DeepSpeed accelerate config "
                         f"(its weights alone are in {name}/model.safetensors)")
    if written_by == "deepspeed" and processes and processes != world:
        raise ValueError(f"{name} was written by DeepSpeed on {processes} processes; DeepSpeed cannot resume its "
                         f"partitioned optimizer state on {world}: launch --num_processes {processes}")
    if written_by == "fsdp" and engine != "fsdp":
        raise ValueError(f"{name} is an FSDP checkpoint: resume it with the FSDP accelerate config (any number of "
                         "processes)")
    if written_by == "plain" and engine in ("fsdp", "deepspeed"):
        raise ValueError(f"{name} was written without a sharded engine (single process or DDP): resume it without "
                         f"{'FSDP' if engine == 'fsdp' else 'DeepSpeed'} (any number of processes)")


def use_fsdp_on_cpu_processes() -> bool:
    """When the launcher asks for FSDP on a machine without accelerators, make accelerate take its FSDP path on the
    CPU processes (gloo) instead of falling back to DDP. Call after TrainingArguments (which starts the process
    group) and before the Trainer (which builds the Accelerator). Returns whether it did."""
    if requested_engine() != "fsdp" or torch.accelerator.is_available():
        return False
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if AcceleratorState._shared_state:  # an Accelerator exists already: too late to choose its engine
        raise RuntimeError("use_fsdp_on_cpu_processes must run before the Trainer builds its Accelerator")
    state = PartialState()
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    # accelerate's AcceleratorState turns FSDP on for its multi-device types only; MULTI_CPU is not among them.
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return True


def choose_fsdp_units(model, env=None) -> list[str] | None:
    """FSDP units for MMAR: the language model's decoder layers (its `_no_split_modules`) and nothing else, set as
    accelerate's `FSDP_TRANSFORMER_CLS_TO_WRAP` when the launch asks for FSDP with TRANSFORMER_BASED_WRAP and names
    no classes. The diffusion head and the image embedder stay in the root unit: the head's backward runs at a point
    of the backward pass that depends on the rows a process holds (before or after the LM head's), so as a unit of
    its own its reduce-scatter and the next unit's all-gather are entered in different orders on different processes
    and both wait forever (seen with gloo on the first step whose processes held different kinds of rows). Inside
    the root unit the head has no collective of its own. Returns the classes set, None when it left the config."""
    env = os.environ if env is None else env
    if requested_engine(env) != "fsdp" or env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP") != \
            "TRANSFORMER_BASED_WRAP":
        return None
    named = [name.strip() for name in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if name.strip()]
    if "MMARDiffusionHead" in named:
        raise ValueError("fsdp_transformer_layer_cls_to_wrap names MMARDiffusionHead: as an FSDP unit of its own the "
                         "diffusion head deadlocks as soon as two processes hold different kinds of rows (its "
                         "backward runs at a different point of each process's backward pass); leave it out and "
                         "it stays in the root unit")
    if named:
        return None
    language_model = model.model.language_model
    classes = sorted(set(getattr(language_model, "_no_split_modules", None) or []))
    if not classes:
        raise ValueError(f"{type(language_model).__name__} names no _no_split_modules: set "
                         "fsdp_transformer_layer_cls_to_wrap in the accelerate config to its decoder layer class")
    env["FSDP_TRANSFORMER_CLS_TO_WRAP"] = ",".join(classes)
    return classes


# ------------------------------------------------------------------------------------------------ the loss
def loss_part_counts(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(label tokens the text CE averages over, masked image tokens the diffusion MSE averages over) of a batch."""
    labels, image_mask = inputs.get("labels"), inputs.get("image_mask")
    device = (labels if labels is not None else image_mask).device
    text = (labels[:, 1:] != -100).sum() if labels is not None else torch.zeros((), device=device)
    image = image_mask.sum() if image_mask is not None else torch.zeros((), device=device)
    return text.to(torch.float64), image.to(torch.float64)


def global_batch_loss(outputs, inputs: dict, config, num_processes: int, reduce_sum,
                      totals: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """This process's share of the global batch's loss, times `num_processes` (the engines average gradients over
    processes): text_loss_weight * text_loss * n_text / N_text + image_loss_weight * image_loss * n_image / N_image,
    with n this process's counts and N their sums over processes (`reduce_sum`). With one process it is the model's
    loss.

    Also returns each part's share of the global mean, {name: (share, count_share)}: summed over processes they give
    the part's mean over the global batch and 1 (0 when no process had that part).

    `totals`, when `inputs` is one part of this process's batch (training/task_forwards.py): the whole batch's counts
    N, already summed over processes.
    """
    counts = torch.stack(loss_part_counts(inputs))
    if totals is None:
        totals = reduce_sum(counts.clone()) if num_processes > 1 else counts
    weights = {"text_loss": float(getattr(config, "text_loss_weight", 1.0)),
               "image_loss": float(getattr(config, "image_loss_weight", 1.0))}
    loss, shares = None, {}
    for (name, weight), count, total in zip(weights.items(), counts, totals):
        value = outputs.get(name)
        if value is None:  # no row of this kind here and no placeholder (the hook gives one in training)
            shares[name] = (torch.zeros((), dtype=torch.float64, device=counts.device),
                            (total > 0).to(torch.float64) / num_processes)
            continue
        fraction = (count / total.clamp(min=1)).to(value.dtype)
        term = weight * value * fraction * num_processes
        loss = term if loss is None else loss + term
        shares[name] = (value.detach().double() * fraction.double(), (total > 0).to(torch.float64) / num_processes)
    if loss is None:
        loss = outputs["loss"]
    return loss, shares


def check_loss_composition(outputs, config) -> None:
    """The model's loss must be text_loss_weight * text_loss + image_loss_weight * image_loss (what
    `global_batch_loss` rebuilds)."""
    text, image = outputs.get("text_loss"), outputs.get("image_loss")
    if text is None and image is None:
        return
    rebuilt = sum(float(getattr(config, f"{name}_weight", 1.0)) * float(value.detach())
                  for name, value in (("text_loss", text), ("image_loss", image)) if value is not None)
    loss = float(outputs["loss"].detach())
    if abs(rebuilt - loss) > 1e-4 * max(1.0, abs(rebuilt)):
        raise RuntimeError(f"The model's loss {loss:.6g} is not text_loss_weight * text_loss + image_loss_weight * "
                           f"image_loss = {rebuilt:.6g}: training.distributed.global_batch_loss must learn the "
                           "model's loss weighting")


def every_parameter_gets_a_gradient(model) -> None:
    """A forward hook on an MMARForConditionalGeneration (inside its forward, so that DDP's graph sees it): in
    training, a forward whose rows give no diffusion loss runs the diffusion head on one zero token, and one whose
    rows give no text loss sums the logits; each becomes that part's `image_loss` / `text_loss`, times 0, and joins
    the loss. Every trainable parameter then gets a (zero) gradient, and every process's forward returns the same
    loss tensors: DeepSpeed ZeRO-3 records the modules each backward passes through (the model's own output
    tensors included) and requires the same record on every process. `global_batch_loss` weighs a part by its row
    count, 0 here, so these placeholders never count as a loss. Registered once per model."""
    if getattr(model, "_mmar_gradient_coverage", False):
        return

    def add_zero_parts(module, args, kwargs, output):
        if not (module.training and torch.is_grad_enabled()) or not isinstance(output, dict):
            return None
        if output.get("loss") is None or output.get("logits") is None:
            return None
        logits, loss = output["logits"], output["loss"]
        if output.get("image_loss") is None:
            head = module.diffusion_head
            hidden = module.config.get_text_config().hidden_size
            # The model's own diffusion loss on one zero token, so that the head's modules run in the order of a real
            # step (ZeRO-3 requires the same record on every process; the head cannot take an empty batch). Its
            # condition requires a gradient as an LLM state does (ZeRO-3 records which modules' inputs do); the
            # dtype comes from the parameter object (attribute access, head.input_proj.weight, would make ZeRO-3
            # gather that weight on this process only), the draws from a fixed generator (the global RNG stays as
            # it is on the processes that had image rows).
            dtype = next(head.parameters()).dtype
            condition = logits.new_zeros(1, hidden, dtype=dtype).requires_grad_()
            token = logits.new_zeros(1, head.token_dim, dtype=dtype)
            condition = head.add_boi_states(condition, condition)  # boi_condition: its projection runs too
            placeholder = 0.0 * module.diffusion_loss(condition, token, generator=torch.Generator().manual_seed(0))
            output["image_loss"] = placeholder
            loss = loss + placeholder
        if output.get("text_loss") is None:
            placeholder = 0.0 * logits.float().sum()
            output["text_loss"] = placeholder
            loss = loss + placeholder
        output["loss"] = loss
        return output

    model.register_forward_hook(add_zero_parts, with_kwargs=True)
    model._mmar_gradient_coverage = True


# ------------------------------------------------------------------------------------------------ saving
@contextlib.contextmanager
def plain_model_class(model):
    """FSDP2 turns a module's class into a subclass defined in torch (FSDPMMARForConditionalGeneration); saved as
    such, transformers writes that class into the folder's auto_map and copies torch's FSDP sources as the model's
    remote code. Inside this block the model has its own class again (no FSDP hook runs during save_pretrained when
    it is given the state dict)."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if isinstance(model, FSDPModule):
        model.__class__ = next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = cls


def save_gathered_model(trainer, output_dir: str) -> None:
    """Save an FSDP-sharded model as a plain `save_pretrained` folder: every process takes part in gathering the full
    weights, the main process writes them (without the tied copies of a tied LM head, as a single process would),
    the processor and the training arguments (as `Trainer.save_model` does)."""
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if not trainer.is_world_process_zero():
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if target in state_dict and source in state_dict:
            state_dict.pop(target)
    os.makedirs(output_dir, exist_ok=True)
    with plain_model_class(model):
        model.save_pretrained(output_dir, state_dict=state_dict)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    torch.save(trainer.args, os.path.join(output_dir, "training_args.bin"))


# ------------------------------------------------------------------------------------------------ reporting
def engine_in_use(trainer) -> str:
    """What actually trained: 'FSDP2', 'FSDP1', 'DeepSpeed ZeRO-N', 'DDP' or 'single process' (read from the
    accelerator and the wrapped model, not from the launch: accelerate may fall back to another engine)."""
    accelerator = trainer.accelerator
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind == "FSDP":
        from torch.distributed.fsdp import FSDPModule

        version = getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1)
        sharded = isinstance(trainer.model_wrapped, FSDPModule) or version == 1
        return f"FSDP{version}" if sharded else f"FSDP{version} (model not sharded)"
    if kind == "DEEPSPEED":
        stage = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
        return f"DeepSpeed ZeRO-{stage}"
    if accelerator.num_processes > 1:
        return "DDP"
    return "single process"


def sharded_parameter_count(trainer) -> tuple[int, int]:
    """(parameters this process holds only a shard of, all parameters): FSDP2's DTensors, or DeepSpeed ZeRO-3's
    partitioned parameters (ZeRO-3 keeps parameters smaller than its persistence threshold whole on every process)."""
    params = list(trainer.accelerator.unwrap_model(trainer.model_wrapped).parameters())
    if hasattr(trainer.model_wrapped, "zero_optimization_partition_weights") and \
            trainer.model_wrapped.zero_optimization_partition_weights():
        return sum(1 for p in params if not getattr(p, "ds_persist", True)), len(params)
    from torch.distributed.tensor import DTensor

    return sum(1 for p in params if isinstance(p, DTensor)), len(params)


def peak_memory_mib() -> float:
    """This process's peak memory: the accelerator's peak allocation where there is one, else the peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def is_engine_checkpoint(folder: Path) -> bool:
    return any((Path(folder) / name).exists() for name in ENGINE_CHECKPOINT_WEIGHTS)


__all__ = ["check_launch", "check_resume", "checkpoint_engine", "choose_fsdp_units", "engine_in_use", "check_loss_composition", "every_parameter_gets_a_gradient", "global_batch_loss",
           "is_engine_checkpoint", "launched_world_size", "peak_memory_mib", "plain_model_class", "requested_engine",
           "save_gathered_model", "sharded_parameter_count",
           "use_fsdp_on_cpu_processes"]
