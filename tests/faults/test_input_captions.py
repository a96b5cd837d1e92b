"""Bad input in a domain's image-caption pairs, as both consumers read them.

* ``synth.py`` (:func:`mllm_da.synthesis.inputs.read_domain_inputs`): every record must be one image with a
  caption and a unique id; a refused record is counted in ``DomainInputs.skipped`` and written to
  ``<output_dir>/rejects/image_caption_pairs.jsonl`` (``bad_records=skip``) or raises :class:`BadRecordError`
  naming file, line and field (``fail``).
* ``train.py`` (:meth:`mllm_da.data.mixing.DataMix.build` with the caption-only mix): the same reader; records of
  two images or none are conversations it can train on, so only the reader's faults are refused.

Each case checks every record's fate: kept + rejected == read, rejects rows name line, reason and field.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, open_dict

from mllm_da.data.mixing import DataMix, DomainFiles
from mllm_da.data.records import BadRecordError, load_image
from mllm_da.synthesis.inputs import read_domain_inputs

from ._input_helpers import ImageCase, assert_names, make_image_pool, outcome, record_file_cases
from .test_input_instructions import FAULTS as RECORD_FAULTS
from .test_input_instructions import LINE_ONLY, _dump, _record

SYNTH, TRAIN = "image-caption pairs (synth.py)", "image-caption pairs (train.py)"
_names = itertools.count()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ImageCase]]:
    return make_image_pool(tmp_path_factory.mktemp("captions"))


@pytest.fixture(scope="module")
def synth_cfg(compose_cfg) -> DictConfig:
    return compose_cfg(["domain.prepare=null"], config_name="synth")


def _caption_record(rng: random.Random, form: str, rid: int, images: list[str]) -> bytes:
    record = _record(
        form,
        rid,
        None,
        rng.choice(["A blue circle.", "Two shapes on white."]),
        question="<image>" * len(images) + "\nDescribe the image.",
    )
    record["images" if form == "messages" else "image"] = images
    return _dump(record)


#: the reader's faults (images, caption texts, lines, fields) plus the record shapes only synthesis refuses
FAULTS = {
    name: build
    for name, build in RECORD_FAULTS.items()
    if name.startswith(("valid", "image ", "answer ", "line "))
    or name
    in (
        "field turns missing",
        "field content a number",
        "field role unknown",
        "placeholder without image",
        "field images a number",
    )
}
FAULTS = {name.replace("answer text", "caption text"): build for name, build in FAULTS.items()}
FAULTS["record without image"] = lambda rng, form, cases, rid: (_caption_record(rng, form, rid, []), None)
FAULTS["record with two images"] = lambda rng, form, cases, rid: (
    _caption_record(rng, form, rid, ["rgb.png", "cmyk.jpg"]),
    None,
)
FAULTS["duplicate id"] = lambda rng, form, cases, rid: (_caption_record(rng, form, 0, ["rgb.png"]), None)


def _shape(line: bytes) -> tuple[str, int]:
    """(id, number of images) of a record the reader accepts."""
    record = json.loads(line)
    images = record.get("images", record.get("image"))
    return str(record["id"]), (1 if isinstance(images, str) else len(images))


def run_case(
    pool: tuple[Path, dict[str, ImageCase]],
    synth_cfg: DictConfig,
    tally: Any,
    fault: str,
    rng: random.Random,
    n_valid: int,
    n_bad: int,
    as_jsonl: bool,
    policy: str,
) -> None:
    root, cases = pool
    as_jsonl = as_jsonl or fault.replace("caption text", "answer text") in LINE_ONLY
    form = rng.choice(["messages", "conversations"])
    kinds = [True] * n_valid + [False] * n_bad
    rng.shuffle(kinds)
    built = [
        (FAULTS["valid record"] if valid else FAULTS[fault])(rng, form, cases, rid) for rid, valid in enumerate(kinds)
    ]
    folder = root.parent / f"case{next(_names)}"
    folder.mkdir()
    path = folder / ("pairs.jsonl" if as_jsonl else "pairs.json")
    if as_jsonl:
        path.write_bytes(b"".join(line + b"\n" for line, _ in built))
    else:
        path.write_text(json.dumps([json.loads(line) for line, _ in built]))

    def where(i: int) -> str:
        return f"{path}:{i + 1}" if as_jsonl else f"{path}#{i + 1}"

    # what each consumer must do with each record: None (kept) or (reason, field)
    reader = [bad for _, bad in built]
    synth: list[tuple[str, str] | None] = []
    seen: set[str] = set()
    for line, bad in built:
        if bad is not None:
            synth.append(bad)
            continue
        rid, n_images = _shape(line)
        if rid in seen:
            synth.append(("duplicate_id", "id"))
            continue
        seen.add(rid)
        synth.append(None if n_images == 1 else ("not_one_image", "images"))

    # synth.py
    cfg = copy.deepcopy(synth_cfg)
    with open_dict(cfg):
        cfg.domain.image_caption_pairs, cfg.domain.image_root = str(path), str(root)
        cfg.bad_records = policy
        cfg.paths.output_dir = str(folder / "synth")
    rejects = folder / "synth" / "rejects" / "image_caption_pairs.jsonl"
    synth_bad = [(i, b) for i, b in enumerate(synth) if b is not None]
    if policy == "fail" and synth_bad:
        first_reader = next(((i, b) for i, b in enumerate(reader) if b is not None), None)
        i, (key, field) = first_reader or synth_bad[0]
        with pytest.raises(BadRecordError) as info:
            read_domain_inputs(cfg)
        assert info.value.key == key, (fault, str(info.value))
        assert_names(info.value, path, where(i), field)
    else:
        data = read_domain_inputs(cfg)
        assert data.counts == {
            "read": len(built),
            "kept": len(built) - len(synth_bad),
            "rejected": len(synth_bad),
            "beyond_limit": 0,
        }
        assert data.skipped == dict(Counter(b[0] for _, b in synth_bad))
        rows = [json.loads(r) for r in rejects.read_text().splitlines()]
        assert sorted((r["source"], r["reason_key"], r["field"]) for r in rows) == sorted(
            (where(i), *b) for i, b in synth_bad
        )
        assert [c.source for c in data.captions] == [where(i) for i, b in enumerate(synth) if b is None]
        for item in data.inputs:
            assert item.caption.strip() and load_image(item.image).mode == "RGB"
    tally.record(SYNTH, fault, outcome(bool(synth_bad), policy))

    # train.py, caption-only mix
    domain = DomainFiles("faults", str(root), str(path))
    reader_bad = [(i, b) for i, b in enumerate(reader) if b is not None]
    mix = DataMix(name="caption_only")
    if policy == "fail" and reader_bad:
        i, (key, field) = reader_bad[0]
        with pytest.raises(BadRecordError) as info:
            mix.build(domain, policy="fail", rejects_dir=folder / "train")
        assert info.value.key == key
        assert_names(info.value, path, where(i), field)
    else:
        convs = mix.build(domain, policy=policy, rejects_dir=folder / "train")
        report = mix.reports["image_caption_pairs"]
        assert (report["read"], report["kept"], report["rejected"]) == (
            len(built),
            len(built) - len(reader_bad),
            len(reader_bad),
        )
        assert report["reasons"] == dict(Counter(b[0] for _, b in reader_bad))
        rows = [json.loads(r) for r in (folder / "train" / "image_caption_pairs.jsonl").read_text().splitlines()]
        assert [(r["source"], r["reason_key"], r["field"]) for r in rows] == [(where(i), *b) for i, b in reader_bad]
        assert [c.source for c in convs] == [where(i) for i, b in enumerate(reader) if b is None]
    tally.record(TRAIN, fault, outcome(bool(reader_bad), policy))


@record_file_cases(FAULTS)
def test_image_caption_pair_faults(pool, synth_cfg, fault_tally, fault, rng, n_valid, n_bad, as_jsonl, policy) -> None:
    run_case(pool, synth_cfg, fault_tally, fault, rng, n_valid, n_bad, as_jsonl, policy)


@pytest.mark.parametrize("policy", ["skip", "fail"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_image_caption_pair_each_fault(pool, synth_cfg, fault_tally, fault: str, policy: str) -> None:
    """Every fault class once per policy, after a valid record (so a duplicate id is a duplicate)."""
    rng = random.Random(fault)
    run_case(pool, synth_cfg, fault_tally, fault, rng, 1, 2 if fault == "duplicate id" else 1, True, policy)
