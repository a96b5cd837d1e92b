"""Measures of a synthetic task set: diversity, correctness against a known truth, the filter judged against that
truth, grounding in the image, and copying from the caption.

Every function here is pure (records in, numbers out), so ``synth.py``, ``train.py data_mix=synthetic`` and the
tests share one definition. A record is a :class:`SynthesizedTask`: the caption the synthesizer read, the triplet
it wrote, and the filter's label. Where the truth is known (the toy domain, whose captions describe the scene
exactly) :func:`toy_truth` answers a question from the caption; elsewhere the correctness measures are absent and
questions are grouped by :func:`question_form`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from mllm_da import toy
from mllm_da.synthesis.answers import answer_words, question_options
from mllm_da.synthesis.answers import words as _words

#: question forms for domains without a known truth, tried in order (first match wins)
QUESTION_FORMS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("choice", re.compile(r"\n[A-Z][.)]\s|\bwhich of\b|\boptions?\b", re.I)),
    ("count", re.compile(r"^\s*how many\b", re.I)),
    ("yes_no", re.compile(r"^\s*(is|are|was|were|does|do|did|can|could|has|have|will|should)\b", re.I)),
    ("where", re.compile(r"^\s*where\b", re.I)),
    ("why_how", re.compile(r"^\s*(why|how)\b", re.I)),
    ("describe", re.compile(r"^\s*(describe|explain|summari[sz]e|write|tell)\b", re.I)),
    ("what_which_who", re.compile(r"^\s*(what|which|who|whose|when)\b", re.I)),
)


@dataclass(frozen=True)
class SynthesizedTask:
    """One record's synthesized triplet with what it was made from and what the filter said of it."""

    record_id: str
    caption: str
    question: str
    precise: str
    informative: str
    label: str | None = None  # the filter's label: "yes" is kept (None: not filtered)


def question_form(question: str) -> str:
    """A coarse form of a question (:data:`QUESTION_FORMS`), ``other`` when none matches."""
    return next((name for name, pattern in QUESTION_FORMS if pattern.search(question)), "other")


def entropy_bits(counts: Mapping[str, int]) -> float:
    """Shannon entropy of a distribution given by counts, in bits (0 for one value or none)."""
    total = sum(counts.values())
    return 0.0 - sum(n / total * math.log2(n / total) for n in counts.values() if n) if total else 0.0  # not -0.0


