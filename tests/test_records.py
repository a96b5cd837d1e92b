"""Records are validated once at the edge: every bad record is rejected with file, line and field, none silently."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from mllm_da.data.records import (
    IMAGE_PLACEHOLDER,
    REASON_KEYS,
    BadImageError,
    BadRecordError,
    Conversation,
    Turn,
    load_image,
    read_conversations,
    write_sharegpt,
)

# --------------------------------------------------------------------------------------------- helpers


def png(path: Path, size: tuple[int, int] = (4, 3), color: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def openai_record(images: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    images = ["a.png"] if images is None else images
    record = {
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": IMAGE_PLACEHOLDER * len(images) + "What is shown?"},
            {"role": "assistant", "content": "A square."},
            {"role": "user", "content": "Colour?"},
            {"role": "assistant", "content": "Dark blue."},
        ],
        "images": images,
    }
    record.update(extra)
    return record


def llava_record(image: str | list[str] | None = "a.png", **extra: Any) -> dict[str, Any]:
    count = 0 if image is None else 1 if isinstance(image, str) else len(image)
    record: dict[str, Any] = {
        "id": "llava-1",
        "conversations": [
            {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n" * count + "Describe it."},
            {"from": "gpt", "value": "A small square."},
        ],
    }
    if image is not None:
        record["image"] = image
    record.update(extra)
    return record


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows: list[Any]) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    png(tmp_path / "a.png")
    png(tmp_path / "sub" / "b.png", (2, 2), (200, 0, 0))
    return tmp_path


def only_conversation(path: Path, **kwargs: Any) -> Conversation:
    convs, report = read_conversations(path, **kwargs)
    assert report.rejected == 0, report.reasons
    assert len(convs) == 1
    return convs[0]


# --------------------------------------------------------------------------------------------- good records


def test_openai_form_jsonl(root: Path) -> None:
    path = write_jsonl(root / "data.jsonl", [openai_record(["a.png", "sub/b.png"])])
    conv = only_conversation(path)
    assert conv.id == "data:0"
    assert conv.source == f"{path}:1"
    assert [t.role for t in conv.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert conv.images == ((root / "a.png").resolve(), (root / "sub" / "b.png").resolve())


def test_llava_form_json_list(root: Path) -> None:
    records = [llava_record(), llava_record(["a.png", "sub/b.png"], id=7), llava_record(None, id="text-only")]
    path = write_json(root / "data.json", records)
    convs, report = read_conversations(path)
    assert (report.read, report.kept, report.rejected) == (3, 3, 0)
    assert [c.id for c in convs] == ["llava-1", "7", "text-only"]
    assert [c.source for c in convs] == [f"{path}#1", f"{path}#2", f"{path}#3"]
    assert convs[0].turns == (Turn("user", "<image>\nDescribe it."), Turn("assistant", "A small square."))
    assert convs[2].images == ()


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("make", [openai_record, llava_record])
def test_round_trip(root: Path, suffix: str, make: Any) -> None:
    rows = [make(), make(["a.png", "sub/b.png"]), make([])]
    path = root / f"in{suffix}"
    (write_json if suffix == ".json" else write_jsonl)(path, rows)
    first, report = read_conversations(path)
    assert report.kept == 3
    out = write_sharegpt(root / "out" / "sharegpt.json", first, root)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written[1]["images"] == ["a.png", "sub/b.png"]
    assert set(written[0]) == {"id", "messages", "images"}
    again, _ = read_conversations(out, root)
    assert again == first
    assert [c.source for c in again] == [f"{out}#{i}" for i in (1, 2, 3)]


def test_blank_lines_bom_and_crlf(root: Path) -> None:
    line = json.dumps(llava_record())
    path = root / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\r\n\n   \n" + line.encode() + b"\r\n")
    convs, report = read_conversations(path)
    assert (report.read, report.kept) == (2, 2)
    assert [c.source for c in convs] == [f"{path}:1", f"{path}:4"]


def test_empty_files(tmp_path: Path) -> None:
    for name in ("e.jsonl", "e.json"):
        (tmp_path / name).write_text("", encoding="utf-8")
        convs, report = read_conversations(tmp_path / name, policy="fail")
        assert convs == [] and (report.read, report.kept, report.rejected) == (0, 0, 0)
    write_json(tmp_path / "l.json", [])
    assert read_conversations(tmp_path / "l.json")[0] == []


def test_prompt_only_allowed_when_final_assistant_not_required(root: Path) -> None:
    record = {"messages": [{"role": "user", "content": "<image>Q?"}], "images": ["a.png"]}
    path = write_jsonl(root / "p.jsonl", [record])
    assert read_conversations(path)[1].reasons == {"last_not_assistant": 1}
    assert only_conversation(path, require_final_assistant=False).turns == (Turn("user", "<image>Q?"),)


def test_absolute_path_inside_root_and_explicit_root(root: Path) -> None:
    data = root / "meta" / "d.jsonl"
    data.parent.mkdir()
    write_jsonl(data, [openai_record([str(root / "a.png")]), openai_record(["sub/b.png"])])
    convs, report = read_conversations(data, root)
    assert report.kept == 2
    assert convs[0].images == ((root / "a.png").resolve(),)


# --------------------------------------------------------------------------------------------- bad records

BAD_RECORDS: list[tuple[str, Any, str, str]] = [
    # (case id, record or raw line, reason key, field)
    ("not_object", [1, 2], "not_object", "$"),
    ("string_record", "hello", "not_object", "$"),
    ("both_forms", {**openai_record(), "conversations": []}, "ambiguous_form", "$"),
    ("no_turns_key", {"images": []}, "missing_field", "messages"),
    ("messages_not_list", {"messages": "hi", "images": []}, "wrong_type", "messages"),
    ("messages_empty", {"messages": [], "images": []}, "no_turns", "messages"),
    ("turn_not_object", {"messages": ["hi"]}, "wrong_type", "messages[0]"),
    ("turn_no_role", {"messages": [{"content": "hi"}]}, "missing_field", "messages[0].role"),
    ("role_not_string", {"messages": [{"role": 1, "content": "hi"}]}, "wrong_type", "messages[0].role"),
    ("unknown_role", {"messages": [{"role": "robot", "content": "hi"}]}, "unknown_role", "messages[0].role"),
    (
        "unknown_from",
        {"conversations": [{"from": "bot", "value": "x"}]},
        "unknown_role",
        "conversations[0].from",
    ),
    ("no_content", {"messages": [{"role": "user"}]}, "missing_field", "messages[0].content"),
    (
        "content_parts",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        "wrong_type",
        "messages[0].content",
    ),
    (
        "empty_turn",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " \n\t"}]},
        "empty_turn",
        "messages[1].content",
    ),
    (
        "not_alternating",
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        "not_alternating",
        "messages[1].role",
    ),
    (
        "first_not_user",
        {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
        "first_not_user",
        "messages[1].role",
    ),
    (
        "second_system",
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "system", "content": "t"},
                {"role": "user", "content": "u"},
            ]
        },
        "misplaced_system",
        "messages[1].role",
    ),
    ("system_only", {"messages": [{"role": "system", "content": "s"}]}, "no_turns", "messages"),
    (
        "last_not_assistant",
        {
            "conversations": [
                {"from": "human", "value": "a"},
                {"from": "gpt", "value": "b"},
                {"from": "human", "value": "c"},
            ]
        },
        "last_not_assistant",
        "conversations[2].from",
    ),
    ("too_few_images", openai_record(["a.png"]) | {"images": []}, "placeholder_mismatch", "images"),
    ("too_many_images", llava_record(None) | {"image": ["a.png"]}, "placeholder_mismatch", "image"),
    ("images_not_list", openai_record() | {"images": "a.png"}, "wrong_type", "images"),
    ("image_not_string", openai_record() | {"images": [3]}, "wrong_type", "images[0]"),
    ("both_image_keys", openai_record() | {"image": "a.png"}, "ambiguous_form", "$"),
    ("id_wrong_type", openai_record() | {"id": [1]}, "wrong_type", "id"),
    ("id_bool", openai_record() | {"id": True}, "wrong_type", "id"),
    ("missing_image", openai_record(["nope.png"]), "missing_image", "images[0]"),
    ("empty_image_path", openai_record([""]), "missing_image", "images[0]"),
    ("image_is_folder", openai_record(["sub"]), "missing_image", "images[0]"),
    ("dotdot_escape", openai_record(["../outside.png"]), "path_escape", "images[0]"),
    ("dotdot_inside", llava_record("sub/../../outside.png"), "path_escape", "image"),
    ("absolute_outside", openai_record(["/etc/hostname"]), "path_escape", "images[0]"),
    ("nul_byte", openai_record(["a\x00.png"]), "bad_path", "images[0]"),
    ("symlink_escape", openai_record(["link.png"]), "path_escape", "images[0]"),
    ("lone_surrogate", llava_record(None, id="x\ud800"), "not_utf8", "id"),
    (
        "surrogate_content",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\udcff"}]},
        "not_utf8",
        "messages[1].content",
    ),
    ("truncated_png", openai_record(["truncated.png"]), "bad_image", "images[0]"),
    ("not_an_image", openai_record(["text.png"]), "bad_image", "images[0]"),
]


@pytest.fixture
def bad_root(tmp_path: Path) -> Path:
    """Image root ``tmp_path/root`` with a good image, a folder, a truncated PNG and a symlink out of the root."""
    root = tmp_path / "root"
    png(root / "a.png")
    png(root / "sub" / "b.png")
    png(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    full = png(tmp_path / "big.png", (64, 64)).read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "text.png").write_text("not a png", encoding="utf-8")
    return root


@pytest.mark.parametrize(("case", "record", "key", "field"), BAD_RECORDS, ids=[c[0] for c in BAD_RECORDS])
def test_bad_record_skip(bad_root: Path, case: str, record: Any, key: str, field: str) -> None:
    path = write_jsonl(bad_root / "data.jsonl", [llava_record(), record, llava_record()])
    rejects = bad_root.parent / "rejects" / "data.rejects.jsonl"
    convs, report = read_conversations(path, policy="skip", rejects_path=rejects)
    assert (report.read, report.kept, report.rejected) == (3, 2, 1)
    assert report.reasons == {key: 1}
    assert key in REASON_KEYS
    assert [c.source for c in convs] == [f"{path}:1", f"{path}:3"]
    (row,) = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert row["source"] == f"{path}:2" and row["location"] == "2"
    assert (row["reason_key"], row["field"]) == (key, field)
    assert json.loads(row["raw"]) == record
    assert report.rejects_path == rejects


@pytest.mark.parametrize(("case", "record", "key", "field"), BAD_RECORDS, ids=[c[0] for c in BAD_RECORDS])
def test_bad_record_fail(bad_root: Path, case: str, record: Any, key: str, field: str) -> None:
    path = write_jsonl(bad_root / "data.jsonl", [llava_record(), record, llava_record()])
    with pytest.raises(BadRecordError) as info:
        read_conversations(path, policy="fail")
    err = info.value
    assert f"data.jsonl:2: field '{field}'" in str(err)
    assert (err.path, err.location, err.field, err.key) == (path, "2", field, key)
    assert err.reason in str(err)


@pytest.mark.parametrize(("case", "record", "key", "field"), BAD_RECORDS[::5], ids=[c[0] for c in BAD_RECORDS[::5]])
def test_bad_record_in_json_list_names_record_index(
    bad_root: Path, case: str, record: Any, key: str, field: str
) -> None:
    path = write_json(bad_root / "data.json", [llava_record(), llava_record(), record])
    rejects = bad_root / "r.jsonl"
    _, report = read_conversations(path, rejects_path=rejects)
    assert report.reasons == {key: 1}
    row = json.loads(rejects.read_text(encoding="utf-8"))
    assert row["source"] == f"{path}#3" and row["raw"] == record
    with pytest.raises(BadRecordError, match=re.escape(f"data.json#3: field '{field}'")):
        read_conversations(path, policy="fail")


def test_malformed_and_non_utf8_lines(root: Path) -> None:
    path = root / "d.jsonl"
    good = json.dumps(llava_record()).encode()
    path.write_bytes(good + b"\n{not json\n" + b'{"id": "\xff\xfe"}\n' + good + b"\n")
    rejects = root / "rej.jsonl"
    convs, report = read_conversations(path, rejects_path=rejects)
    assert (report.read, report.kept, report.rejected) == (4, 2, 2)
    assert report.reasons == {"malformed_json": 1, "not_utf8": 1}
    rows = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [(r["location"], r["reason_key"]) for r in rows] == [("2", "malformed_json"), ("3", "not_utf8")]
    assert rows[0]["raw"] == "{not json" and "\\xff" in rows[1]["raw"]
    with pytest.raises(BadRecordError, match=r"d\.jsonl:2: field '\$': malformed JSON"):
        read_conversations(path, policy="fail")
    path.write_bytes(good + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(BadRecordError, match=r"d\.jsonl:2: .*not valid UTF-8"):
        read_conversations(path, policy="fail")


def test_surrogates_in_json_list_reject_row_is_still_writable(root: Path) -> None:
    record = {"messages": [{"role": "user", "content": "é \ud800"}, {"role": "assistant", "content": "ü"}]}
    path = write_json(root / "d.json", [record, llava_record()])
    rejects = root / "rej.jsonl"
    _, report = read_conversations(path, rejects_path=rejects)
    assert report.reasons == {"not_utf8": 1}
    assert json.loads(rejects.read_text(encoding="utf-8"))["raw"] == record


def test_fail_policy_writes_the_reject_before_raising(root: Path) -> None:
    path = write_jsonl(root / "d.jsonl", [llava_record("missing.png")])
    rejects = root / "rej.jsonl"
    with pytest.raises(BadRecordError):
        read_conversations(path, policy="fail", rejects_path=rejects)
    assert json.loads(rejects.read_text(encoding="utf-8"))["reason_key"] == "missing_image"


def test_rejects_file_is_replaced_each_read(root: Path) -> None:
    rejects = root / "rej.jsonl"
    rejects.write_text('{"stale": true}\n', encoding="utf-8")
    read_conversations(write_jsonl(root / "d.jsonl", [llava_record()]), rejects_path=rejects)
    assert rejects.read_text(encoding="utf-8") == ""


def test_rejects_counted_without_rejects_file(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jsonl(root / "d.jsonl", [llava_record("missing.png"), 5])
    _, report = read_conversations(path)
    assert report.rejected == 2 and report.rejects_path is None
    assert "rejected 2 of 2" in caplog.text


def test_check_images_false_skips_decoding_but_not_existence(bad_root: Path) -> None:
    path = write_jsonl(bad_root / "d.jsonl", [openai_record(["truncated.png"]), openai_record(["gone.png"])])
    convs, report = read_conversations(path, check_images=False)
    assert report.kept == 1 and report.reasons == {"missing_image": 1}
    assert convs[0].images[0].name == "truncated.png"


def test_file_level_errors_raise_regardless_of_policy(tmp_path: Path) -> None:
    for policy in ("skip", "fail"):
        with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
            read_conversations(tmp_path / "nothere.jsonl", policy=policy)
        with pytest.raises(ValueError, match=r"data\.csv"):
            read_conversations(tmp_path / "data.csv", policy=policy)
    bad_utf8 = tmp_path / "b.json"
    bad_utf8.write_bytes(b'[{"id": "\xff"}]')
    with pytest.raises(ValueError, match=r"b\.json: not valid UTF-8"):
        read_conversations(bad_utf8)
    (tmp_path / "m.json").write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.json: malformed JSON at line 1"):
        read_conversations(tmp_path / "m.json")
    write_json(tmp_path / "o.json", {"messages": []})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must hold a list"):
        read_conversations(tmp_path / "o.json")
    write_jsonl(tmp_path / "ok.jsonl", [])
    with pytest.raises(FileNotFoundError, match="image_root"):
        read_conversations(tmp_path / "ok.jsonl", tmp_path / "no-such-dir")
    with pytest.raises(ValueError, match="policy"):
        read_conversations(tmp_path / "ok.jsonl", policy="ignore")  # type: ignore[arg-type]


def test_to_sharegpt_refuses_images_outside_root(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    conv = only_conversation(write_jsonl(root / "d.jsonl", [llava_record()]))
    with pytest.raises(ValueError, match="not inside image_root"):
        conv.to_sharegpt(tmp_path_factory.mktemp("elsewhere"))


# --------------------------------------------------------------------------------------------- images


def _rgba(path: Path) -> None:
    img = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    img.putpixel((1, 0), (0, 0, 0, 0))
    img.save(path)


def _palette_with_transparency(path: Path) -> None:
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 255, 0, 0, 0] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.save(path, transparency=1)


def _animated_gif(path: Path) -> None:
    frames = [Image.new("RGB", (3, 3), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


def _i16(path: Path) -> None:
    Image.new("I;16", (2, 2), 65535).save(path)


IMAGE_CASES = {
    "rgba.png": (_rgba, [(255, 0, 0), (255, 255, 255)]),
    "palette.png": (_palette_with_transparency, [(0, 0, 255), (255, 255, 255)]),
    "cmyk.jpg": (lambda p: Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(p), None),
    "cmyk.tif": (lambda p: Image.new("CMYK", (2, 1), (0, 0, 0, 255)).save(p), [(0, 0, 0), (0, 0, 0)]),
    "i16.png": (_i16, [(255, 255, 255)] * 4),
    "i16_mid.png": (lambda p: Image.new("I;16", (1, 1), 32896).save(p), [(128, 128, 128)]),
    "la.png": (lambda p: Image.new("LA", (1, 1), (0, 0)).save(p), [(255, 255, 255)]),
    "l.png": (lambda p: Image.new("L", (1, 1), 77).save(p), [(77, 77, 77)]),
    "one_bit.png": (lambda p: Image.new("1", (2, 1), 1).save(p), [(255, 255, 255)] * 2),
    "anim.gif": (_animated_gif, None),
    "tiny.png": (lambda p: Image.new("RGB", (1, 1), (1, 2, 3)).save(p), [(1, 2, 3)]),
    "float.tif": (lambda p: Image.new("F", (1, 1), 0.5).save(p), [(128, 128, 128)]),
}


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_load_image_gives_rgb(tmp_path: Path, name: str) -> None:
    make, expected = IMAGE_CASES[name]
    make(tmp_path / name)
    img = load_image(tmp_path / name)
    assert img.mode == "RGB"
    pixels = [img.getpixel((x, y)) for y in range(img.height) for x in range(img.width)]
    if expected is not None:
        assert pixels == expected
    if name == "anim.gif":
        assert img.size == (3, 3) and pixels[0][0] > 200 and pixels[0][1] < 50  # first (red) frame
    if name == "cmyk.jpg":
        assert all(min(p) > 240 for p in pixels)


def test_load_image_rejects_truncated_and_missing(tmp_path: Path) -> None:
    full = png(tmp_path / "full.png", (32, 32)).read_bytes()
    (tmp_path / "cut.png").write_bytes(full[:-30])
    for name in ("cut.png", "missing.png"):
        with pytest.raises(BadImageError, match=name):
            load_image(tmp_path / name)


def test_images_in_records_accept_all_modes(tmp_path: Path) -> None:
    names = sorted(IMAGE_CASES)
    for name in names:
        IMAGE_CASES[name][0](tmp_path / name)
    path = write_jsonl(tmp_path / "d.jsonl", [llava_record(name) for name in names])
    convs, report = read_conversations(path, policy="fail")
    assert report.kept == len(names)


# --------------------------------------------------------------------------------------------- property

_PATHS = [
    "a.png",
    "sub/b.png",
    "../outside.png",
    "missing.png",
    "truncated.png",
    "/etc/hostname",
    "a\x00",
    "",
]
_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
_turn = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "user", "assistant", "human", "gpt", "bot"]) | _json_values,
        "from": st.sampled_from(["human", "gpt", "system"]),
        "content": st.sampled_from(["<image>hi", "hi", "", " ", "<image><image>x"]) | _json_values,
        "value": st.sampled_from(["<image>\nhi", "ok"]),
    },
)
_near_valid = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=4) | st.integers() | _json_values,
        "messages": st.lists(_turn, max_size=5) | _json_values,
        "conversations": st.lists(_turn, max_size=5),
        "images": st.lists(st.sampled_from(_PATHS), max_size=3) | _json_values,
        "image": st.sampled_from(_PATHS) | st.lists(st.sampled_from(_PATHS), max_size=2),
    },
)


@st.composite
def _mutated_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record in either form, then at most one field replaced by an arbitrary JSON value."""
    images = draw(st.lists(st.sampled_from(["a.png", "sub/b.png", "a.png", *_PATHS]), max_size=2))
    roles = ["system"] * draw(st.booleans()) + ["user", "assistant"] * draw(st.integers(1, 2))
    texts = [IMAGE_PLACEHOLDER * len(images) + "q" if i == roles.index("user") else "t" for i in range(len(roles))]
    if draw(st.booleans()):
        record: dict[str, Any] = {
            "messages": [{"role": r, "content": t} for r, t in zip(roles, texts)],
            "images": images,
        }
    else:
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        record = {
            "conversations": [{"from": names[r], "value": t} for r, t in zip(roles, texts)],
            "image": images,
        }
    if draw(st.booleans()):
        record["id"] = draw(st.text(max_size=4) | st.integers())
    if draw(st.booleans()):
        turns = record.get("messages") or record["conversations"]
        target = draw(st.sampled_from([record, *turns]))
        target[draw(st.sampled_from(sorted(target)))] = draw(_json_values)
    return record


