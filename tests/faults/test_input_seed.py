"""Bad input in the synthesizer's seed files: the three reference files, merged by image name (§1.2).

ALLaVA layout: ``ALLaVA-Caption-VFLAN-4V.json`` (captions) and ``ALLaVA-Instruct-VFLAN-4V.json`` (informative
QA); VisionFLAN layout: ``metadata.json`` (precise QA with ``task_name``). Each case writes the three files for a
few valid images plus one image carrying a fault (in one file's record, in its image, or in how its records
merge), builds the seed set with :func:`build_seed`, and checks every record's fate:

* a bad record or image: skipped, counted, in ``seed_rejects.jsonl`` (``skip``) or :class:`BadRecordError` naming
  file#index and field (``fail``);
* a record the merge leaves out (no caption, no informative QA, a second caption): counted in ``report.unused``
  and in the rejects file, under either policy;
* everything else is merged; read == rejected + merged + unused, and the written seed set reads back.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mllm_da.data.records import BadFileError, BadRecordError, load_image, read_conversations
from mllm_da.synthesis.seed import build_seed
from mllm_da.synthesis.visionflan import SEED_REASONS

from ._input_helpers import SKIPPED, TEXT_CASES, ImageCase, assert_names, make_image_pool, outcome

FILES = ("caption", "precise", "informative")
FILE_NAMES = {
    "caption": "ALLaVA-Caption-VFLAN-4V.json",
    "precise": "metadata.json",
    "informative": "ALLaVA-Instruct-VFLAN-4V.json",
}
KINDS = {
    "caption": "seed file: ALLaVA caption",
    "precise": "seed file: VisionFLAN metadata",
    "informative": "seed file: ALLaVA instruct",
    None: "seed files: images and merge",
}
#: valid images that the fault-free entries use (distinct base names; rgb.png is left to the absolute-path case)
VALID_IMAGES = (
    "one_by_one.png",
    "tall.png",
    "cmyk.jpg",
    "sixteen_bit.png",
    "animated.gif",
    "animated_png.png",
    "palette_transparency.png",
    "rgba.png",
)
_names = itertools.count()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ImageCase]]:
    return make_image_pool(tmp_path_factory.mktemp("seed"))


def _qa(image: str, question: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": Path(image).stem,
        "image": image,
        **extra,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


@dataclass
class Entry:
    """One image's records in each file, and what must become of them."""

    records: dict[str, list[Any]]
    #: (file, position among this entry's records of that file, reason, field), in the order the reader meets them
    rejected: list[tuple[str, int, str, str]] = field(default_factory=list)
    unused: Counter[str] = field(default_factory=Counter)
    example: bool = True
    no_qa: int = 0  # counted once per image in report.dropped["no_precise_or_informative_qa"]


def valid_entry(image: str, rng: random.Random) -> Entry:
    return Entry(
        {
            "caption": [_qa(image, "<image>\nDescribe the image in detail.", rng.choice(["A red square.", "Shapes."]))],
            "precise": [
                _qa(
                    image,
                    rng.choice(["<image>\nWhat colour?", "How many?\n<image>", "Which one?"]),
                    "red",
                    task_name=rng.choice(["colour", "count"]),
                )
            ],
            "informative": [_qa(image, "<image>\nWhat colour?", "The square is red, so the answer is red.")],
        }
    )


def _image_entry(name: str):
    def build(rng: random.Random, cases: dict[str, ImageCase]) -> Entry:
        case = cases[name]
        entry = valid_entry(case.path, rng)
        if case.seed == "bad_path":  # refused when each record is read
            entry.rejected = [(f, 0, "bad_path", "image") for f in FILES]
            entry.example = False
        elif case.seed is not None:  # refused at the merge: the caption record names it, its QA is left out
            entry.rejected = [("caption", 0, case.seed, "image")]
            entry.unused = Counter({"image_refused": 2})
            entry.example = False
        return entry

    return build


def _record_fault(file: str, change, key: str, where: str):
    """One record of ``file`` broken by ``change``; the image's other records are left out by the merge."""

    def build(rng: random.Random, cases: dict[str, ImageCase]) -> Entry:
        entry = valid_entry("rgb_copy.png", rng)
        entry.records[file][0] = change(entry.records[file][0])
        entry.rejected = [(file, 0, key, where)]
        entry.example = False
        if file == "caption":
            entry.unused = Counter({"no_caption": 2})
        else:
            entry.unused = Counter({"no_precise_or_informative_qa": 2})
            entry.no_qa = 1
        return entry

    return build


