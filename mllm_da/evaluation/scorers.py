"""Benchmark scorers, reproducing the reference's published numbers exactly.

Every rule and quirk below follows ``docs/adamllm-reference.md`` §5.3 (the AdaMLLM evaluation, which in turn
reuses the LLaVA-Med v1.0.0 VQA normaliser and an MMMU-style multiple-choice parser).  The quirks are part of
the published numbers, so they are reproduced on purpose and each one is documented where it happens.

Per-row functions return values in [0, 1]; the task aggregates return the reference's numbers (percentages).

The VQA normaliser lives in :mod:`mllm_da.evaluation.normalization` and the food tasks' label spaces in
:mod:`mllm_da.evaluation.labels` (label vocabularies are never bundled: the benchmark's label file is loaded from a
configurable path); both are re-exported here.

The evaluation runner can score any metric by name through :data:`SCORERS` (or :func:`score_predictions`)::

    metric = SCORERS["multiple_choice"]
    per_row = [metric.score_row(pred, row, i, labels) for i, (pred, row) in enumerate(zip(preds, rows))]
    numbers = metric.aggregate(per_row)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rouge import Rouge

from mllm_da.evaluation.labels import (
    ChoiceLabels,
    LabelSpace,
    MultiLabelSpace,
    label_names_to_ids,
)
from mllm_da.evaluation.normalization import (
    normalize,
    word_counts,
)

__all__ = [
    "SCORERS",
    "Metric",
    "RowScore",
    "aggregate",
    "aggregate_mean",
    "aggregate_vqa",
    "closed_hit",
    "multi_label_f1",
    "multi_label_recall",
    "multiple_choice_accuracy",
    "open_recall",
    "parse_multi_label",
    "parse_multiple_choice",
    "rouge_l_f",
    "score_predictions",
]

RowScore = dict[str, float | bool]
"""What a per-row scorer returns: always a ``"score"`` in [0, 1], plus metric-specific flags."""


def open_recall(prediction: str, label: str) -> float:
    """Recall of an OPEN VQA answer, as the reference's LLaVA-Med F1 routine computes it.

    Quirks: the text is normalised TWICE (once by the task after lower-casing, once inside the F1 routine, so up
    to 64 periods go); ``tp`` sums the PREDICTION's count of each shared word (not the minimum), so repeating a
    correct word earns more credit (recall still <= 1 because ``fn >= 0``); an empty prediction or label, or
    ``tp == 0``, scores 0.
    """
    c = word_counts(normalize(normalize(prediction.lower())))
    r = word_counts(normalize(normalize(label.lower())))
    if not c or not r:
        return 0.0
    tp = sum(n for w, n in c.items() if w in r)
    fn = sum(n for w, n in r.items() if w not in c)
    if tp == 0:
        return 0.0
    return tp / (tp + fn)


def closed_hit(prediction: str, label: str) -> float:
    """1.0 for a CLOSED (yes/no) VQA hit, else 0.0; texts are lower-cased and normalised ONCE.

    Hit when the normalised prediction contains the SUBSTRING "yes" or "no" and contains the normalised label as
    a substring.  So "no" also fires on "not", "nodule", "normal", "know"; an empty label is contained in
    everything.
    """
    pred = normalize(prediction.lower())
    gold = normalize(label.lower())
    return 1.0 if ("yes" in pred or "no" in pred) and gold in pred else 0.0


# ----------------------------------------------------------------------------------------------------------
# Multiple choice (MMMU-style parser)
# ----------------------------------------------------------------------------------------------------------

_MC_STRIP_CHARS: tuple[str, ...] = (",", ".", "!", "?", ";", ":", "'")


def parse_multiple_choice(response: str, options: Mapping[str, str], row_index: int) -> tuple[str, bool]:
    """Parse a free-form answer into one of ``options``' keys; returns ``(choice, random_selected)``.

    - Strip ``, . ! ? ; : '`` from both ends one character kind at a time in that order (``str.strip(ch)``
      each, so ``"B.,"`` keeps its period), then pad with one space on each side.
    - Candidates: choices ``c`` with ``"(c)"`` in the response; else those with ``" c "`` (case-sensitive);
      else, only if the PADDED response is longer than 5 characters, choices whose option text occurs in it
      case-insensitively (content match).  So a bare ``"rib"`` (padded length 5) is never content-matched.
    - None: ``random.Random(row_index).choice(choices)``, flagged ``random_selected``.  One: it.  Several: the
      one whose last occurrence (``rfind`` of ``"(c)"``, of ``" c "`` or of the lower-cased option text, as
      found) is furthest right; ties (only possible for content matches, e.g. "red" vs "red blood cell") go to
      the first candidate in choice order.

    Choices are the keys of ``options`` in their order (the reference iterates the same order for the letter
    passes and the content pass), so Food101's numeric indices match before any class name is tried.
    """
    choices = list(options)
    for ch in _MC_STRIP_CHARS:
        response = response.strip(ch)
    response = f" {response} "

    candidates = [c for c in choices if f"({c})" in response]
    if candidates:
        positions = [response.rfind(f"({c})") for c in candidates]
    else:
        candidates = [c for c in choices if f" {c} " in response]
        positions = [response.rfind(f" {c} ") for c in candidates]
        if not candidates and len(response) > 5:
            lowered = response.lower()
            candidates = [c for c in choices if options[c].lower() in lowered]
            positions = [lowered.rfind(options[c].lower()) for c in candidates]

    if not candidates:
        return random.Random(row_index).choice(choices), True
    # max() returns the first of equal maxima: ties resolve to the first candidate in choice order.
    best = max(range(len(candidates)), key=positions.__getitem__)
    return candidates[best], False


def multiple_choice_accuracy(
    responses: Sequence[str],
    golds: Sequence[str],
    options: Mapping[str, str] | Sequence[Mapping[str, str]],
    row_indices: Sequence[int] | None = None,
) -> float:
    """Accuracy (x100) of parsed choices against gold choices.

    ``options`` is either one mapping shared by all rows (Food101) or one mapping per row (PMC-VQA).
    ``row_indices`` are the rows' 0-based positions in the benchmark split (the random-fallback seeds); they
    default to ``0..n-1``.  Returns NaN for no rows (the reference would divide by zero).
    """
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold choices")
    indices = list(range(len(responses))) if row_indices is None else list(row_indices)
    per_row_options = [options] * len(responses) if isinstance(options, Mapping) else list(options)
    scores = []
    for response, gold, opts, idx in zip(responses, golds, per_row_options, indices, strict=True):
        choice, _ = parse_multiple_choice(response, opts, idx)
        scores.append(100.0 if str(choice) == str(gold) else 0.0)
    return sum(scores) / len(scores) if scores else math.nan


# ----------------------------------------------------------------------------------------------------------
# Multi-label (FoodSeg103, Nutrition5K)
# ----------------------------------------------------------------------------------------------------------


def parse_multi_label(response: str, class_names: Sequence[str] | Mapping[int, str]) -> list[int]:
    """Ids of the class names found in ``response``, in the order they were found.

    The response and names are lower-cased; names are visited longest first (stable: equal lengths keep the
    given/id order); a name that occurs as a substring is recorded and EVERY occurrence of it is deleted from
    the response before shorter names are tried ("fried rice" consumes the "rice" inside it; "licorice" too).
    A name listed twice is recorded under its FIRST id only (the second visit finds it deleted).
    A plain sequence is indexed from 0.
    """
    items = list(class_names.items()) if isinstance(class_names, Mapping) else list(enumerate(class_names))
    ordered = sorted(items, key=lambda item: len(item[1]), reverse=True)  # sorted() is stable with reverse
    text = response.lower()
    found: list[int] = []
    for class_id, name in ordered:
        needle = name.lower()
        if needle in text:
            found.append(class_id)
            text = text.replace(needle, "")
    return found


def _binary_vectors(
    pred_ids: Iterable[int], label_ids: Iterable[int], num_classes: int, first_id: int
) -> tuple[list[int], list[int]]:
    """Binary indicator vectors over ids ``first_id .. first_id + num_classes - 1`` (ids outside are ignored)."""
    span = range(first_id, first_id + num_classes)
    pred, gold = set(pred_ids), set(label_ids)
    return [1 if i in gold else 0 for i in span], [1 if i in pred else 0 for i in span]


def multi_label_f1(pred_ids: Iterable[int], label_ids: Iterable[int], num_classes: int, first_id: int = 0) -> float:
    """Binary F1 (scikit-learn, ``zero_division=1``) of predicted vs gold id sets, in [0, 1].

    Empty label set and empty prediction -> 1.0; empty label set with a non-empty prediction -> 0.0.
    """
    from sklearn.metrics import f1_score

    y_true, y_pred = _binary_vectors(pred_ids, label_ids, num_classes, first_id)
    return float(f1_score(y_true, y_pred, zero_division=1))


def multi_label_recall(pred_ids: Iterable[int], label_ids: Iterable[int], num_classes: int, first_id: int = 0) -> float:
    """Binary recall (scikit-learn, ``zero_division=1``) of predicted vs gold id sets, in [0, 1].

    An empty label set scores 1.0 whatever was predicted.
    """
    from sklearn.metrics import recall_score

    y_true, y_pred = _binary_vectors(pred_ids, label_ids, num_classes, first_id)
    return float(recall_score(y_true, y_pred, zero_division=1))


# ----------------------------------------------------------------------------------------------------------
# ROUGE-L (Recipe1M)
# ----------------------------------------------------------------------------------------------------------

_ROUGE = Rouge()


def rouge_l_f(prediction: str, label: str) -> float:
    """ROUGE-L F of the ``rouge`` package (``Rouge().get_scores(pred, label)[0]["rouge-l"]["f"]``), in [0, 1].

    Any exception scores 0.0, as in the reference: empty or punctuation-only texts ("Hypothesis is empty."), and
    also a RecursionError from the package's recursive LCS on very long sentences.  Package quirks kept: texts
    are split into sentences on "." and words are counted as SETS (repeated words count once).
    """
    try:
        return float(_ROUGE.get_scores(prediction, label)[0]["rouge-l"]["f"])
    except Exception:  # the reference catches everything and scores 0
        return 0.0


# ----------------------------------------------------------------------------------------------------------
# Per-row scoring and aggregation, by metric name
# ----------------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def aggregate_vqa(rows: Sequence[Mapping[str, float | bool]]) -> dict[str, float]:
    """VQA-RAD / SLAKE / PathVQA: ``open_recall`` and ``closed_accuracy`` (x100).

    ``open_recall`` is NaN when there is no OPEN row (the reference divides by zero there);
    ``closed_accuracy`` is 0.0 when there is no CLOSED row (as the reference).  Rows whose ``answer_type`` is
    neither OPEN nor CLOSED count in neither number.
    """
    open_scores = [float(r["score"]) for r in rows if r["open"]]
    closed_scores = [float(r["score"]) for r in rows if r["closed"]]
    open_mean = _mean(open_scores)
    closed_mean = _mean(closed_scores) if closed_scores else 0.0
    return {"open_recall": open_mean * 100, "closed_accuracy": closed_mean * 100}


def aggregate_mean(key: str) -> Callable[[Sequence[Mapping[str, float | bool]]], dict[str, float]]:
    """An aggregate returning ``{key: mean of per-row score x 100}`` (each row is scaled first, as the reference).

    Returns NaN for no rows (the reference would divide by zero).  When rows carry ``random_selected`` (multiple
    choice), ``random_selected_pct`` reports how many answers fell back to a random choice (a diagnostic, not a
    reference number).
    """

    def _aggregate(rows: Sequence[Mapping[str, float | bool]]) -> dict[str, float]:
        out = {key: _mean([float(r["score"]) * 100 for r in rows])}
        if rows and all("random_selected" in r for r in rows):
            out["random_selected_pct"] = _mean([100.0 if r["random_selected"] else 0.0 for r in rows])
        return out

    return _aggregate


def _score_vqa(prediction: str, row: Mapping[str, Any], row_index: int, labels: LabelSpace | None) -> RowScore:
    """OPEN rows -> :func:`open_recall`, CLOSED rows -> :func:`closed_hit` (``answer_type`` compared exactly)."""
    answer_type = row["answer_type"]
    label = str(row["label"])
    if answer_type == "OPEN":
        return {"open": True, "closed": False, "score": open_recall(prediction, label)}
    if answer_type == "CLOSED":
        return {"open": False, "closed": True, "score": closed_hit(prediction, label)}
    return {"open": False, "closed": False, "score": 0.0}


def _row_letter_options(row: Mapping[str, Any]) -> dict[str, str]:
    """Options stored in the row's fields ``A``, ``B``, ... (PMC-VQA: A-D), consecutive from ``A``."""
    options: dict[str, str] = {}
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if row.get(letter) is None:
            break
        options[letter] = str(row[letter])
    if not options:
        raise KeyError("multiple-choice row has no option fields A, B, ...; pass a ChoiceLabels for fixed options")
    return options


