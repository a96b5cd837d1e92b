"""Conversations to batches: tokenise once, plan lengths from image headers, group by length, resume mid-epoch."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import lightning.pytorch as pl
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from mllm_da.backbones.base import IGNORE_INDEX, Backbone, EncodedSample
from mllm_da.backbones.chat_format import MaskMode
from mllm_da.data.images import load_image
from mllm_da.utils.conversation import Conversation

if TYPE_CHECKING:
    from lightning.pytorch.loops.progress import _ProcessedTracker

log = logging.getLogger(__name__)


@dataclass
class PlanReport:
    """What the length plan kept, cut and dropped, and why: nothing leaves the training set uncounted."""

    kept: int = 0
    cut: int = 0
    dropped: int = 0
    reasons: Counter = field(default_factory=Counter)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with Image.open(path) as img:
        return img.size


class ConversationDataset(Dataset):
    """Tokenised conversations within the cutoff; images are decoded when a sample is drawn."""

    def __init__(
        self,
        backbone: Backbone,
        conversations: Sequence[Conversation],
        *,
        mode: MaskMode = "assistant",
        cutoff_len: int,
        truncation: str = "drop",
    ):
        self.backbone = backbone
        self.conversations: list[Conversation] = []
        self.samples: list[EncodedSample] = []
        self.report = PlanReport()
        for conv in conversations:
            sample = backbone.encode(conv.turns, [image_size(p) for p in conv.images], mode=mode, sample_id=conv.id)
            fitted = backbone.truncate(sample, cutoff_len, truncation)
            if fitted is None:
                self.report.dropped += 1
                self.report.reasons[f"longer than cutoff_len={cutoff_len} ({truncation})"] += 1
                continue
            if all(label == IGNORE_INDEX for label in fitted.labels):
                self.report.dropped += 1
                self.report.reasons["no token carries loss"] += 1
                continue
            self.report.cut += fitted is not sample
            self.report.kept += 1
            self.conversations.append(conv)
            self.samples.append(fitted)
        if self.report.dropped:
            log.warning("length plan dropped %d conversation(s): %s", self.report.dropped, dict(self.report.reasons))

    @property
    def lengths(self) -> list[int]:
        return [s.expanded_length for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> EncodedSample:
        sample = self.samples[index]
        images = [load_image(p) for p in self.conversations[index].images]
        return EncodedSample(sample.input_ids, sample.labels, images, sample.expanded_length, sample.id)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, group_by_length: bool, megabatch: int = 50
) -> list[list[int]]:
    """Shuffled batches; with grouping, each megabatch of ``megabatch`` batches is sorted by length first, so
    a batch holds samples of similar length (less padding) while the batch order stays random."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        span = batch_size * megabatch
        order = [i for k in range(0, len(order), span) for i in sorted(order[k : k + span], key=lambda i: -lengths[i])]
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Deterministic per (seed, epoch); each rank takes every ``num_replicas``-th batch; ``skip_batches`` drops
    the batches of the current epoch a resumed run has already trained on."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        group_by_length: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self) -> list[list[int]]:
        batches = length_grouped_batches(
            self.lengths, self.batch_size, random.Random(f"{self.seed}:{self.epoch}"), self.group_by_length
        )
        usable = len(batches) - len(batches) % self.num_replicas  # every rank gets the same number of steps
        return batches[self.rank : usable : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        skip, self.skip_batches = self.skip_batches, 0
        yield from batches[skip:]

    def __len__(self) -> int:
        # the whole epoch, also when resuming: Lightning restores how many of its batches were done
        return len(self.epoch_batches())


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the token slots in padded batches that are padding."""
    slots = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / slots if slots else 0.0


class Collator:
    """Picklable collate function (data-loader workers): the backbone's collation plus the sample ids.

    With ``pack_capacity`` the micro batch is packed into rows of at most that many tokens
    (:meth:`Backbone.collate_packed`) instead of padded to its longest sample: the same samples per step, so
    the sampler, gradient accumulation and resume are unchanged.
    """

    def __init__(self, backbone: Backbone, pack_capacity: int | None = None):
        self.backbone = backbone
        self.pack_capacity = pack_capacity

    def __call__(self, samples: Sequence[EncodedSample]) -> dict[str, Any]:
        # compact: what the model's device does cheaper is left to Backbone.model_inputs, which the
        # LightningModule applies after the transfer
        if self.pack_capacity:
            batch: dict[str, Any] = self.backbone.collate_packed(samples, self.pack_capacity, compact=True)
        else:
            batch = self.backbone.collate(samples, compact=True)
        batch["sample_ids"] = [s.id for s in samples]
        return batch


def split_train_val(
    conversations: Sequence[Conversation], val_fraction: float
) -> tuple[list[Conversation], list[Conversation]]:
    """Held-out share chosen by a hash of the record id: stable when the data grows or is reordered."""
    if val_fraction <= 0:
        return list(conversations), []

    def bucket(conv: Conversation) -> float:
        # the record id before "#": copies of one record in a weighted mixture stay on one side
        key = conv.id.split("#", 1)[0]
        return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    train = [c for c in conversations if bucket(c) >= val_fraction]
    val = [c for c in conversations if bucket(c) < val_fraction]
    return train, val


class ConversationDataModule(pl.LightningDataModule):
    """Batches for Lightning; on resume it skips the micro batches the checkpoint's step already consumed."""

    def __init__(
        self,
        backbone: Backbone,
        train_conversations: Sequence[Conversation],
        val_conversations: Sequence[Conversation] = (),
        *,
        micro_batch_size: int = 1,
        eval_batch_size: int | None = None,
        mode: MaskMode = "assistant",
        cutoff_len: int,
        truncation: str = "drop",
        group_by_length: bool = True,
        packing: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.backbone = backbone
        self.train_conversations = list(train_conversations)
        self.val_conversations = list(val_conversations)
        self.micro_batch_size = micro_batch_size
        self.eval_batch_size = eval_batch_size or micro_batch_size
        self.dataset_args: dict[str, Any] = {"mode": mode, "cutoff_len": cutoff_len, "truncation": truncation}
        self.group_by_length = group_by_length
        self.pack_capacity = cutoff_len if packing else None
        if packing and not backbone.supports_packing:
            raise ValueError(
                f"{backbone.family}: data.packing=true is not supported: {backbone.packing_unsupported_reason}"
            )
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.train_set: ConversationDataset | None = None
        self.val_set: ConversationDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = ConversationDataset(self.backbone, self.train_conversations, **self.dataset_args)
            if not len(self.train_set):
                raise ValueError(
                    f"no training sample is left after the length plan: {dict(self.train_set.report.reasons)}"
                )
            self.val_set = ConversationDataset(self.backbone, self.val_conversations, **self.dataset_args)

    def _loader(self, dataset: Dataset, sampler: Sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=Collator(self.backbone, self.pack_capacity),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_sampler(self) -> LengthGroupedBatchSampler:
        assert self.train_set is not None, "setup() makes the training set before the loaders"
        world, rank = self._world()
        return LengthGroupedBatchSampler(
            self.train_set.lengths,
            self.micro_batch_size,
            seed=self.seed,
            group_by_length=self.group_by_length,
            num_replicas=world,
            rank=rank,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = self.train_sampler()
        trainer = self.trainer
        if trainer is not None and trainer.global_step > 0:
            # resuming: Lightning restores the epoch and how many of its micro batches were trained (this counts
            # the short accumulation window Lightning steps on at an epoch's end, which global_step cannot show)
            progress = trainer.fit_loop.epoch_loop.batch_progress
            sampler.set_epoch(trainer.current_epoch)
            # Lightning declares current as the base tracker; a batch progress holds a _ProcessedTracker
            done = cast("_ProcessedTracker", progress.current).processed
            if progress.is_last_batch or done >= len(sampler.epoch_batches()):
                # written at the epoch's last batch (or its end): Lightning goes on with the next epoch, whose
                # loader is made here, before Lightning counts the finished epoch
                sampler.set_epoch(trainer.current_epoch + 1)
                done = 0
            sampler.skip_batches = done
        assert self.train_set is not None  # train_sampler() checked it
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_set:
            return []
        world, rank = self._world()
        sampler = LengthGroupedBatchSampler(
            self.val_set.lengths,
            self.eval_batch_size,
            seed=self.seed,
            group_by_length=True,
            num_replicas=world,
            rank=rank,
        )
        return self._loader(self.val_set, sampler)
