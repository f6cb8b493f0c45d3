"""MMARDataCollator: turns dataset rows into MMAR training batches (task mix, image masking, CFG caption dropout).

Each row becomes ONE of two samples (sequence conventions fixed with the processor and the sampler):

- understanding (image -> text): `<bos><img>{question} {answer}<eos>`; the image is fully visible and only
  ` {answer}<eos>` carries labels. With `chat_template=True` the row is a chat conversation in the processor's
  chat template instead (a user turn with the image and the question, the assistant's answer), and the assistant
  turn carries the labels: what a pretrained chat LLM (`MMARProcessor.from_text_model`) reads. With
  `chat_replay_ratio` > 0 that share of understanding rows asks one of the `set_chat_replay` questions (general
  questions with the base LLM's own answers, `training.chat_replay`) about the row's image instead.
- generation (text -> image): `<bos>{caption}<img><eos>`; a random subset of the image's tokens is masked
  (True in `image_mask`) and gets the diffusion loss; no text labels. With probability `caption_dropout` the
  caption is the empty prompt, which trains the unconditional branch of classifier-free guidance.

Task balance: `understanding_ratio` is the share of understanding rows. `task_mix="row"` draws each row's task
independently; `task_mix="batch"` makes every batch hold exactly round(ratio * batch size) understanding rows (the
rows with the smallest task draws), so that both losses are present in every step. The text loss comes from the
understanding rows only and the image loss from the generation rows only: their weights (`MMARConfig`
`text_loss_weight`, `image_loss_weight`) are the per-task loss weights, and the trainer logs them separately.

Mask ratio (MAR / MMAR): r ~ normal(mean, std) truncated to [mask_ratio_min, 1]; the first ceil(L * r) tokens of a
random permutation are masked. MMAR trains in two stages: ratios in [mask_ratio_min, 1] (0.7) first, then from
`stage2_start_step` in [stage2_mask_ratio_min, 1] (0.0), so that the model also learns to fill the last few tokens
of an almost complete image. The collator owns this policy; `MaskStageCallback` only tells it the step and epoch.

Randomness is per row, from `numpy.random.default_rng([seed, epoch, sample_index])`: the same row in the same
epoch is always processed the same way, whatever the batch, the worker, the process or a resumed run. Rows
without a `sample_index` fall back to a per-worker generator (reproducible, but not across resumption).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtr, ndtri

from .data import decode_image
from .image_token_cache import IMAGE_TOKENS_COLUMN

IGNORE_INDEX = -100
TASK_MIXES = ("row", "batch")


@dataclass
class SamplePlan:
    """What the collator decided for one row."""

    understanding: bool
    text: str
    answer_suffix: str | None  # understanding: the labelled tail of `text`
    image_mask: np.ndarray  # bool [tokens_per_image]


class MMARDataCollator:
    def __init__(
        self,
        processor,
        tokens_per_image: int,
        understanding_ratio: float = 0.5,
        mask_ratio_min: float = 0.7,
        mask_ratio_mean: float = 1.0,
        mask_ratio_std: float = 0.25,
        caption_dropout: float = 0.1,
        seed: int = 0,
        stage2_start_step: int | None = None,
        stage2_mask_ratio_min: float = 0.0,
        task_mix: str = "row",
        chat_template: bool = False,
        chat_replay_ratio: float = 0.0,
    ):
        for name, value in (("understanding_ratio", understanding_ratio), ("caption_dropout", caption_dropout),
                            ("chat_replay_ratio", chat_replay_ratio)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"MMARDataCollator {name} must be in [0, 1], got {value}")
        if mask_ratio_std <= 0:
            raise ValueError(f"MMARDataCollator mask_ratio_std must be > 0, got {mask_ratio_std}")
        if stage2_start_step is not None and stage2_start_step < 0:
            raise ValueError(f"MMARDataCollator stage2_start_step must be >= 0 or None, got {stage2_start_step}")
        if task_mix not in TASK_MIXES:
            raise ValueError(f"MMARDataCollator task_mix must be one of {TASK_MIXES}, got {task_mix!r}")
        if chat_template and not getattr(processor, "chat_template", None):
            raise ValueError("MMARDataCollator chat_template=True needs a processor with a chat template")
        if chat_replay_ratio and not chat_template:
            raise ValueError("MMARDataCollator chat_replay_ratio > 0 replays chats: it needs chat_template=True")
        if tokens_per_image < 1:
            raise ValueError(f"MMARDataCollator tokens_per_image must be >= 1, got {tokens_per_image}")
        processor_tokens = getattr(processor, "num_image_tokens", tokens_per_image)
        if processor_tokens != tokens_per_image:
            raise ValueError(
                f"The processor expands its image token to {processor_tokens} tokens but tokens_per_image={tokens_per_image}; "
                "build the processor from the model config (MMARProcessor.from_model_config)"
            )
        self.processor = processor
        self.tokens_per_image = tokens_per_image
        self.understanding_ratio = understanding_ratio
        self.mask_ratio_mean = mask_ratio_mean
        self.mask_ratio_std = mask_ratio_std
        self.mask_ratio_min = mask_ratio_min  # validated by the property setter; the current stage's value
        self.stage1_mask_ratio_min = self.mask_ratio_min
        self.stage2_start_step = stage2_start_step
        self.stage2_mask_ratio_min = stage2_mask_ratio_min
        self.mask_ratio_min_at(0)  # validates stage2_mask_ratio_min
        self.caption_dropout = caption_dropout
        self.task_mix = task_mix
        self.chat_template = chat_template
        self.chat_replay_ratio = chat_replay_ratio
        self.chat_replay: list[tuple[str, str]] = []
        self._chat_texts: dict[tuple[str, str], tuple[str, str]] = {}
        self.seed = seed
        self.epoch = 0
        self._fallback_rngs: dict[int, np.random.Generator] = {}

    # ------------------------------------------------------------------ policy knobs
    @property
    def mask_ratio_min(self) -> float:
        return self._mask_ratio_min

    @mask_ratio_min.setter
    def mask_ratio_min(self, value: float):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"MMARDataCollator mask_ratio_min must be in [0, 1], got {value}")
        self._mask_ratio_min = float(value)
        # scipy.stats.truncnorm(a, b, loc=mean, scale=std) with a, b the bounds in standard units, sampled by its
        # inverse CDF: the same distribution, without truncnorm.rvs' ~1 ms of overhead per call.
        low = (value - self.mask_ratio_mean) / self.mask_ratio_std
        high = (1.0 - self.mask_ratio_mean) / self.mask_ratio_std
        self._ratio_cdf_bounds = (float(ndtr(low)), float(ndtr(high)))

    def mask_ratio_min_at(self, step: int | float) -> float:
        """The lower bound of the mask ratio at optimizer step `step` (`math.inf`: the final stage's)."""
        if not 0.0 <= self.stage2_mask_ratio_min <= 1.0:
            raise ValueError(f"MMARDataCollator stage2_mask_ratio_min must be in [0, 1], got {self.stage2_mask_ratio_min}")
        if self.stage2_start_step is not None and step >= self.stage2_start_step:
            return float(self.stage2_mask_ratio_min)
        return self.stage1_mask_ratio_min

    def set_step(self, step: int | float):
        """Move to the masking stage of optimizer step `step` (MaskStageCallback calls it)."""
        self.mask_ratio_min = self.mask_ratio_min_at(step)

    def set_epoch(self, epoch: int):
        """Called at each epoch start (MaskStageCallback): rows are re-masked differently every epoch."""
        self.epoch = int(epoch)

    @property
    def image_token(self) -> str:
        return self.processor.image_token

    @property
    def eos_token(self) -> str:
        return self.processor.tokenizer.eos_token or ""

    # ------------------------------------------------------------------ randomness
    def _row_rng(self, example: dict) -> np.random.Generator:
        index = example.get("sample_index")
        if index is not None:
            return np.random.default_rng([self.seed, self.epoch, int(index)])
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else -1
        if worker_id not in self._fallback_rngs:  # each worker process gets its own stream
            self._fallback_rngs[worker_id] = np.random.default_rng([self.seed, worker_id + 1, 2**31])
        return self._fallback_rngs[worker_id]

    def sample_mask_ratio(self, rng: np.random.Generator) -> float:
        """r ~ normal(mask_ratio_mean, mask_ratio_std) truncated to [mask_ratio_min, 1]."""
        cdf_low, cdf_high = self._ratio_cdf_bounds
        ratio = self.mask_ratio_mean + self.mask_ratio_std * ndtri(cdf_low + rng.random() * (cdf_high - cdf_low))
        return float(min(max(ratio, self.mask_ratio_min), 1.0))

    def sample_image_mask(self, rng: np.random.Generator) -> np.ndarray:
        """Mask the first ceil(L * r) tokens of a random permutation of the image's L tokens."""
        length = self.tokens_per_image
        ratio = self.sample_mask_ratio(rng)
        order = rng.permutation(length)
        mask = np.zeros(length, dtype=bool)
        mask[order[: math.ceil(length * ratio)]] = True
        return mask

    def plan(self, example: dict, understanding: bool | None = None, rng: np.random.Generator | None = None
             ) -> SamplePlan:
        """Decide task, text and image mask for one row (the fixed order of random draws keeps it reproducible).
        `understanding` and `rng` are given by `plan_batch` when the task mix is decided per batch."""
        if rng is None:
            rng = self._row_rng(example)
            task_draw = rng.random()
        if understanding is None:
            understanding = bool(task_draw < self.understanding_ratio)
        eos = self.eos_token
        if understanding:
            question, answer = example.get("question") or "", example.get("answer")
            if answer is None:
                answer = example["caption"]
            if self.chat_replay_ratio and rng.random() < self.chat_replay_ratio:
                if not self.chat_replay:
                    raise ValueError("chat_replay_ratio > 0 but no replay chats were given: call set_chat_replay")
                question, answer = self.chat_replay[int(rng.integers(len(self.chat_replay)))]
            if self.chat_template:
                text, suffix = self._chat_text(question, answer)
                return SamplePlan(True, text, suffix, np.zeros(self.tokens_per_image, dtype=bool))
            suffix = f" {answer}{eos}" if question else f"{answer}{eos}"
            return SamplePlan(True, f"{self.image_token}{question}{suffix}", suffix,
                              np.zeros(self.tokens_per_image, dtype=bool))
        drop_caption = bool(rng.random() < self.caption_dropout)
        caption = "" if drop_caption else example["caption"]
        return SamplePlan(False, f"{caption}{self.image_token}{eos}", None, self.sample_image_mask(rng))

    def plan_batch(self, examples: list[dict]) -> list[SamplePlan]:
        """`plan` for every row; with `task_mix="batch"` exactly round(understanding_ratio * rows) rows, those with
        the smallest task draws, are understanding rows."""
        if self.task_mix == "row":
            return [self.plan(example) for example in examples]
        rngs = [self._row_rng(example) for example in examples]
        draws = np.array([rng.random() for rng in rngs])
        count = int(round(self.understanding_ratio * len(examples)))
        understanding = np.zeros(len(examples), dtype=bool)
        understanding[np.argsort(draws, kind="stable")[:count]] = True
        return [self.plan(example, bool(task), rng) for example, task, rng in zip(examples, understanding, rngs)]

    def set_chat_replay(self, pairs: list[tuple[str, str]]) -> None:
        """The (question, answer) chats that `chat_replay_ratio` of the understanding rows ask about their image."""
        self.chat_replay = [(str(question), str(answer)) for question, answer in pairs]

    def _chat_text(self, question: str, answer: str) -> tuple[str, str]:
        """(whole conversation, the assistant turn that carries the labels) in the processor's chat template."""
        key = (question, answer)
        if key not in self._chat_texts:
            user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            assistant = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
            prompt = self.processor.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
            whole = self.processor.apply_chat_template(user + assistant, tokenize=False)
            if not whole.startswith(prompt) or len(whole) == len(prompt):
                raise ValueError("The processor's chat template does not render a conversation as its prompt "
                                 "(add_generation_prompt=True) followed by the assistant's turn: chat_template=True "
                                 "cannot find the answer to label")
            self._chat_texts[key] = (whole, whole[len(prompt):])
        return self._chat_texts[key]

    # ------------------------------------------------------------------ batching
    @staticmethod
    def _check_rows(example: dict) -> None:
        """Rows must be raw (image, caption) rows: trl's SFTTrainer tokenizes datasets itself unless told not to."""
        missing = [key for key in ("image", "caption") if key not in example and not (
            key == "caption" and "answer" in example)]
        if missing:
            raise ValueError(
                f"MMARDataCollator needs raw rows with 'image' and 'caption' columns; this row has "
                f"{sorted(example)} (missing {missing}). With trl, use training.finetune.MMARSFTTrainer (or "
                "build_trainer('sft', ...)), which keeps the raw rows (SFTConfig(remove_unused_columns=False, "
                "dataset_kwargs={'skip_prepare_dataset': True})) and optimises the diffusion loss too"
            )

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("MMARDataCollator got an empty batch")
        self._check_rows(examples[0])
        plans = self.plan_batch(examples)
        images = [
            decode_image(example["image"], where=f"row sample_index={example.get('sample_index')}")
            for example in examples
        ]
        batch = self.processor(
            text=[p.text for p in plans], images=images, padding=True, padding_side="right", return_tensors="pt"
        )
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        answer_ids = self.processor.tokenizer(
            [p.answer_suffix or "" for p in plans], add_special_tokens=False
        )["input_ids"]
        lengths = attention_mask.sum(dim=1).tolist()
        for row, (p, ids) in enumerate(zip(plans, answer_ids)):
            if not p.understanding:
                continue
            end = lengths[row]  # right padding: the row's real tokens are [0, end)
            start = end - len(ids)
            if input_ids[row, start:end].tolist() != list(ids):
                raise ValueError(
                    f"Could not find the answer {p.answer_suffix!r} as the last tokens of {p.text!r}: the tokenizer "
                    "merges the answer with the question; end questions with punctuation or a space"
                )
            labels[row, start:end] = input_ids[row, start:end]
        images_in = {"pixel_values": batch["pixel_values"]}
        if all(IMAGE_TOKENS_COLUMN in example for example in examples):  # training.image_token_cache
            tokens = [torch.as_tensor(example[IMAGE_TOKENS_COLUMN], dtype=torch.float32) for example in examples]
            images_in = {"image_tokens": torch.stack(tokens)}
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            **images_in,
            "image_mask": torch.from_numpy(np.stack([p.image_mask for p in plans])),
            "labels": labels,
        }


__all__ = ["IGNORE_INDEX", "MMARDataCollator", "SamplePlan", "TASK_MIXES"]