_records = st.lists(_json_values | _near_valid | _mutated_valid(), max_size=6)
_garbage_lines = st.lists(st.binary(max_size=12).filter(lambda b: b"\n" not in b), max_size=3)


@pytest.fixture(scope="module")
def prop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("prop")
    root = base / "root"
    png(root / "a.png")
    png(root / "sub" / "b.png")
    png(base / "outside.png")
    full = png(base / "big.png", (64, 64)).read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    return root


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=_records, garbage=_garbage_lines, as_jsonl=st.booleans())
def test_arbitrary_records_never_crash(
    prop_root: Path, records: list[Any], garbage: list[bytes], as_jsonl: bool
) -> None:
    path = prop_root / ("p.jsonl" if as_jsonl else "p.json")
    if as_jsonl:
        lines = [json.dumps(r).encode() for r in records] + garbage
        path.write_bytes(b"".join(line + b"\n" for line in lines))
    else:
        write_json(path, records)
    convs, report = read_conversations(path, policy="skip")
    event("some records kept" if report.kept else "all rejected")
    assert report.kept + report.rejected == report.read == len(convs) + sum(report.reasons.values())
    assert set(report.reasons) <= set(REASON_KEYS)
    if not as_jsonl:
        assert report.read == len(records)
    for conv in convs:
        assert all(prop_root.resolve() in image.parents for image in conv.images)
        assert sum(t.content.count(IMAGE_PLACEHOLDER) for t in conv.turns) == len(conv.images)
        assert conv.turns[-1].role == "assistant"
    try:
        fail_convs, _ = read_conversations(path, policy="fail")
    except BadRecordError as err:
        assert report.rejected > 0 and err.key in REASON_KEYS
    else:
        assert report.rejected == 0 and fail_convs == convs


def test_property_fixture_is_sane(prop_root: Path) -> None:
    """Guard against a property test that passes only because every record is rejected."""
    path = write_jsonl(prop_root / "sane.jsonl", [openai_record(["a.png"]), llava_record("sub/b.png")])
    assert read_conversations(path)[1].kept == 2
