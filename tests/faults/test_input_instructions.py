"""Bad input in instruction files (training data: LLaMA-Factory/OpenAI ``messages`` or LLaVA ``conversations``).

Each case writes a .jsonl or .json file of valid records mixed with records carrying one fault, reads it with
:func:`read_conversations` under the drawn policy, and checks the exact outcome of every record: a valid one (odd
image modes and sizes included) is kept and its image decodes to RGB; a faulty one is skipped, counted under its
reason and written to the rejects file (``skip``) or stops the read with :class:`BadRecordError` naming file,
line / record index and field (``fail``). Nothing is dropped silently: kept + rejected == read.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mllm_da.data.records import (
    REASON_KEYS,
    BadFileError,
    BadRecordError,
    load_image,
    read_conversations,
)

from ._input_helpers import (
    IMAGE_CASE_NAMES,
    LINE_CASES,
    TEXT_CASES,
    ImageCase,
    assert_names,
    make_image_pool,
    outcome,
    record_file_cases,
    write_huge_image,
)

KIND = "instruction file"
_names = itertools.count()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ImageCase]]:
    return make_image_pool(tmp_path_factory.mktemp("instructions"))


# --------------------------------------------------------------------------------------------- records

_FORMS = ("messages", "conversations")
_ROLE = {"messages": "role", "conversations": "from"}
_CONTENT = {"messages": "content", "conversations": "value"}
_NAMES = {
    "messages": {"user": "user", "assistant": "assistant"},
    "conversations": {"user": "human", "assistant": "gpt"},
}
_ANSWERS = ("A red square.", "two circles and a star", "Yes.", "It is at the top left.")


def _record(form: str, rid: int, image: str | None, answer: str, question: str = "<image>\nWhat is shown?") -> dict:
    role, content, names = _ROLE[form], _CONTENT[form], _NAMES[form]
    turns = [{role: names["user"], content: question}, {role: names["assistant"], content: answer}]
    record: dict[str, Any] = {"id": f"r{rid}", form: turns}
    if form == "messages":
        record["images"] = [] if image is None else [image]
    else:
        record["image"] = [] if image is None else image
    return record


def _image_field(form: str) -> str:
    return "images[0]" if form == "messages" else "image"


#: a fault builder: (rng, form, image cases, record id) -> (the JSONL line, None or (reason key, field))
Builder = Callable[[random.Random, str, dict[str, ImageCase], int], tuple[bytes, tuple[str, str] | None]]
FAULTS: dict[str, Builder] = {}
#: faults that only a JSONL line can carry (a .json list is parsed whole)
LINE_ONLY: set[str] = set()


def _dump(record: Any) -> bytes:
    return json.dumps(record).encode()


def _valid(rng: random.Random, form: str, cases: dict[str, ImageCase], rid: int):
    return _dump(_record(form, rid, "rgb.png", rng.choice(_ANSWERS))), None


def _image_fault(name: str) -> Builder:
    def build(rng, form, cases, rid):
        case = cases[name]
        bad = None if case.valid else (case.records, _image_field(form))
        return _dump(_record(form, rid, case.path, rng.choice(_ANSWERS))), bad

    return build


def _text_fault(name: str) -> Builder:
    text, valid = TEXT_CASES[name]
    key = "not_utf8" if "\ud800" in text else "empty_turn"

    def build(rng, form, cases, rid):
        where = f"{form}[1].{_CONTENT[form]}"
        return _dump(_record(form, rid, "rgb.png", text)), None if valid else (key, where)

    return build


def _line_fault(name: str) -> Builder:
    line, key = LINE_CASES[name]
    LINE_ONLY.add(name)
    return lambda rng, form, cases, rid: (line, (key, "$"))


def _field_fault(change: Callable[[dict, str], None], key: str, where: Callable[[str], str]) -> Builder:
    def build(rng, form, cases, rid):
        record = _record(form, rid, "rgb.png", rng.choice(_ANSWERS))
        change(record, form)
        return _dump(record), (key, where(form))

    return build


FAULTS["valid record"] = _valid
for _name in IMAGE_CASE_NAMES:
    FAULTS[_name] = _image_fault(_name)
for _name in TEXT_CASES:
    FAULTS[f"answer {_name}"] = _text_fault(_name)
for _name in LINE_CASES:
    FAULTS[_name] = _line_fault(_name)


def _set_turn(index: int, key_of: dict[str, str], value: Any) -> Callable[[dict, str], None]:
    def change(record: dict, form: str) -> None:
        record[form][index][key_of[form]] = value

    return change


def _drop_turn_key(index: int, key_of: dict[str, str]) -> Callable[[dict, str], None]:
    def change(record: dict, form: str) -> None:
        del record[form][index][key_of[form]]

    return change


def _set(key_of: Callable[[str], str], value: Any) -> Callable[[dict, str], None]:
    def change(record: dict, form: str) -> None:
        record[key_of(form)] = value

    return change


FAULTS.update(
    {
        "field turns missing": _field_fault(lambda r, f: r.pop(f), "missing_field", lambda f: "messages"),
        "field turns not a list": _field_fault(_set(lambda f: f, "hello"), "wrong_type", lambda f: f),
        "field turns empty": _field_fault(_set(lambda f: f, []), "no_turns", lambda f: f),
        "field content a number": _field_fault(
            _set_turn(1, _CONTENT, 42), "wrong_type", lambda f: f"{f}[1].{_CONTENT[f]}"
        ),
        "field content missing": _field_fault(
            _drop_turn_key(1, _CONTENT), "missing_field", lambda f: f"{f}[1].{_CONTENT[f]}"
        ),
        "field role missing": _field_fault(_drop_turn_key(0, _ROLE), "missing_field", lambda f: f"{f}[0].{_ROLE[f]}"),
        "field role unknown": _field_fault(_set_turn(0, _ROLE, "bot"), "unknown_role", lambda f: f"{f}[0].{_ROLE[f]}"),
        "field role a list": _field_fault(_set_turn(0, _ROLE, ["user"]), "wrong_type", lambda f: f"{f}[0].{_ROLE[f]}"),
        "field turn not an object": _field_fault(
            lambda r, f: r[f].__setitem__(0, "hi"), "wrong_type", lambda f: f"{f}[0]"
        ),
        "field images a number": _field_fault(
            _set(lambda f: "images" if f == "messages" else "image", 7),
            "wrong_type",
            lambda f: "images" if f == "messages" else "image",
        ),
        "field image path a number": _field_fault(
            lambda r, f: r.__setitem__("images" if f == "messages" else "image", [3]),
            "wrong_type",
            lambda f: "images[0]" if f == "messages" else "image[0]",
        ),
        "field id an object": _field_fault(_set(lambda f: "id", {"a": 1}), "wrong_type", lambda f: "id"),
        "field both image keys": _field_fault(
            lambda r, f: r.__setitem__("image" if f == "messages" else "images", ["rgb.png"]),
            "ambiguous_form",
            lambda f: "$",
        ),
        "field both turn keys": _field_fault(
            lambda r, f: r.__setitem__("conversations" if f == "messages" else "messages", []),
            "ambiguous_form",
            lambda f: "$",
        ),
        "placeholder without image": _field_fault(
            lambda r, f: r.__setitem__("images" if f == "messages" else "image", []),
            "placeholder_mismatch",
            lambda f: "images" if f == "messages" else "image",
        ),
        "placeholder missing for the image": _field_fault(
            _set_turn(0, _CONTENT, "What is shown?"),
            "placeholder_mismatch",
            lambda f: "images" if f == "messages" else "image",
        ),
        "turn order assistant first": _field_fault(
            lambda r, f: r[f].reverse(), "first_not_user", lambda f: f"{f}[0].{_ROLE[f]}"
        ),
        "turn order ends with user": _field_fault(
            lambda r, f: r[f].pop(), "last_not_assistant", lambda f: f"{f}[0].{_ROLE[f]}"
        ),
    }
)


# --------------------------------------------------------------------------------------------- one case


def run_case(
    pool: tuple[Path, dict[str, ImageCase]],
    tally: Any,
    fault: str,
    rng: random.Random,
    n_valid: int,
    n_bad: int,
    as_jsonl: bool,
    policy: str,
) -> None:
    """Write ``n_valid`` valid records and ``n_bad`` records with ``fault`` (shuffled), read, check every record."""
    root, cases = pool
    as_jsonl = as_jsonl or fault in LINE_ONLY
    form = rng.choice(_FORMS)
    kinds = [True] * n_valid + [False] * n_bad
    rng.shuffle(kinds)
    lines, expected = [], []
    for rid, valid in enumerate(kinds):
        line, bad = (_valid if valid else FAULTS[fault])(rng, form, cases, rid)
        lines.append(line)
        expected.append(bad)
    folder = root.parent / "files"
    folder.mkdir(exist_ok=True)
    stem = f"case{next(_names)}"
    path = folder / f"{stem}{'.jsonl' if as_jsonl else '.json'}"
    if as_jsonl:
        path.write_bytes(b"".join(line + b"\n" for line in lines))
    else:
        path.write_text(json.dumps([json.loads(line) for line in lines]))
    rejects = folder / f"{stem}.rejects.jsonl"

    def where(i: int) -> str:
        return f"{path}:{i + 1}" if as_jsonl else f"{path}#{i + 1}"

    bad = [(i, b) for i, b in enumerate(expected) if b is not None]
    if policy == "fail" and bad:
        with pytest.raises(BadRecordError) as info:
            read_conversations(path, image_root=root, policy="fail", rejects_path=rejects)
        first, (key, field) = bad[0]
        assert info.value.key == key, (fault, str(info.value))
        assert_names(info.value, path, where(first), field)
        assert [json.loads(r)["reason_key"] for r in rejects.read_text().splitlines()] == [key]
    else:
        convs, report = read_conversations(path, image_root=root, policy=policy, rejects_path=rejects)
        assert report.read == len(lines) == report.kept + report.rejected
        assert report.rejected == len(bad) and report.reasons == Counter(b[0] for _, b in bad)
        assert set(report.reasons) <= set(REASON_KEYS)
        rows = [json.loads(r) for r in rejects.read_text().splitlines()]
        assert [(r["source"], r["reason_key"], r["field"]) for r in rows] == [(where(i), *b) for i, b in bad]
        assert [c.source for c in convs] == [where(i) for i, b in enumerate(expected) if b is None]
        for conv in convs:
            for image in conv.images:
                assert root.resolve() in image.parents and load_image(image).mode == "RGB"
    tally.record(KIND, fault, outcome(bool(bad), policy))


# --------------------------------------------------------------------------------------------- tests


@record_file_cases(FAULTS)
def test_instruction_file_faults(pool, fault_tally, fault, rng, n_valid, n_bad, as_jsonl, policy) -> None:
    run_case(pool, fault_tally, fault, rng, n_valid, n_bad, as_jsonl, policy)


@pytest.mark.parametrize("policy", ["skip", "fail"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_instruction_file_each_fault(pool, fault_tally, fault: str, policy: str) -> None:
    """Every fault class once per policy, between two valid records, so CI covers all of them every run."""
    run_case(pool, fault_tally, fault, random.Random(fault), 2, 1, True, policy)


def test_fault_catalogue_covers_every_image_case(pool) -> None:
    _, cases = pool
    assert {name for name in FAULTS if name.startswith("image ")} == set(cases)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("malformed", b'[{"messages": [', r"malformed JSON at line 1 column \d+"),
        ("not_utf8", b"[\xff]", "not valid UTF-8"),
        ("deep", b"[" * 100_000, "malformed JSON"),
        ("huge_int", b"[" + b"7" * 5000 + b"]", "malformed JSON"),
        ("object", b'{"messages": []}', "must hold a list of records, got object"),
    ],
)
def test_json_file_that_does_not_parse_is_one_error_naming_the_file(
    tmp_path: Path, fault_tally, name, content, message
) -> None:
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    for policy in ("skip", "fail"):
        with pytest.raises(BadFileError, match=message) as info:
            read_conversations(path, policy=policy)
        assert str(path) in str(info.value)
    fault_tally.record(KIND, f"file .json {name}", "error names file/line/field")


def test_wrong_suffix_missing_file_and_folder(tmp_path: Path, fault_tally) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(BadFileError, match=r"data\.csv: unsupported data file suffix"):
        read_conversations(tmp_path / "data.csv")
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: no such data file"):
        read_conversations(tmp_path / "nope.jsonl")
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder\.jsonl: no such data file"):
        read_conversations(tmp_path / "folder.jsonl")
    for fault in ("file wrong suffix", "file missing", "file is a folder"):
        fault_tally.record(KIND, fault, "error names file/line/field")


def test_huge_image_is_accepted_and_converted(tmp_path: Path, fault_tally) -> None:
    """A 12000×12000 PNG (over Pillow's warning size, under its bomb limit) decodes and is kept as RGB."""
    write_huge_image(tmp_path / "huge.png")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_record("messages", 0, "huge.png", "A grey field.")) + "\n")
    convs, report = read_conversations(path, policy="fail")
    assert report.kept == 1
    image = load_image(convs[0].images[0])
    assert image.mode == "RGB" and image.size == (12_000, 12_000)
    fault_tally.record(KIND, "image huge (12000×12000)", "accepted (valid input)")
