"""Training sets from a domain's files: caption tasks, optionally mixed with instruction tasks per image.

Single-stage mixing follows reference §4.1: one conversation per image-caption record; the caption turn goes at
the start or at the end with probability 1/2 (``random.Random(record id)``) and the image's tasks on the other
side; ``<image>\\n`` is put before whichever user turn comes first. Unlike the reference writer, ``images`` is kept.

Task sources: ``rule_based`` (the domain's rule_tasks file; on a domain without one, the rule-based synthesizer's
tasks), ``external`` (a user's file) and ``synthetic`` (the synthesis pipeline's synthetic-only file). A mix never
runs synthesis itself: where its tasks are synthesized (:meth:`DataMix.synthesizes`), the orchestration
(:mod:`mllm_da.orchestration.tasks`) synthesizes them, or reuses them from the cache, and hands the file over in
:attr:`DataMix.synthesized` before :meth:`DataMix.build`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from mllm_da.data.domain import DomainFiles
from mllm_da.data.records import IMAGE_PLACEHOLDER, Conversation, Policy, Turn, read_conversations

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

TaskSource = Literal["none", "rule_based", "external", "synthetic"]
#: how task records find their caption record: ("id", record id) or ("images", the image paths)
TaskKey = tuple[str, Any]


__all__ = ["DataMix", "DomainFiles", "SynthesizedTasks", "mix_single_stage", "question_answer_turns"]


@dataclass(frozen=True)
class SynthesizedTasks:
    """A synthesized task file handed to a data mix, and the synthesis metrics its summary reports."""

    path: str
    metrics: dict[str, Any] = field(default_factory=dict)


def strip_placeholders(text: str) -> str:
    """A user turn's text without image placeholders (the mixer places the single ``<image>`` itself)."""
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def question_answer_turns(conversation: Conversation) -> list[Turn]:
    """The user/assistant turns of a record with placeholders removed; system turns are dropped."""
    turns = []
    for turn in conversation.turns:
        if turn.role == "system":
            continue
        content = strip_placeholders(turn.content) if turn.role == "user" else turn.content
        turns.append(Turn(turn.role, content))
    return turns


def mix_single_stage(
    record_id: str, caption_turns: Sequence[Turn], task_turns: Sequence[Turn], image_count: int = 1
) -> list[Turn]:
    """Caption turns and task turns in one conversation, order drawn from ``random.Random(record_id)``."""
    caption_first = random.Random(record_id).random() < 0.5
    turns = [*caption_turns, *task_turns] if caption_first else [*task_turns, *caption_turns]
    if not turns:
        return []
    first_user = next(i for i, t in enumerate(turns) if t.role == "user")
    turns[first_user] = Turn("user", f"{IMAGE_PLACEHOLDER}\n" * image_count + turns[first_user].content)
    return turns


def report_dict(report: Any) -> dict[str, Any]:
    # a report is an instance, never a dataclass type
    data = (
        dataclasses.asdict(cast("DataclassInstance", report))
        if dataclasses.is_dataclass(report)
        else dict(vars(report))
    )
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}


