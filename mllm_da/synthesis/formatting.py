"""Kept triplets to training data (reference §3.3 and §4.1).

One kept triplet becomes one instruction-response pair in which the informative answer serves as a chain of
thought for the precise answer. With the indicator words ``could be``, ``so``, ``thus``, ``therefore``, ``final``,
``answer``, ``result`` (each followed by a space, matched as lower-cased substrings):

1. the informative answer's last sentence (the text after its last ``". "``) contains an indicator: it already
   concludes, so the response is the informative answer alone, through a plain QA template;
2. else the precise answer contains an indicator: the response is ``informative + " " + precise``, plain QA;
3. else a chain-of-thought template with ``{cot}`` = informative and ``{answer}`` = precise.

The template is drawn with ``random.Random(record id)`` from the project's own lists (:data:`QA_TEMPLATES`,
:data:`COT_TEMPLATES`, our wording) or a user's JSON file (``{"qa": [...], "cot": [...]}``, entries
``{"inputs": ..., "targets": ..., "inverse": bool}``). Inverse tasks (answer → question, generate the rationale)
are used only with ``inverse_tasks=True``. The reference samples its FLAN lists uniformly, and 15 of its 79 plain
patterns and 90 of its 210 chain-of-thought patterns are inverse; with the built-in lists we draw "inverse or not"
with exactly those shares (:data:`REFERENCE_INVERSE_SHARE`), then a template of that kind, so the synthetic set has
the reference's mix of forward and inverse tasks per branch. A user's file is drawn from uniformly, as it is.
The paper presets turn inverse tasks on; elsewhere they are off, because a task that asks for the question rather
than the answer is not the skill the data is for.

Outputs, all in ShareGPT form with ``images`` (the reference writer drops ``images``; we keep them): single-stage
(each record's caption task and, if it has one, its synthetic task in one conversation, order from
``random.Random(record id)`` via :func:`~mllm_da.data.mixing.mix_single_stage`), caption-only, and
synthetic-only. A record without a kept task keeps its caption task (the reference code drops a record that had
no triplet at all, caption included; its released data keep every caption).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mllm_da.data.mixing import mix_single_stage, question_answer_turns
from mllm_da.synthesis.parse import Triplet
from mllm_da.utils.conversation import IMAGE_PLACEHOLDER, Conversation, Turn

INDICATORS: tuple[str, ...] = ("could be ", "so ", "thus ", "therefore ", "final ", "answer ", "result ")
Branch = Literal["informative_concludes", "precise_has_indicator", "chain_of_thought"]


@dataclass(frozen=True)
class Template:
    """A pattern's ``inputs`` (the instruction) and ``targets`` (the response); ``inverse`` asks for the question
    or the rationale instead of the answer."""

    inputs: str
    targets: str
    inverse: bool = False


def _forward(*pairs: tuple[str, str]) -> tuple[Template, ...]:
    return tuple(Template(i, t) for i, t in pairs)


def _inverse(*pairs: tuple[str, str]) -> tuple[Template, ...]:
    return tuple(Template(i, t, inverse=True) for i, t in pairs)


#: plain question → answer patterns (fields: question, answer)
QA_TEMPLATES: tuple[Template, ...] = _forward(
    ("{question}", "{answer}"),
    ("{question}", "{answer}"),
    ("Question: {question}", "{answer}"),
    ("Question: {question}\nAnswer:", "{answer}"),
    ("Q: {question}\nA:", "{answer}"),
    ("Please answer the following question about the image.\n{question}", "{answer}"),
    ("Look at the image and answer: {question}", "{answer}"),
    ("{question}\nWhat is your answer?", "{answer}"),
    ("Here is a question about this picture: {question}", "{answer}"),
    ("Answer this question based on the image. {question}", "{answer}"),
    ("I have a question about the image. {question}", "{answer}"),
    ("Can you answer this? {question}", "{answer}"),
    ("{question} Please respond.", "{answer}"),
    ("Given the image, {question}", "{answer}"),
    ("Study the picture, then answer.\n\n{question}", "{answer}"),
    ("Read the question and reply using the image.\nQuestion: {question}", "{answer}"),
    ("{question}", "Answer: {answer}"),
    ("{question}", "Here is what I see: {answer}"),
    ("{question}", "Well, {answer}"),
    ("Question about the image:\n{question}", "Response: {answer}"),
    ("Help me with this question: {question}", "{answer}"),
    ("Consider the image carefully. {question}", "{answer}"),
    ("{question}\nReply:", "{answer}"),
    ("Task: answer the question about the image.\n{question}", "{answer}"),
) + _inverse(
    ("Here is an answer about the image: {answer}\nWhat question does it answer?", "{question}"),
    ("{answer}\n\nWrite a question about the image that this answers.", "{question}"),
    ('What question about the picture has the answer "{answer}"?', "{question}"),
    ("Ask a question about the image.", "{question}"),
    ("Write one question someone could ask about this image.", "{question}"),
)

#: question → reasoning + answer patterns (fields: question, cot, answer)
COT_TEMPLATES: tuple[Template, ...] = _forward(
    ("{question}", "{cot} The answer is {answer}."),
    ("{question}", "{cot}\nSo the answer is: {answer}"),
    ("{question}", "{cot}\nAnswer: {answer}"),
    ("{question}\nThink step by step.", "{cot} So the final answer is {answer}."),
    ("{question} Explain your reasoning.", "{cot}\nTherefore, the answer is {answer}."),
    ("Question: {question}\nReason first, then answer.", "Reasoning: {cot}\nAnswer: {answer}"),
    ("Answer the question about the image and show your reasoning.\n{question}", "{cot}\n\nAnswer: {answer}"),
    ("{question}\nLet's think it through.", "{cot} Thus, {answer}."),
    ("Q: {question}\nA: Let's look closely.", "{cot} The answer: {answer}."),
    ("Look at the picture. {question}", "Let me look. {cot} My answer is {answer}."),
    ("{question} Give reasons.", "{cot}\nHence: {answer}"),
    ("Use the image to answer with an explanation. {question}", "Explanation: {cot}\nAnswer: {answer}"),
    ("{question}\nFirst describe what matters, then answer.", "{cot}\nIn short: {answer}"),
    ("Consider the image. {question}", "Step by step: {cot} The result: {answer}."),
    ("{question}", "Observation: {cot}\nConclusion: {answer}"),
    ("{question}\nJustify your answer.", "{cot} That is why the answer is {answer}."),
    ("Please answer and explain.\n{question}", "{cot}\nFinal answer: {answer}"),
    ("{question}", "{answer}\nExplanation: {cot}"),
    ("{question} Answer, then explain.", "{answer}. Reason: {cot}"),
    ("Question: {question}", "Answer: {answer}\nWhy: {cot}"),
    ("{question}\nGive the answer and a short justification.", "{answer}\n\n{cot}"),
    ("{question}", "Detailed solution: {cot}"),
) + _inverse(
    ("Reasoning: {cot}\nAnswer: {answer}\nWhat question was asked about the image?", "{question}"),
    ("{cot} So the answer is {answer}.\nWrite the question this reasoning answers.", "{question}"),
    ("Answer: {answer}\nExplanation: {cot}\nWhat was the question?", "{question}"),
    ("Question: {question}\nAnswer: {answer}\nExplain how the image supports this answer.", "{cot}"),
    ('The answer to "{question}" is {answer}. Why?', "{cot}"),
    ("{question}\nThe answer is {answer}. Give the reasoning.", "{cot}"),
)

FIELDS = {"qa": {"question", "answer"}, "cot": {"question", "cot", "answer"}}
#: share of inverse patterns in the reference's FLAN lists: plain QA 15 of 79, chain of thought 90 of 210
REFERENCE_INVERSE_SHARE: Mapping[str, float] = {"qa": 15 / 79, "cot": 90 / 210}


@dataclass(frozen=True)
class TemplateSet:
    """Template lists; ``inverse_share`` (kind → probability), when set, draws inverse-or-not first."""

    qa: tuple[Template, ...] = QA_TEMPLATES
    cot: tuple[Template, ...] = COT_TEMPLATES
    inverse_share: Mapping[str, float] | None = field(default_factory=lambda: dict(REFERENCE_INVERSE_SHARE))

    def choices(self, kind: str, inverse_tasks: bool) -> tuple[Template, ...]:
        templates = self.qa if kind == "qa" else self.cot
        chosen = templates if inverse_tasks else tuple(t for t in templates if not t.inverse)
        if not chosen:
            raise ValueError(f"no {kind} template to choose from (inverse_tasks={inverse_tasks})")
        return chosen

    def draw(self, kind: str, inverse_tasks: bool, rng: random.Random) -> tuple[int, Template]:
        """``(index in choices(kind, inverse_tasks), template)``: uniform over the choices, or, with
        ``inverse_share``, inverse with that probability and then uniform within the kind drawn."""
        options = self.choices(kind, inverse_tasks)
        share = self.inverse_share.get(kind) if self.inverse_share and inverse_tasks else None
        inverse = [i for i, t in enumerate(options) if t.inverse]
        if share is None or not inverse or len(inverse) == len(options):
            index = rng.randrange(len(options))
            return index, options[index]
        pool = inverse if rng.random() < share else [i for i, t in enumerate(options) if not t.inverse]
        index = pool[rng.randrange(len(pool))]
        return index, options[index]


def load_templates(path: str | None) -> TemplateSet:
    """The built-in lists, or a user's JSON file ``{"qa": [...], "cot": [...]}`` (errors name file and entry)."""
    if not path:
        return TemplateSet()
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"formatting.templates_file: {file} does not exist")
    data = json.loads(file.read_text(encoding="utf-8"))
    lists: dict[str, tuple[Template, ...]] = {}
    for kind in ("qa", "cot"):
        entries = data.get(kind)
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{file}: field '{kind}' must be a non-empty list of templates")
        parsed = []
        for i, entry in enumerate(entries):
            where = f"{file}: field '{kind}[{i}]'"
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("inputs"), str)
                or not isinstance(entry.get("targets"), str)
            ):
                raise ValueError(f"{where}: needs string 'inputs' and 'targets'")
            used = {
                n
                for text in (entry["inputs"], entry["targets"])
                for _, n, _, _ in string.Formatter().parse(text)
                if n is not None
            }
            if used - FIELDS[kind]:
                raise ValueError(
                    f"{where}: unknown field(s) {sorted(used - FIELDS[kind])}; allowed {sorted(FIELDS[kind])}"
                )
            parsed.append(Template(entry["inputs"], entry["targets"], bool(entry.get("inverse", False))))
        lists[kind] = tuple(parsed)
    return TemplateSet(**lists, inverse_share=None)