def _set(path: tuple, value: Any):
    def change(record: Any) -> Any:
        target = record
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return record

    return change


def _drop(path: tuple):
    def change(record: Any) -> Any:
        target = record
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
        return record

    return change


FAULTS: dict[str, Any] = {"valid image": lambda rng, cases: valid_entry("rgb_copy.png", rng)}
for _name in (
    "image rgb",
    "image one_by_one",
    "image cmyk",
    "image sixteen_bit",
    "image animated",
    "image animated_png",
    "image palette_transparency",
    "image la",
    "image one_bit",
    "image symlink inside root",
    "image absolute path inside root",
    "image truncated",
    "image header only",
    "image empty file",
    "image not an image",
    "image decompression bomb header",
    "image missing",
    "image path traversal ../",
    "image absolute path outside root",
    "image symlink out of root",
    "image path is a folder",
    "image path with NUL byte",
    "image path too long",
):
    FAULTS[_name] = _image_entry(_name)
_ANSWER = {"caption": "caption", "precise": "precise answer", "informative": "informative answer"}
for _file in FILES:
    for _text, (_value, _valid) in TEXT_CASES.items():
        if _valid:
            FAULTS[f"{_ANSWER[_file]} {_text}"] = lambda rng, cases, _f=_file, _v=_value: _with(
                valid_entry("rgb_copy.png", rng), _f, _v
            )
        else:
            _key = "not_utf8" if "\ud800" in _value else "empty_turn"
            FAULTS[f"{_ANSWER[_file]} {_text}"] = _record_fault(
                _file, _set(("conversations", 1, "value"), _value), _key, "conversations[1].value"
            )
    _prefix = f"{_file} record"
    FAULTS.update(
        {
            f"{_prefix} not an object": _record_fault(_file, lambda r: ["not", "an", "object"], "not_object", "$"),
            f"{_prefix} without image": _record_fault(_file, _drop(("image",)), "missing_field", "image"),
            f"{_prefix} image a number": _record_fault(_file, _set(("image",), 12), "wrong_type", "image"),
            f"{_prefix} odd number of turns": _record_fault(
                _file, lambda r: {**r, "conversations": r["conversations"][:1]}, "wrong_type", "conversations"
            ),
            f"{_prefix} turn not an object": _record_fault(
                _file, _set(("conversations", 1), "gpt says hi"), "wrong_type", "conversations[1]"
            ),
            f"{_prefix} turn without value": _record_fault(
                _file, _drop(("conversations", 1, "value")), "missing_field", "conversations[1].value"
            ),
            f"{_prefix} value a list": _record_fault(
                _file, _set(("conversations", 0, "value"), ["q"]), "wrong_type", "conversations[0].value"
            ),
            f"{_prefix} misplaced <image> marker": _record_fault(
                _file,
                _set(("conversations", 0, "value"), "What <image> is this?"),
                "bad_marker",
                "conversations[0].value",
            ),
            f"{_prefix} empty question": _record_fault(
                _file, _set(("conversations", 0, "value"), "<image>\n  "), "empty_turn", "conversations[0].value"
            ),
        }
    )
FAULTS["precise record task_name an object"] = _record_fault(
    "precise", _set(("task_name",), {"name": "x"}), "wrong_type", "task_name"
)


def _with(entry: Entry, file: str, value: str) -> Entry:
    entry.records[file][0]["conversations"][1]["value"] = value
    return entry


def _no_informative(rng: random.Random, cases: dict[str, ImageCase]) -> Entry:
    entry = valid_entry("rgb_copy.png", rng)
    entry.records["informative"] = []
    entry.unused, entry.example, entry.no_qa = Counter({"no_precise_or_informative_qa": 2}), False, 1
    return entry


def _no_caption(rng: random.Random, cases: dict[str, ImageCase]) -> Entry:
    entry = valid_entry("rgb_copy.png", rng)
    entry.records["caption"] = []
    entry.unused, entry.example = Counter({"no_caption": 2}), False
    return entry


