"""Shared parts of the bad-input tests (tests/faults/test_input_*.py).

* :func:`make_image_pool`: one folder of image files that decode in odd modes and sizes (accepted, converted to
  RGB) and of broken ones (truncated, a header only, empty, not an image, a decompression-bomb header), plus image
  paths that must be refused (missing, ``..``, absolute outside the root, a symlink out of the root, a folder, a
  NUL byte, an over-long name). :data:`IMAGE_CASES` says how each reader must treat each path.
* :data:`TEXT_CASES`: caption / prompt texts: empty, whitespace, 1 MB, a lone surrogate, other scripts.
* :data:`LINE_CASES`: whole JSONL lines that do not parse into an object.
* :func:`assert_names`: an error message names the file, the line or record index, and the field.
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

ACCEPTED = "accepted (valid input)"
SKIPPED = "skipped, counted, in rejects file"
ERROR = "error names file/line/field"
REFUSED = "refused, nothing executed"


def outcome(bad: bool, policy: str) -> str:
    """The tally's outcome label for one case."""
    if not bad:
        return ACCEPTED
    return ERROR if policy == "fail" else SKIPPED


# --------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageCase:
    """An image path as a record writes it, and the reason key each reader must refuse it with (None: accepted).

    ``records``: :func:`mllm_da.data.records.read_conversations`; ``bench``: :func:`load_benchmark`; ``seed``:
    the VisionFLAN seed builder (which looks for a file by the path and by its base name)."""

    path: str
    records: str | None = None
    bench: str | None = None
    seed: str | None = None

    @property
    def valid(self) -> bool:
        return self.records is None


