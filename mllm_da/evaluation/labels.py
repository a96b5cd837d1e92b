"""Label spaces of the food tasks (reference §5.1) and the loading of a benchmark's label file.

A benchmark YAML names its label space as the dotted path of a function that turns the label file's JSON into a
:class:`ChoiceLabels` (a fixed option set, Food101) or a :class:`MultiLabelSpace` (a class vocabulary, FoodSeg103
and Nutrition5K), e.g. ``label_space: mllm_da.evaluation.labels.food101_labels``; a new benchmark with its own
vocabulary brings its own function. Label files are never bundled with the code (``ADAMLLM_LABELS_DIR``).
"""

from __future__ import annotations

import importlib
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_da.evaluation.errors import BenchmarkError


@dataclass(frozen=True)
class ChoiceLabels:
    """A fixed option set for multiple choice (Food101).

    ``options``: choice -> option text, in choice order.  ``label_to_choice``: gold label text -> choice.
    """

    options: Mapping[str, str]
    label_to_choice: Mapping[str, str]


@dataclass(frozen=True)
class MultiLabelSpace:
    """A class vocabulary for multi-label parsing (FoodSeg103, Nutrition5K).

    ``class_names``: id -> name, in parse order for equal lengths (id order).  ``name_to_id``: label-side
    lookup, where a duplicated name maps to its LAST id.  Scores use ids ``first_id .. first_id+num_classes-1``.
    """

    class_names: Mapping[int, str]
    name_to_id: Mapping[str, int]
    first_id: int
    num_classes: int


LabelSpace = ChoiceLabels | MultiLabelSpace


def food101_labels(name_to_label: Mapping[str, int]) -> ChoiceLabels:
    """Food101's 101-way choice space from ``food101_name_to_label.json`` ({"apple_pie": 0, ...}).

    Choices are "0".."100"; option texts and gold labels use the names with underscores replaced by spaces
    (gold labels with underscores are accepted too).  Options are ordered by index, as the reference's choice
    list is; the reference's content pass follows the JSON order, which is the same order for the released file.
    """
    by_index = sorted(name_to_label.items(), key=lambda item: int(item[1]))
    if [int(v) for _, v in by_index] != list(range(len(by_index))):
        raise ValueError("Food101 label indices must be exactly 0..N-1")
    options = {str(int(v)): k.replace("_", " ") for k, v in by_index}
    label_to_choice: dict[str, str] = {}
    for name, index in by_index:
        label_to_choice[name] = str(int(index))
        label_to_choice[name.replace("_", " ")] = str(int(index))
    return ChoiceLabels(options=options, label_to_choice=label_to_choice)


_FOODSEG103_DROPPED_IDS = frozenset({0, 103})  # "background" and "other ingredients"


def foodseg103_labels(id2label: Mapping[str | int, str]) -> MultiLabelSpace:
    """FoodSeg103's classes 1..102 from ``foodseg103_id2label.json`` ({"0": "background", ...}).

    Ids 0 ("background") and 103 ("other ingredients") are dropped; the JSON order is kept as the parse order
    for equal name lengths.  Names are matched lower-cased when parsing ("French beans"), but gold labels are
    looked up exactly as written in the file.
    """
    class_names = {int(k): v for k, v in id2label.items() if int(k) not in _FOODSEG103_DROPPED_IDS}
    name_to_id = {name: class_id for class_id, name in class_names.items()}
    return MultiLabelSpace(class_names=class_names, name_to_id=name_to_id, first_id=1, num_classes=102)


def nutrition5k_labels(ingredients: Sequence[str]) -> MultiLabelSpace:
    """Nutrition5K's ingredient space from ``nutrition5k_ingredients.json`` (a 555-entry list), ids 0..554.

    Reference quirk kept: the list holds duplicates (e.g. "deprecated" four times).  Gold labels map a name to
    its LAST index while :func:`parse_multi_label` records its FIRST index, so a duplicated ingredient can never
    be a hit.
    """
    class_names = dict(enumerate(ingredients))
    name_to_id = {name: i for i, name in enumerate(ingredients)}  # later duplicates overwrite: LAST index
    return MultiLabelSpace(class_names=class_names, name_to_id=name_to_id, first_id=0, num_classes=len(ingredients))


def label_names_to_ids(names: Sequence[str], space: MultiLabelSpace) -> list[int]:
    """Gold ingredient names -> ids via ``space.name_to_id``; an unknown name raises KeyError (as the reference)."""
    if isinstance(names, str):
        raise TypeError("multi-label gold labels must be a list of names, not a string")
    ids = []
    for name in names:
        if name not in space.name_to_id:
            raise KeyError(f"gold label {name!r} is not in the class vocabulary")
        ids.append(space.name_to_id[name])
    return ids


LabelBuilder = Callable[[Any], LabelSpace]


def label_builder(path: str) -> LabelBuilder:
    """The function a ``label_space: package.module.function`` names; ValueError when there is none."""
    module_name, _, attribute = str(path).rpartition(".")
    try:
        builder = getattr(importlib.import_module(module_name), attribute) if module_name else None
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"label_space {path!r} names no importable function ({type(err).__name__}: {err})") from None
    if not callable(builder):
        raise ValueError(
            f"label_space {path!r} is not a function; name one as package.module.function, "
            "e.g. mllm_da.evaluation.labels.foodseg103_labels"
        )
    return builder


def label_kind(builder: LabelBuilder) -> type | None:
    """:class:`ChoiceLabels` or :class:`MultiLabelSpace` when the builder's return annotation says which, else None
    (then the kind is checked once the file is loaded)."""
    try:
        kind = typing.get_type_hints(builder).get("return")
    except Exception:  # an annotation that does not resolve says nothing
        return None
    return kind if kind in (ChoiceLabels, MultiLabelSpace) else None


def check_label_kind(where: str, metric: str, needs_labels: bool, kind: type | None) -> None:
    """A multi-label metric needs a class vocabulary; a fixed option set goes with multiple choice only."""
    if needs_labels and kind not in (None, MultiLabelSpace):
        raise ValueError(f"{where}: metric {metric} needs a label_space that builds a MultiLabelSpace")
    if kind is ChoiceLabels and metric != "multiple_choice":
        raise ValueError(
            f"{where}: label_space builds a ChoiceLabels (an option set): it goes with metric multiple_choice"
        )


def load_label_space(
    name: str, metric: str, needs_labels: bool, label_space: str | None, label_file: str | None
) -> LabelSpace | None:
    """The label vocabulary of benchmark ``name``, built by ``label_space`` from the JSON of ``label_file``."""
    if label_space is None:
        return None
    path = Path(str(label_file)).expanduser()
    if not path.is_file():
        raise BenchmarkError(
            f"benchmark {name!r}: label file {path} not found "
            "(set ADAMLLM_LABELS_DIR to the folder holding "
            "food101_name_to_label.json, foodseg103_id2label.json and nutrition5k_ingredients.json)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BenchmarkError(f"{path}: not a readable JSON label file ({err})") from err
    try:
        space = label_builder(label_space)(data)
    except (ValueError, TypeError, AttributeError) as err:
        raise BenchmarkError(f"{path}: not a valid {label_space} label file ({err})") from err
    try:
        check_label_kind(f"benchmark {name!r}", metric, needs_labels, type(space))
    except ValueError as err:
        raise BenchmarkError(str(err)) from None
    return space
