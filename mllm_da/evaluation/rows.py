"""Checks of one benchmark row: its text fields against the metric and label space, and its image.

Each check returns ``(field, reason, message)`` for the first problem, or None; the reasons are the keys of
:data:`ROW_REASONS`, which ``scores.json`` counts skipped rows under. Images are embedded bytes or paths relative
to ``image_root``; a path that resolves outside the root is refused, as in :mod:`mllm_da.data.records`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mllm_da.data.records import BadImageError, load_image, locate_image, lone_surrogate, unwrap_image
from mllm_da.evaluation.labels import ChoiceLabels, LabelSpace, MultiLabelSpace
from mllm_da.evaluation.spec import BenchmarkSpec

RowProblem = tuple[str, str, str]
"""(field, reason key, message)"""

#: every reason a benchmark row can be refused for; scores.json counts skipped rows under these keys
ROW_REASONS: Mapping[str, str] = {
    "missing_field": "a field the metric needs is absent or null",
    "wrong_type": "a field has the wrong type (e.g. a multi-label label that is not a list of names)",
    "empty_prompt": "the prompt field is empty or only whitespace",
    "bad_answer_type": "answer_type is neither OPEN nor CLOSED (compared exactly, as the scorer does)",
    "unknown_label": "the gold label is not one of the options or not in the label vocabulary",
    "missing_image": "the image is null, empty, or names no file",
    "path_escape": "an image path that resolves outside image_root",
    "bad_image": "the image does not decode (truncated, not an image, a decompression bomb)",
    "not_utf8": "a JSONL line is not UTF-8, or a text field holds a lone surrogate",
    "malformed_json": "a JSONL line is not valid JSON",
    "not_object": "a row of a JSON/JSONL file is not a JSON object",
}


def image_reference(value: Any, root: Path | None) -> tuple[Path | bytes | None, tuple[str, str] | None]:
    """Turn a stored image value into bytes or a checked path; returns ``(ref, None)`` or ``(None, problem)``.

    Accepted values: bytes; ``{"bytes": ..., "path": ...}`` (``datasets.Image`` without decoding); a path
    string; a one-element list of any of these (the ShareGPT ``images`` form).
    """
    value, problem = unwrap_image(value)
    if value is None:
        return None, ("missing_image", str(problem))
    if isinstance(value, bytes):
        return value, None
    if "\x00" in value:
        return None, ("missing_image", "the image path contains a NUL byte")
    at = lone_surrogate(value)
    if at is not None:
        return None, ("not_utf8", f"the image path holds a lone surrogate at character {at}")
    if root is None:
        return None, ("missing_image", f"image path {value!r:.200} given but the benchmark has no image_root")
    try:
        resolved, inside, is_file = locate_image(root.resolve(), value)  # an absolute path inside the root is fine
    except (OSError, RuntimeError) as err:  # too long a name, a symlink loop
        return None, (
            "missing_image",
            f"cannot resolve image path {value!r:.200} ({type(err).__name__}: {err})",
        )
    if not inside:
        return None, ("path_escape", f"image path {value!r:.200} resolves outside image_root {root}")
    if not is_file:
        return None, ("missing_image", f"image file {resolved} does not exist")
    return resolved, None


def _lone_surrogate_problem(fields: Mapping[str, Any]) -> RowProblem | None:
    for name, value in fields.items():
        texts = value if isinstance(value, (list, tuple)) else [value]
        for text in texts:
            at = lone_surrogate(text) if isinstance(text, str) else None
            if at is not None:
                return str(name), "not_utf8", f"the text holds a lone surrogate at character {at}"
    return None


def _prompt_problem(prompt: Any, spec: BenchmarkSpec) -> RowProblem | None:
    if prompt is None:
        return spec.prompt_field, "missing_field", "the prompt is missing"
    if not isinstance(prompt, str):
        return spec.prompt_field, "wrong_type", f"the prompt must be a string, got {type(prompt).__name__}"
    if not prompt.strip():
        return spec.prompt_field, "empty_prompt", "the prompt is empty"
    return None


def _answer_type_problem(fields: Mapping[str, Any]) -> RowProblem | None:
    answer_type = fields.get("answer_type")
    if answer_type is None:
        return "answer_type", "missing_field", "VQA rows need answer_type OPEN or CLOSED"
    if answer_type not in ("OPEN", "CLOSED"):
        return "answer_type", "bad_answer_type", f"answer_type must be OPEN or CLOSED, got {answer_type!r}"
    return None


def _multi_label_problem(label: Any, spec: BenchmarkSpec, labels: LabelSpace | None) -> RowProblem | None:
    if not isinstance(label, (list, tuple)) or not all(isinstance(n, str) for n in label):
        return (
            spec.label_field,
            "wrong_type",
            f"a multi-label label must be a list of names, got {label!r:.80}",
        )
    assert isinstance(labels, MultiLabelSpace)
    unknown = [n for n in label if n not in labels.name_to_id]
    if unknown:
        return spec.label_field, "unknown_label", f"label name(s) {unknown} not in the {spec.name} label list"
    return None


def _option_letters_problem(fields: Mapping[str, Any], label: Any, spec: BenchmarkSpec) -> RowProblem | None:
    """Rows with options in fields A, B, ...: the label must be one of their letters."""
    if fields.get("A") is None:
        return "A", "missing_field", "multiple-choice rows need option fields A, B, ..."
    letters = []
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        option = fields.get(letter)
        if option is None:
            break
        if not isinstance(option, (str, int, float)) or isinstance(option, bool):
            return letter, "wrong_type", f"an option must be a string, got {type(option).__name__}"
        letters.append(letter)
    if str(label) not in letters:
        return spec.label_field, "unknown_label", f"label {label!r} is not one of the options {letters}"
    return None


def _label_problem(
    fields: Mapping[str, Any], label: Any, spec: BenchmarkSpec, labels: LabelSpace | None
) -> RowProblem | None:
    """The label against the metric: a list of known names (multi-label), a text, an option (multiple choice)."""
    if spec.metric in ("multi_label_f1", "multi_label_recall"):
        return _multi_label_problem(label, spec, labels)
    if not isinstance(label, (str, int)) or isinstance(label, bool):
        return spec.label_field, "wrong_type", f"the label must be a string, got {type(label).__name__}"
    if spec.metric != "multiple_choice":
        return None
    if isinstance(labels, ChoiceLabels):
        if str(label) not in labels.label_to_choice and str(label) not in labels.options:
            return spec.label_field, "unknown_label", f"label {label!r} is not a {spec.name} class"
        return None
    return _option_letters_problem(fields, label, spec)


def check_row(fields: Mapping[str, Any], spec: BenchmarkSpec, labels: LabelSpace | None) -> RowProblem | None:
    """``(field, reason, message)`` for the first problem of a row's text fields, or None."""
    problem = _lone_surrogate_problem(fields) or _prompt_problem(fields.get(spec.prompt_field), spec)
    if problem is not None:
        return problem
    label = fields.get(spec.label_field)
    if label is None:
        return spec.label_field, "missing_field", "the label is missing"
    if spec.metric == "vqa_open_closed":
        problem = _answer_type_problem(fields)
        if problem is not None:
            return problem
    return _label_problem(fields, label, spec, labels)


def image_problem(ref: Path | bytes, decoded: dict[Path | str, tuple[str, str] | None]) -> tuple[str, str] | None:
    """``("bad_image", message)`` when the image does not decode, else None (cached per picture)."""
    key: Path | str = ref if isinstance(ref, Path) else hashlib.sha1(ref).hexdigest()
    if key not in decoded:
        try:
            load_image(ref)
            decoded[key] = None
        except BadImageError as err:
            decoded[key] = ("bad_image", str(err))
    return decoded[key]