def distinct_ngrams(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of ``texts`` (distinct-n; 0 when there are none)."""
    grams = [tuple(words[i : i + n]) for words in map(_words, texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(questions: Sequence[str], types: Sequence[str]) -> dict[str, object]:
    """Distinct questions (count and share), the distribution of ``types`` and its entropy, distinct-1/2."""
    distinct = len({q.strip().lower() for q in questions})
    counts = Counter(types)
    return {
        "tasks": len(questions),
        "distinct_questions": distinct,
        "distinct_question_share": distinct / len(questions) if questions else 0.0,
        "type_counts": dict(sorted(counts.items())),
        "type_entropy_bits": round(entropy_bits(counts), 4),
        "largest_type_share": max(counts.values()) / len(types) if types else 0.0,
        "distinct_1": round(distinct_ngrams(questions, 1), 4),
        "distinct_2": round(distinct_ngrams(questions, 2), 4),
    }


def copied_from_caption(answer: str, caption: str) -> bool:
    """An answer of three words or more found verbatim (case and spacing aside) in the caption."""
    words = _words(answer)
    return len(words) >= 3 and " ".join(words) in " ".join(_words(caption))


# --------------------------------------------------------------------------------------------- toy truth


def _toy_candidates(scene: toy.ToyScene) -> dict[str, tuple[str, str]]:
    """Every question the toy rules can ask of ``scene`` → (question type, truth in words)."""
    table: dict[str, tuple[str, str]] = {}
    for question, kind, truth in toy.scene_questions(scene):
        table.setdefault(question.lower(), (kind, truth))
    for colour in toy.COLOURS:  # existence of any colour-shape pair, not only the rules' hard negatives
        for shape in toy.SHAPES:
            present = any(o.colour == colour and o.shape == shape for o in scene.objects)
            table.setdefault(f"is there a {colour} {shape}?", ("exist", "yes" if present else "no"))
    return table


def toy_truth(caption: str, question: str) -> tuple[str, str] | None:
    """``(question type, true answer in words)`` of a toy question about the scene a toy caption describes, or
    None when the caption is not a toy scene or the question is not one the toy rules can ask."""
    scene = toy.scene_from_caption(caption)
    if scene is None:
        return None
    first, _ = question_options(question)
    return _toy_candidates(scene).get(first.strip().lower())


def answer_is(answer: str, truth: str, question: str = "") -> bool:
    """Whether a short answer states ``truth``: equal words once an MC letter is read as its option, digits as
    number words (:func:`~mllm_da.synthesis.answers.answer_words`), and a leading yes/no taken as the answer."""
    words = answer_words(answer, question)
    if truth in toy.YES_NO:
        return bool(words) and words[0] == truth
    return " ".join(words) == truth or words == _words(truth)


def mentions(answer: str, truth: str) -> bool | None:
    """Whether a long answer is consistent with ``truth``: it says the true word(s). For a yes/no truth, its last
    yes or no (where it concludes) must be the truth; an answer that says neither is undecided (None)."""
    words = _words(answer)
    if truth in toy.YES_NO:
        said = [w for w in words if w in toy.YES_NO]
        return said[-1] == truth if said else None
    digits = {str(k): w for k, w in toy.COUNT_WORDS.items()}
    words = [digits.get(w, w) for w in words]
    target = _words(truth)
    return any(words[i : i + len(target)] == target for i in range(len(words) - len(target) + 1))


_NEGATORS = frozenset({"no", "not", "without", "nor", "neither", "isn", "aren", "t"})
_OBJECT_MENTION = re.compile(r"\b(" + "|".join(toy.COLOURS) + r") (" + "|".join(toy.SHAPES) + r")s?\b")
_COUNT_CLAIM = re.compile(r"\bthere (?:is|are) (one|two|three|four|[1-4]) shapes?\b")


def scene_claims_hold(answer: str, scene: toy.ToyScene) -> bool:
    """Whether what a long answer asserts about the scene is true: every colour-shape it says is there (not after
    a negation such as "no" or "not" in the three words before it) is in the scene, and a stated shape count is the
    scene's. An answer about some other scene fails even when it ends on the right word."""
    text = answer.lower()
    present = {(o.colour, o.shape) for o in scene.objects}
    for match in _OBJECT_MENTION.finditer(text):
        before = _words(text[: match.start()])[-3:]
        if (match.group(1), match.group(2)) not in present and not _NEGATORS.intersection(before):
            return False
    counts = {w: k for k, w in toy.COUNT_WORDS.items()} | {str(k): k for k in toy.COUNT_WORDS}
    return all(counts[m.group(1)] == scene.count for m in _COUNT_CLAIM.finditer(text))


def informative_consistent(answer: str, truth: str, caption: str) -> bool | None:
    """Whether an informative answer is consistent with the scene a toy caption describes: its claims about the
    scene hold (:func:`scene_claims_hold`) and it says the true answer (:func:`mentions`); None when it holds but
    never states the answer to a yes/no question."""
    scene = toy.scene_from_caption(caption)
    if scene is not None and not scene_claims_hold(answer, scene):
        return False
    return mentions(answer, truth)


def _rate(flags: Iterable[bool]) -> float | None:
    values = list(flags)
    return round(sum(values) / len(values), 4) if values else None


def toy_correctness(tasks: Sequence[SynthesizedTask]) -> dict[str, object]:
    """Precise-answer accuracy and informative-answer consistency against the toy truth, overall and per question
    type, and the filter's keep judged against precise correctness (precision and recall of "keep")."""
    judged = []
    for task in tasks:
        truth = toy_truth(task.caption, task.question)
        if truth is not None:
            kind, answer = truth
            judged.append(
                (
                    task,
                    kind,
                    answer_is(task.precise, answer, task.question),
                    informative_consistent(task.informative, answer, task.caption),
                )
            )
    out: dict[str, object] = {
        "judged": len(judged),
        "judged_share": round(len(judged) / len(tasks), 4) if tasks else None,
        "precise_accuracy": _rate(right for _, _, right, _ in judged),
        "informative_consistency": _rate(ok for _, _, _, ok in judged if ok is not None),
        "informative_undecided": sum(1 for _, _, _, ok in judged if ok is None),
        "per_type": {
            kind: {
                "tasks": sum(1 for _, k, _, _ in judged if k == kind),
                "precise_accuracy": _rate(right for _, k, right, _ in judged if k == kind),
                "informative_consistency": _rate(ok for _, k, _, ok in judged if k == kind and ok is not None),
            }
            for kind in sorted({k for _, k, _, _ in judged})
        },
    }
    filtered = [(task.label == "yes", right) for task, _, right, _ in judged if task.label is not None]
    if filtered:
        kept_right = sum(1 for keep, right in filtered if keep and right)
        kept = sum(1 for keep, _ in filtered if keep)
        right_total = sum(1 for _, right in filtered if right)
        out["filter"] = {
            "keep_precision": round(kept_right / kept, 4) if kept else None,
            "keep_recall": round(kept_right / right_total, 4) if right_total else None,
            "kept": kept,
            "right": right_total,
        }
    return out


def grounding(original: Mapping[str, tuple[str, str]], blind: Mapping[str, tuple[str, str]]) -> dict[str, object]:
    """How often a record's (question, precise answer) changed when its image was swapped for another record's:
    a synthesizer that reads the image changes often, one that ignores it (rules, captions only) never."""
    shared = sorted(set(original) & set(blind))
    changed = [original[key] != blind[key] for key in shared]
    question_changed = [original[key][0] != blind[key][0] for key in shared]
    return {
        "records": len(shared),
        "changed_share": _rate(changed),
        "question_changed_share": _rate(question_changed),
    }


def quality_report(
    tasks: Sequence[SynthesizedTask], type_of: Callable[[SynthesizedTask], str] | None = None
) -> dict[str, object]:
    """Every measure of one synthetic set: diversity (by toy question type where the truth is known, else by
    :func:`question_form`), copying from the caption, and — when any caption is a toy scene — correctness."""

    def default_type(task: SynthesizedTask) -> str:
        truth = toy_truth(task.caption, task.question)
        return truth[0] if truth is not None else question_form(task.question)

    type_of = type_of or default_type
    report: dict[str, object] = {
        "diversity": diversity([t.question for t in tasks], [type_of(t) for t in tasks]),
        "copied": {
            "precise_share": _rate(copied_from_caption(t.precise, t.caption) for t in tasks),
            "informative_share": _rate(copied_from_caption(t.informative, t.caption) for t in tasks),
        },
    }
    correctness = toy_correctness(tasks)
    if correctness["judged"]:
        report["toy_truth"] = correctness
    return report


def format_quality_table(report: Mapping[str, object]) -> str:
    """A short Markdown table of the headline measures, for the log."""
    div = report["diversity"]
    assert isinstance(div, Mapping)
    rows = [
        ("tasks", div["tasks"]),
        ("distinct questions", f"{div['distinct_questions']} ({div['distinct_question_share']:.1%})"),
        ("question types", ", ".join(f"{k} {v}" for k, v in div["type_counts"].items())),
        ("type entropy (bits)", div["type_entropy_bits"]),
        ("largest type share", f"{div['largest_type_share']:.1%}"),
        ("distinct-2 of questions", div["distinct_2"]),
        ("precise answers copied from the caption", report["copied"]["precise_share"]),  # type: ignore[index]
    ]
    truth = report.get("toy_truth")
    if isinstance(truth, Mapping):
        rows += [
            ("precise accuracy (toy truth)", truth["precise_accuracy"]),
            ("informative consistency (toy truth)", truth["informative_consistency"]),
        ]
        if isinstance(truth.get("filter"), Mapping):
            rows += [
                (
                    "filter keep precision / recall",
                    f"{truth['filter']['keep_precision']} / {truth['filter']['keep_recall']}",
                )
            ]
    if isinstance(report.get("grounding"), Mapping):
        rows.append(("changed with a swapped image", report["grounding"]["changed_share"]))  # type: ignore[index]
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