def _two_captions(rng: random.Random, cases: dict[str, ImageCase]) -> Entry:
    entry = valid_entry("rgb_copy.png", rng)
    entry.records["caption"].append(_qa("allava/rgb_copy.png", "<image>\nDescribe.", "A later caption."))
    entry.unused = Counter({"duplicate_caption": 1})
    return entry


def _more_qa(rng: random.Random, cases: dict[str, ImageCase]) -> Entry:
    entry = valid_entry("rgb_copy.png", rng)
    entry.records["precise"].append(_qa("vf/rgb_copy.png", "Shape?", "square", task_name="shape"))
    entry.records["informative"].append(_qa("rgb_copy.png", "Shape?", "It has four equal sides: a square."))
    return entry


FAULTS.update(
    {
        "merge image without informative QA": _no_informative,
        "merge QA without caption": _no_caption,
        "merge second caption of an image": _two_captions,
        "merge several QA records of an image": _more_qa,
    }
)


def _kind(fault: str) -> str:
    for file in FILES:
        if fault.startswith((f"{file} ", _ANSWER[file] + " ")):
            return KINDS[file]
    return KINDS[None]


def run_case(
    pool: tuple[Path, dict[str, ImageCase]],
    tally: Any,
    fault: str,
    rng: random.Random,
    n_valid: int,
    position: int,
    policy: str,
) -> None:
    root, cases = pool
    if not (root / "rgb_copy.png").exists():
        (root / "rgb_copy.png").write_bytes((root / "rgb.png").read_bytes())
        (root / "vf").mkdir()
    faulty = FAULTS[fault](rng, cases)
    taken = {
        Path(r["image"]).name
        for f in FILES
        for r in faulty.records[f]
        if isinstance(r, dict) and "image" in r and isinstance(r["image"], str)
    }
    names = [name for name in VALID_IMAGES if name not in taken]
    rng.shuffle(names)
    entries = [valid_entry(name, rng) for name in names[:n_valid]]
    entries.insert(min(position, len(entries)), faulty)
    folder = root.parent / f"case{next(_names)}"
    folder.mkdir()
    files = {f: [] for f in FILES}
    where: dict[tuple[int, str, int], str] = {}
    for e, entry in enumerate(entries):
        for f in FILES:
            for k, record in enumerate(entry.records[f]):
                files[f].append(record)
                where[(e, f, k)] = f"{folder / FILE_NAMES[f]}#{len(files[f])}"
    for f in FILES:
        (folder / FILE_NAMES[f]).write_text(json.dumps(files[f]))
    settings = {
        "source": "visionflan",
        "blank_fraction": 0.0,
        "dev_fraction": 0.0,
        "visionflan": {**{f"{f}_file": str(folder / FILE_NAMES[f]) for f in FILES}, "image_root": str(root)},
    }
    rejected = [(where[(e, f, k)], key, fld) for e, entry in enumerate(entries) for f, k, key, fld in entry.rejected]
    # the reader reads the caption file, then the precise, then the informative one; images are checked last
    order = sorted(
        rejected,
        key=lambda r: (FILES.index(next(f for f in FILES if FILE_NAMES[f] in r[0])), int(r[0].rsplit("#", 1)[1])),
    )
    record_level = [r for r in order if not (r[2] == "image" and r[1] != "bad_path")]
    out = folder / "seed"
    if policy == "fail" and rejected:
        source, key, fld = (record_level or order)[0]
        with pytest.raises(BadRecordError) as info:
            build_seed(out, settings, policy="fail")
        assert info.value.key == key, (fault, str(info.value))
        path, index = source.rsplit("#", 1)
        assert_names(info.value, path, f"#{index}", fld)
        rows = [json.loads(r) for r in (out / "seed_rejects.jsonl").read_text().splitlines()]
        assert rows[-1]["source"] == source and rows[-1]["reason_key"] == key
    else:
        seed, report = build_seed(out, settings, policy=policy)
        unused = sum((e.unused for e in entries), Counter())
        examples = sum(e.example for e in entries)
        total = sum(len(e.records[f]) for e in entries for f in FILES)
        assert report.read == total == report.rejected + report.merged + sum(report.unused.values())
        assert report.rejected == len(rejected) and report.unused == dict(unused)
        assert set(report.unused) | set(report.dropped) <= set(SEED_REASONS)
        bad_keys = Counter(key for _, key, _ in rejected)
        no_qa = sum(e.no_qa for e in entries)
        assert report.dropped == dict(bad_keys + Counter({"no_precise_or_informative_qa": no_qa}))
        rows = [json.loads(r) for r in (out / "seed_rejects.jsonl").read_text().splitlines()]
        assert sorted(
            (r["source"], r["reason_key"], r["field"]) for r in rows if r["reason_key"] in bad_keys
        ) == sorted(rejected)
        assert Counter(r["reason_key"] for r in rows) == bad_keys + unused
        assert report.examples == report.train == examples
        convs, back = read_conversations(seed.train, image_root=seed.image_root, policy="fail")
        assert back.kept == examples
        for conv in convs:
            assert load_image(conv.images[0]).mode == "RGB" and conv.turns[1].content.strip()
    left_out = any(e.unused for e in entries)
    tally.record(_kind(fault), fault, outcome(bool(rejected), policy) if rejected or not left_out else SKIPPED)