@dataclass(frozen=True)
class FormattedTask:
    """One synthetic training pair and how it was made."""

    instruction: str
    response: str
    branch: Branch
    template: int
    inverse: bool


def has_indicator(text: str) -> bool:
    lowered = text.lower()
    return any(indicator in lowered for indicator in INDICATORS)


def choose_branch(triplet: Triplet) -> Branch:
    if has_indicator(triplet.informative.split(". ")[-1]):
        return "informative_concludes"
    if has_indicator(triplet.precise):
        return "precise_has_indicator"
    return "chain_of_thought"


def _clean(text: str) -> str:
    """Synthesized text may contain the image marker; it would break the placeholder count of a record."""
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def format_triplet(
    triplet: Triplet, syn_id: str, templates: TemplateSet | None = None, inverse_tasks: bool = False
) -> FormattedTask:
    """The §3.3 training pair of a kept triplet; ``syn_id`` (the record id) seeds the template choice."""
    templates = templates or TemplateSet()
    question, informative, precise = (
        _clean(triplet.question),
        _clean(triplet.informative),
        _clean(triplet.precise),
    )
    branch = choose_branch(triplet)
    if branch == "chain_of_thought":
        kind = "cot"
        fields = {"question": question, "cot": informative, "answer": precise}
    else:
        kind = "qa"
        answer = informative if branch == "informative_concludes" else f"{informative} {precise}"
        fields = {"question": question, "answer": answer}
    index, chosen = templates.draw(kind, inverse_tasks, random.Random(syn_id))
    return FormattedTask(
        chosen.inputs.format(**fields).strip(),
        chosen.targets.format(**fields).strip(),
        branch,
        index,
        chosen.inverse,
    )


@dataclass
class FormattedData:
    """The three training sets built from the same records."""

    single_stage: list[Conversation]
    caption_only: list[Conversation]
    synthetic_only: list[Conversation]


def task_turns(task: FormattedTask) -> list[Turn]:
    return [Turn("user", task.instruction), Turn("assistant", task.response)]


def build_training_sets(captions: Sequence[Conversation], tasks: Mapping[str, FormattedTask]) -> FormattedData:
    """Single-stage, caption-only and synthetic-only conversations (images kept), in caption-record order."""
    data = FormattedData([], [], [])
    for record in captions:
        caption = question_answer_turns(record)
        n_images = len(record.images)
        task = tasks.get(record.id)
        synthetic = task_turns(task) if task is not None else []

        def conversation(turns: list[Turn], record: Conversation = record) -> Conversation:
            return Conversation(id=record.id, turns=tuple(turns), images=record.images, source=record.source)

        data.single_stage.append(conversation(mix_single_stage(record.id, caption, synthetic, n_images)))
        data.caption_only.append(conversation(mix_single_stage(record.id, caption, [], n_images)))
        if synthetic:
            data.synthetic_only.append(conversation(mix_single_stage(record.id, [], synthetic, n_images)))
    return data
