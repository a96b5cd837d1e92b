"""A researcher's own domain from one folder (``domain=custom domain.root=DIR``).

:func:`prepare_custom_domain` finds the image-caption data and the optional benchmark in ``DIR`` by the conventions
below, reads whichever format they are in (detected from the content, not the file name), and points the domain at
files the rest of the pipeline already reads: the image-caption records as ShareGPT JSONL, the benchmark as one
open/closed VQA file and one multiple-choice file. It returns those paths as overrides of the ``domain`` node
(:func:`mllm_da.data.domain.prepare_domain` applies them) and logs what it found.

Conventions (README "Adapt to your own domain"):

* image-caption data: the first of ``image_caption_pairs``, ``captions``, ``metadata`` (any suffix, or a folder
  saved by ``datasets``) in ``DIR``; else a folder of images (``DIR/images`` or ``DIR``) with a same-named ``.txt``
  caption beside each image;
* benchmark (optional): ``benchmark`` (any suffix, or a ``datasets`` folder) in ``DIR``;
* image paths are relative to ``DIR`` (or to ``DIR/images``); embedded image bytes are written once under the
  prepared folder.

Formats: a JSON list or JSON lines (ShareGPT ``messages``/``images``, LLaVA ``conversations``/``image``, or flat
rows with an image and a caption field), CSV/TSV with a header, parquet, a ``datasets`` ``save_to_disk`` folder,
and the image + ``.txt`` folder. ShareGPT and LLaVA files are read as they are (their line numbers stay the ones
in messages); the other formats are converted once into ``<cache>/domains/custom/<name>-<hash>/`` and rebuilt when
a source file changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mllm_da.data.bad_records import POLICIES, write_rejects
from mllm_da.data.custom_files import CustomDomainError, find_source, read_rows
from mllm_da.data.custom_rows import (
    BENCHMARK_FILES,
    ImageStore,
    SourceReport,
    benchmark_rows,
    caption_records,
    conversation_image_root,
    has_embedded_images,
    is_conversation_file,
    text_folder_rows,
)
from mllm_da.utils.io import atomic_write_json, atomic_write_jsonl, read_json

__all__ = ["CustomDomainError", "describe", "prepare_custom_domain"]

log = logging.getLogger(__name__)

#: names (without suffix) of the image-caption source in the domain folder, in the order they are looked for
CAPTION_NAMES: tuple[str, ...] = ("image_caption_pairs", "captions", "metadata")
BENCHMARK_NAME = "benchmark"
#: the user turn of a converted caption record (the caption is the assistant's answer)
DEFAULT_CAPTION_INSTRUCTION = "Describe the image."
_FORMAT_VERSION = 1  # bump when the converted files change shape, so old prepared folders are rebuilt


def _fingerprint(paths: Sequence[Path], settings: Mapping[str, Any]) -> str:
    """What decides the prepared files: the sources' sizes and modification times, and the settings."""
    parts: list[Any] = [_FORMAT_VERSION, dict(settings)]
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        parts.append([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ entry


def prepare_custom_domain(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    captions: str | None = None,
    benchmark: str | None = None,
    caption_instruction: str = DEFAULT_CAPTION_INSTRUCTION,
    policy: str = "skip",
) -> dict[str, Any]:
    """Find and read a user's domain folder; return the ``domain`` keys that point at readable files.

    Returned keys: ``image_caption_pairs``, ``image_root``, ``benchmarks`` (the non-empty ones of
    :data:`BENCHMARK_FILES`), ``benchmark_files`` and ``benchmark_image_root``, and ``found`` (what was read, with
    counts). Row problems found while converting are skipped and counted, or raise :class:`BadRecordError` naming
    the file and line under ``policy="fail"``; image decoding is checked later by the readers, as for every domain.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if root is None or str(root) in ("", "None", "???"):
        raise CustomDomainError("domain=custom needs domain.root=<your data folder>")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CustomDomainError(f"domain.root {root} is not an existing folder")
    caption_source = find_source(root, CAPTION_NAMES, captions, "image-caption data")
    bench_source = find_source(root, (BENCHMARK_NAME,), benchmark, "benchmark")
    image_folder = root / "images" if (root / "images").is_dir() else root
    sources = [p for p in (caption_source, bench_source) if p is not None] or [image_folder]
    settings = {
        "root": str(root),
        "caption_instruction": caption_instruction,
        "policy": policy,
        "captions": str(caption_source),
        "benchmark": str(bench_source),
    }
    key = _fingerprint(sources, settings)
    prepared = (
        Path(out_dir).expanduser().resolve() / "custom" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', root.name)}-{key[:12]}"
    )
    manifest = prepared / "manifest.json"
    if manifest.is_file():
        found = read_json(manifest, "prepared-domain manifest")
        log.info("custom domain %s (prepared earlier in %s):\n%s", root, prepared, describe(found))
        return found

    # image-caption data
    if caption_source is None:
        rows = text_folder_rows(image_folder, root)
        if not rows:
            expected = [n + ".<json|jsonl|csv|tsv|parquet>" for n in CAPTION_NAMES]
            raise CustomDomainError(
                f"{root}: found no image-caption data: expected one of {expected}, "
                f"a `datasets` folder of that name, or images with same-named .txt captions in {image_folder}"
            )
        fmt, caption_path = "image folder with .txt captions", image_folder
        for row in rows:
            if "__no_caption__" in row.fields:
                row.fields = {"__problem__": f"no caption file {row.fields['__no_caption__']}"}
    else:
        fmt, row_iter = read_rows(caption_source, "train")
        rows, caption_path = list(row_iter), caption_source
    caption_report = SourceReport(str(caption_path), fmt)
    if caption_source is not None and is_conversation_file(fmt, rows):
        image_root = conversation_image_root(rows, root)  # read as it is: its line numbers stay the user's
        pairs_path, caption_report.read = caption_source, len(rows)
    else:
        store = ImageStore(root, prepared, has_embedded_images(rows))
        records = caption_records(rows, caption_report, store, caption_instruction, policy)
        if not records:
            raise CustomDomainError(f"{caption_path}: no usable image-caption record ({caption_report.reasons})")
        pairs_path = atomic_write_jsonl(prepared / "image_caption_pairs.jsonl", records)
        image_root = store.root
        _write_rejects(prepared / "rejects" / "image_caption_pairs.jsonl", caption_report)

    # benchmark
    bench_report, bench_files, bench_root = None, {}, None
    split: dict[str, list[dict[str, Any]]] = {}
    if bench_source is not None:
        bench_fmt, bench_iter = read_rows(bench_source, "test")
        bench_rows = list(bench_iter)
        bench_report = SourceReport(str(bench_source), bench_fmt)
        store = ImageStore(root, prepared, has_embedded_images(bench_rows))
        split = benchmark_rows(bench_rows, bench_report, store, policy)
        _write_rejects(prepared / "rejects" / "benchmark.jsonl", bench_report)
        bench_root = str(store.root)
        for name, rows_of_kind in split.items():
            if rows_of_kind:
                bench_files[name] = str(atomic_write_jsonl(prepared / BENCHMARK_FILES[name], rows_of_kind))

    found = {
        "image_caption_pairs": str(pairs_path),
        "image_root": str(image_root),
        "benchmarks": sorted(bench_files),
        "benchmark_files": bench_files,
        "benchmark_image_root": bench_root,
        "found": {
            "root": str(root),
            "prepared": str(prepared),
            "captions": _report_dict(caption_report),
            "benchmark": _report_dict(bench_report) if bench_report else None,
            "benchmark_rows": {name: len(split[name]) for name in bench_files} if bench_source is not None else {},
        },
    }
    atomic_write_json(manifest, found)
    log.info("custom domain %s:\n%s", root, describe(found))
    return found


def _report_dict(report: SourceReport) -> dict[str, Any]:
    return {k: v for k, v in asdict(report).items() if k != "rejects"}


def _write_rejects(path: Path, report: SourceReport) -> None:
    """The refused rows of one user file; no file at all when none was refused."""
    if report.rejects:
        write_rejects(path, report.rejects)
    else:
        path.unlink(missing_ok=True)


def describe(found: Mapping[str, Any]) -> str:
    """What :func:`prepare_custom_domain` found, as lines for the log."""
    info = found["found"]
    captions = info["captions"]
    lines = [
        f"  image-caption data: {captions['path']} ({captions['format']}): {captions['read']} read"
        + (f", {captions['rejected']} refused {captions['reasons']}" if captions["rejected"] else ""),
        f"  training file: {found['image_caption_pairs']} (images under {found['image_root']})",
    ]
    bench = info.get("benchmark")
    if bench is None:
        lines.append(f"  benchmark: none (add {BENCHMARK_NAME}.jsonl to {info['root']} to evaluate)")
    else:
        counts = ", ".join(f"{name} {n} rows" for name, n in info["benchmark_rows"].items()) or "no usable row"
        refused = f", {bench['rejected']} refused {bench['reasons']}" if bench["rejected"] else ""
        lines.append(f"  benchmark: {bench['path']} ({bench['format']}): {counts}{refused}")
    return "\n".join(lines)