@given(
    fault=st.sampled_from(sorted(FAULTS)),
    rng=st.randoms(use_true_random=False),
    n_valid=st.integers(1, 3),
    position=st.integers(0, 3),
    policy=st.sampled_from(["skip", "fail"]),
)
def test_seed_file_faults(pool, fault_tally, fault, rng, n_valid, position, policy) -> None:
    run_case(pool, fault_tally, fault, rng, n_valid, position, policy)


@pytest.mark.parametrize("policy", ["skip", "fail"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_seed_file_each_fault(pool, fault_tally, fault: str, policy: str) -> None:
    run_case(pool, fault_tally, fault, random.Random(fault), 1, 1, policy)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("malformed", b'[{"image": ', r"malformed JSON at line 1 column \d+"),
        ("not_utf8", b'[{"image": "\xff"}]', "not valid UTF-8"),
        ("deep", b"[" * 100_000, "malformed JSON"),
        ("huge_int", b"[" + b"1" * 5000 + b"]", "malformed JSON"),
        ("object", b'{"image": "a.png"}', "a seed file must hold a list of records, got object"),
    ],
)
def test_seed_file_that_does_not_parse_names_the_file(
    pool, fault_tally, name: str, content: bytes, message: str
) -> None:
    root, _ = pool
    folder = root.parent / f"file_{name}"
    folder.mkdir()
    entry = valid_entry("tall.png", random.Random(0))
    for f in FILES:
        (folder / FILE_NAMES[f]).write_text(json.dumps(entry.records[f]))
    broken = "precise"
    (folder / FILE_NAMES[broken]).write_bytes(content)
    settings = {
        "source": "visionflan",
        "blank_fraction": 0.0,
        "dev_fraction": 0.0,
        "visionflan": {**{f"{f}_file": str(folder / FILE_NAMES[f]) for f in FILES}, "image_root": str(root)},
    }
    for policy in ("skip", "fail"):
        with pytest.raises(BadFileError, match=message) as info:
            build_seed(folder / "seed", settings, policy=policy)
        assert str(folder / FILE_NAMES[broken]) in str(info.value)
    fault_tally.record(KINDS["precise"], f"file {name}", "error names file/line/field")


def test_no_usable_image_is_an_error_naming_the_rejects(pool, fault_tally) -> None:
    root, _ = pool
    folder = root.parent / "all_bad"
    folder.mkdir()
    entry = valid_entry("no_such.png", random.Random(0))
    for f in FILES:
        (folder / FILE_NAMES[f]).write_text(json.dumps(entry.records[f]))
    settings = {
        "source": "visionflan",
        "blank_fraction": 0.0,
        "dev_fraction": 0.0,
        "visionflan": {**{f"{f}_file": str(folder / FILE_NAMES[f]) for f in FILES}, "image_root": str(root)},
    }
    with pytest.raises(ValueError, match=r"no usable image in .*ALLaVA-Caption.*missing_image.*seed_rejects\.jsonl"):
        build_seed(folder / "seed", settings, policy="skip")
    fault_tally.record(KINDS[None], "every image refused", "error names file/line/field")