def bomb_png_header(width: int, height: int) -> bytes:
    """A PNG that is only a signature, an IHDR of the given size and an IEND: what a decompression bomb's header
    looks like (Pillow refuses it at open, before allocating anything)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _frames(path: Path, fmt: str) -> None:
    frames = [Image.new("RGB", (5, 4), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)


def _palette_transparency(path: Path) -> None:
    image = Image.new("P", (3, 2), 0)
    image.putpalette([0, 0, 255, 10, 200, 10] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(path, transparency=1)


#: files written into the root: name -> writer
_VALID_FILES = {
    "rgb.png": lambda p: Image.new("RGB", (8, 6), (200, 30, 40)).save(p),
    "one_by_one.png": lambda p: Image.new("RGB", (1, 1), (1, 2, 3)).save(p),
    "tall.png": lambda p: Image.new("L", (1, 300), 90).save(p),
    "cmyk.jpg": lambda p: Image.new("CMYK", (6, 4), (10, 200, 30, 0)).save(p, format="JPEG"),
    "sixteen_bit.png": lambda p: Image.new("I;16", (4, 3), 40000).save(p),
    "animated.gif": lambda p: _frames(p, "GIF"),
    "animated_png.png": lambda p: _frames(p, "PNG"),  # a stem of its own: case names come from stems
    "palette_transparency.png": _palette_transparency,
    "rgba.png": lambda p: Image.new("RGBA", (3, 3), (0, 0, 0, 0)).save(p),
    "la.png": lambda p: Image.new("LA", (2, 2), (50, 128)).save(p),
    "one_bit.png": lambda p: Image.new("1", (7, 5), 1).save(p),
}


def _noise_png(path: Path, size: int = 96) -> bytes:
    rng = random.Random(0)
    Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3))).save(path)
    return path.read_bytes()


def record_file_cases(faults: Iterable[str]) -> Callable:
    """Hypothesis cases of a record file: one fault, ``n_valid`` good and ``n_bad`` faulty records in an order
    drawn from ``rng``, written as JSONL or as a JSON list, read under either bad-record policy."""
    return given(
        fault=st.sampled_from(sorted(faults)),
        rng=st.randoms(use_true_random=False),
        n_valid=st.integers(0, 3),
        n_bad=st.integers(1, 3),
        as_jsonl=st.booleans(),
        policy=st.sampled_from(["skip", "fail"]),
    )


#: the names of :func:`make_image_pool`'s cases, known before the pool is written (to build fault tables)
IMAGE_CASE_NAMES = [
    *(f"image {Path(name).stem}" for name in _VALID_FILES),
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
]


def make_image_pool(base: Path) -> tuple[Path, dict[str, ImageCase]]:
    """Write the image files under ``base/root`` (and one outside it); returns the root and the cases by name."""
    root = base / "root"
    (root / "folder.png").mkdir(parents=True, exist_ok=True)
    for name, write in _VALID_FILES.items():
        write(root / name)
    full = _noise_png(base / "noise.png")
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "header_only.png").write_bytes(full[:33])
    (root / "empty.png").write_bytes(b"")
    (root / "not_an_image.png").write_bytes(b"this is text, not a picture\n")
    (root / "bomb.png").write_bytes(bomb_png_header(40_000, 40_000))
    Image.new("RGB", (4, 4), (9, 9, 9)).save(base / "outside.png")
    os.symlink(base / "outside.png", root / "link_out.png")
    os.symlink(root / "rgb.png", root / "link_in.png")
    cases = {
        **{f"image {Path(name).stem}": ImageCase(name) for name in _VALID_FILES},
        "image symlink inside root": ImageCase("link_in.png"),
        "image absolute path inside root": ImageCase(str(root / "rgb.png")),
        "image truncated": ImageCase("truncated.png", "bad_image", "bad_image", "bad_image"),
        "image header only": ImageCase("header_only.png", "bad_image", "bad_image", "bad_image"),
        "image empty file": ImageCase("empty.png", "bad_image", "bad_image", "bad_image"),
        "image not an image": ImageCase("not_an_image.png", "bad_image", "bad_image", "bad_image"),
        "image decompression bomb header": ImageCase("bomb.png", "bad_image", "bad_image", "bad_image"),
        "image missing": ImageCase("no_such.png", "missing_image", "missing_image", "missing_image"),
        "image path traversal ../": ImageCase("../outside.png", "path_escape", "path_escape", "path_escape"),
        "image absolute path outside root": ImageCase(
            str(base / "outside.png"), "path_escape", "path_escape", "path_escape"
        ),
        "image symlink out of root": ImageCase("link_out.png", "path_escape", "path_escape", "path_escape"),
        "image path is a folder": ImageCase("folder.png", "missing_image", "missing_image", "missing_image"),
        "image path with NUL byte": ImageCase("rgb.png\x00.txt", "bad_path", "missing_image", "bad_path"),
        "image path too long": ImageCase("x" * 5000 + ".png", "bad_path", "missing_image", "missing_image"),
    }
    assert list(cases) == IMAGE_CASE_NAMES
    return root, cases


def write_huge_image(path: Path, side: int = 12_000) -> Path:
    """A mostly uniform ``side`` × ``side`` greyscale PNG: 144 megapixels, about 170 KB on disk."""
    image = Image.new("L", (side, side), 200)
    image.putpixel((side // 2, side // 2), 0)
    image.save(path)
    return path


# --------------------------------------------------------------------------------------------- texts

#: caption / answer / prompt texts: (text, valid?)
TEXT_CASES: dict[str, tuple[str, bool]] = {
    "text plain": ("A red square on white.", True),
    "text other scripts": ("naïve café — 日本語の説明 😀 ∑", True),
    "text enormous (1 MB)": ("word " * 200_000, True),
    "text control characters": ("tab\there\x01\x1f end", True),
    "text empty": ("", False),
    "text whitespace only": (" \n\t ", False),
    "text lone surrogate": ("broken \ud800 text", False),
}

#: JSONL lines that are not a JSON object: (raw bytes, reason key)
LINE_CASES: dict[str, tuple[bytes, str]] = {
    "line malformed JSON": (b'{"messages": [{"role": "user", "content": "hi"', "malformed_json"),
    "line non-UTF-8 bytes": (b'{"id": "caf\xe9 \xff\xfe"}', "not_utf8"),
    "line deep nesting": (b"[" * 100_000, "malformed_json"),
    "line integer of 5000 digits": (b"9" * 5000, "malformed_json"),
    "line not an object": (b"[1, 2, 3]", "not_object"),
    "line JSON null": (b"null", "not_object"),
}


# --------------------------------------------------------------------------------------------- checks


def assert_names(err: BaseException, path: Path | str, location: str, field: str | None) -> None:
    """The message names the file, the line / record index and (when given) the field."""
    text = str(err)
    assert str(path) in text, f"{text!r} does not name the file {path}"
    assert location in text, f"{text!r} does not name {location!r}"
    if field is not None:
        assert f"field '{field}'" in text, f"{text!r} does not name the field {field!r}"