def _score_multiple_choice(
    prediction: str, row: Mapping[str, Any], row_index: int, labels: LabelSpace | None
) -> RowScore:
    """PMC-VQA (``labels=None``: options from fields A..D, gold letter in ``label``) or Food101 (ChoiceLabels)."""
    if labels is None:
        options: Mapping[str, str] = _row_letter_options(row)
        gold = str(row["label"])
    elif isinstance(labels, ChoiceLabels):
        options = labels.options
        raw = str(row["label"])
        if raw in labels.label_to_choice:
            gold = labels.label_to_choice[raw]
        elif raw in labels.options:
            gold = raw
        else:
            raise KeyError(f"gold label {raw!r} is not a known class name or choice")
    else:
        raise TypeError("multiple_choice needs ChoiceLabels (or None for per-row A..D options)")
    choice, random_selected = parse_multiple_choice(prediction, options, row_index)
    return {"score": 1.0 if str(choice) == gold else 0.0, "random_selected": random_selected}


def _multi_label_row(
    scorer: Callable[[Iterable[int], Iterable[int], int, int], float],
) -> Callable[[str, Mapping[str, Any], int, LabelSpace | None], RowScore]:
    def _score(prediction: str, row: Mapping[str, Any], row_index: int, labels: LabelSpace | None) -> RowScore:
        if not isinstance(labels, MultiLabelSpace):
            raise TypeError("multi-label metrics need a MultiLabelSpace (FoodSeg103 / Nutrition5K labels)")
        gold_ids = label_names_to_ids(row["label"], labels)
        pred_ids = parse_multi_label(prediction, labels.class_names)
        return {"score": scorer(pred_ids, gold_ids, labels.num_classes, labels.first_id)}

    return _score


