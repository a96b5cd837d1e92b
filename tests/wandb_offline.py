"""A small reader of an offline wandb run (``wandb/offline-run-*/run-<id>.wandb``) for the tests: wandb 0.31 has no
Python reader of its own any more (the Go core writes the file), so this reads its record format: a LevelDB-style
log of 32 KiB blocks whose records are ``wandb_internal_pb2.Record`` protobufs, after a 7-byte ``:W&B`` header."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK = struct.Struct("<IHB")  # crc32c, length, kind (1 full, 2 first, 3 middle, 4 last)


def records(path: Path) -> Iterator[Any]:
    """Every record of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, _, _ = HEADER.unpack_from(data)
    if ident != b":W&B":
        raise ValueError(f"{path}: not a wandb run file (header {ident!r})")
    pos, pending = HEADER.size, b""
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = CHUNK.unpack_from(data, pos)
        chunk = data[pos + CHUNK.size : pos + CHUNK.size + length]
        if len(chunk) < length:  # a tail still being written
            return
        pos += CHUNK.size + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _set(target: dict[str, Any], item: Any) -> None:
    keys = [item.key] if item.key else list(item.nested_key)
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    """What an offline run recorded: its header (job type, group, tags, name), config, summary and artifacts."""

    folder: Path
    job_type: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path, timeout: float = 60.0) -> OfflineRun:
        """The run as recorded once wandb has written its ``exit`` record: ``wandb.finish()`` can return before
        wandb's writer process has flushed the file (seen on a loaded machine), so wait for it up to ``timeout``."""
        (path,) = folder.glob("run-*.wandb")
        deadline = time.monotonic() + timeout
        found = list(records(path))
        while not any(r.WhichOneof("record_type") == "exit" for r in found) and time.monotonic() < deadline:
            time.sleep(0.25)
            found = list(records(path))
        run = cls(folder)
        for record in found:
            kind = record.WhichOneof("record_type")
            if kind == "run":
                # a later run record (an update) may leave fields empty: keep what was set
                run.job_type = record.run.job_type or run.job_type
                run.group = record.run.run_group or run.group
                run.tags = list(record.run.tags) or run.tags
                run.name = record.run.display_name or run.name
                for item in record.run.config.update:
                    _set(run.config, item)
            elif kind == "config":
                for item in record.config.update:
                    _set(run.config, item)
            elif kind == "summary":
                for item in record.summary.update:
                    _set(run.summary, item)
            elif kind == "artifact":
                art = record.artifact
                files = {
                    c.path: {"local_path": c.local_path, "ref": c.ref, "size": c.size} for c in art.manifest.contents
                }
                meta = json.loads(art.metadata) if art.metadata else {}
                run.artifacts.append({"name": art.name, "type": art.type, "files": files, "metadata": meta})
        return run

    def table(self, key: str) -> dict[str, Any]:
        """The table logged under ``key`` (its artifact copy, where image cells point at their files) and the
        local files of its images."""
        wanted = f"{key.rsplit('/', 1)[-1]}.table.json"
        for art in self.artifacts:
            if art["type"] == "run_table" and any(p.endswith(wanted) for p in art["files"]):
                entry = next(v for p, v in art["files"].items() if p.endswith(wanted))
                table = json.loads(Path(entry["local_path"]).read_text(encoding="utf-8"))
                images = {p: Path(v["local_path"]) for p, v in art["files"].items() if p.startswith("media/images/")}
                return {"table": table, "images": images}
        raise KeyError(f"{self.folder}: no table {key!r} among {[a['name'] for a in self.artifacts]}")