@dataclass
class DataMix:
    """Which tasks go with the captions. ``build`` returns the training conversations and fills ``reports``."""

    name: str
    captions: bool = True
    tasks: TaskSource = "none"
    external_file: str | None = None
    #: keep at most this many question-answer pairs per image (None: all)
    max_tasks_per_image: int | None = None
    #: for tasks=synthetic: synthesizer and filter presets, synth.py overrides, paths (conf/data_mix/synthetic.yaml)
    synthesis: dict[str, Any] | None = None
    #: the synthesized task file, when :meth:`synthesizes`: provided by the orchestration before :meth:`build`
    synthesized: SynthesizedTasks | None = None
    reports: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> list[DataMix]:
        """The plain data mixes this mix is made of: itself (a weighted mix lists its components')."""
        return [self]

    def restricted(self, captions: bool, tasks: bool) -> DataMix:
        """This mix cut to its caption task and/or its instruction tasks (the stages of a two-stage run)."""
        return dataclasses.replace(
            self, captions=self.captions and captions, tasks=self.tasks if tasks else "none", reports={}
        )

    def synthesizes(self, domain: DomainFiles) -> bool:
        """Whether the tasks come from the synthesis pipeline: ``synthetic``, and ``rule_based`` on a domain
        without a rule_tasks file (the rule-based synthesizer writes them from the captions)."""
        return self.tasks == "synthetic" or (self.tasks == "rule_based" and not domain.rule_tasks)

    def task_file(self, domain: DomainFiles) -> str | None:
        if self.tasks == "rule_based" and domain.rule_tasks:
            return domain.rule_tasks
        if self.tasks == "external":
            return self.external_file or domain.external_tasks
        if self.synthesizes(domain):
            if self.synthesized is None:
                raise ValueError(
                    f"data_mix {self.name}: tasks={self.tasks} on domain {domain.name} reads synthesized tasks, and "
                    "none were provided; train through mllm_da.orchestration.train, which synthesizes them"
                )
            return self.synthesized.path
        return None

    def build(
        self, domain: DomainFiles, policy: Policy = "skip", rejects_dir: str | Path | None = None
    ) -> list[Conversation]:
        rejects = Path(rejects_dir) if rejects_dir else None
        caption_records, report = read_conversations(
            domain.image_caption_pairs,
            image_root=domain.image_root,
            policy=policy,
            rejects_path=rejects / "image_caption_pairs.jsonl" if rejects else None,
        )
        self.reports["image_caption_pairs"] = report_dict(report)
        # a task record goes with the caption record of the same id and images (synthetic and rule task files
        # keep the caption's id); one whose id matches no caption (a user's external file) goes with every
        # caption record of its images
        caption_keys = {record.id: tuple(record.images) for record in caption_records}
        tasks_by_key: dict[TaskKey, list[Turn]] = defaultdict(list)
        task_counts: Counter[TaskKey] = Counter()
        task_path = self.task_file(domain)
        if self.synthesizes(domain) and self.synthesized is not None:
            self.reports["synthesis"] = self.synthesized.metrics
        if self.tasks != "none":
            if not task_path:
                raise ValueError(f"data_mix {self.name}: tasks={self.tasks} but no task file is configured")
            # only tasks whose images are among the captions' (decoded and checked above) are used: existence
            # is still checked here, but the images are not decoded a second time
            task_records, task_report = read_conversations(
                task_path,
                image_root=domain.image_root,
                policy=policy,
                check_images=False,
                rejects_path=rejects / f"{Path(task_path).stem}.jsonl" if rejects else None,
            )
            self.reports[Path(task_path).name] = report_dict(task_report)
            for record in task_records:
                images = tuple(record.images)
                key: TaskKey = ("id", record.id) if caption_keys.get(record.id) == images else ("images", images)
                tasks_by_key[key].extend(question_answer_turns(record))
                task_counts[key] += 1

        mixed = []
        matched = 0
        caption_images = set(caption_keys.values())
        # a task record whose image has no (kept) caption record cannot be mixed: counted, never dropped silently
        unmatched = sum(1 for kind, images in tasks_by_key if kind == "images" and images not in caption_images)
        unmatched_records = sum(
            n for (kind, images), n in task_counts.items() if kind == "images" and images not in caption_images
        )
        for record in caption_records:
            caption = question_answer_turns(record) if self.captions else []
            tasks = [
                *tasks_by_key.get(("id", record.id), []),
                *tasks_by_key.get(("images", tuple(record.images)), []),
            ]
            if self.max_tasks_per_image is not None:
                tasks = tasks[: 2 * self.max_tasks_per_image]
            matched += bool(tasks)
            turns = mix_single_stage(record.id, caption, tasks, image_count=len(record.images))
            if turns:
                mixed.append(Conversation(id=record.id, turns=tuple(turns), images=record.images, source=record.source))
        self.reports["mixed"] = {
            "conversations": len(mixed),
            "with_tasks": matched,
            "task_images_without_caption": unmatched,
            "task_records_without_caption": unmatched_records,
        }
        if unmatched_records:
            log.warning(
                "data_mix %s: %d task record(s) on %d image(s) have no kept caption record (missing from "
                "the image-caption pairs, or refused there) and are not used",
                self.name,
                unmatched_records,
                unmatched,
            )
        return mixed