def _score_rouge_l(prediction: str, row: Mapping[str, Any], row_index: int, labels: LabelSpace | None) -> RowScore:
    return {"score": rouge_l_f(prediction, str(row["label"]))}


ScoreRow = Callable[[str, Mapping[str, Any], int, "LabelSpace | None"], RowScore]
Aggregate = Callable[[Sequence[Mapping[str, float | bool]]], dict[str, float]]


@dataclass(frozen=True)
class Metric:
    """A named metric: ``score_row(prediction, row, row_index, labels)`` and ``aggregate(per_row_scores)``.

    ``row_index`` is the row's 0-based position in the benchmark split (the MC random-fallback seed).
    ``needs_labels`` tells the runner that a label space must be built from the configured label files.
    """

    name: str
    score_row: ScoreRow
    aggregate: Aggregate
    needs_labels: bool = False


SCORERS: dict[str, Metric] = {
    "vqa_open_closed": Metric("vqa_open_closed", _score_vqa, aggregate_vqa),
    "multiple_choice": Metric("multiple_choice", _score_multiple_choice, aggregate_mean("accuracy")),
    "multi_label_f1": Metric(
        "multi_label_f1", _multi_label_row(multi_label_f1), aggregate_mean("f1"), needs_labels=True
    ),
    "multi_label_recall": Metric(
        "multi_label_recall",
        _multi_label_row(multi_label_recall),
        aggregate_mean("recall"),
        needs_labels=True,
    ),
    "rouge_l": Metric("rouge_l", _score_rouge_l, aggregate_mean("rouge_l_f")),
}
"""Metric name (as written in task configs) -> :class:`Metric`."""


def aggregate(metric: str, rows: Sequence[Mapping[str, float | bool]]) -> dict[str, float]:
    """Aggregate per-row scores of ``metric`` into the task's reported numbers (x100)."""
    return SCORERS[metric].aggregate(rows)


def score_predictions(
    metric: str,
    predictions: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    labels: LabelSpace | None = None,
    row_indices: Sequence[int] | None = None,
) -> tuple[list[RowScore], dict[str, float]]:
    """Score aligned predictions/rows with the named metric; returns ``(per_row_scores, aggregate)``.

    ``row_indices`` default to ``0..n-1`` (the rows' positions in the benchmark split).
    """
    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions but {len(rows)} rows")
    spec = SCORERS[metric]
    indices = list(range(len(rows))) if row_indices is None else list(row_indices)
    per_row = [
        spec.score_row(pred, row, idx, labels) for pred, row, idx in zip(predictions, rows, indices, strict=True)
    ]
    return per_row, spec.aggregate(per_row)
