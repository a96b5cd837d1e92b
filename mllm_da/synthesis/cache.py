"""Content-keyed stage folders: each pipeline stage writes under ``<cache>/synthesis/<stage>-<key>/``.

The key hashes everything the stage's output depends on: its own settings, the keys of the stages it reads, the
content hash of its input files, and a version that is bumped when the stage's code changes its output. So a
rerun, or a sweep member that needs the same data, finds the folder complete (``done.json``) and reuses it, and a
changed input or setting gets a new folder. ``key.json`` keeps the payload behind the key, to see why two keys
differ. A stage is computed under an exclusive lock, so concurrent runs wait for one another instead of racing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_da.utils.io import atomic_write_json, locked_dir, read_json

log = logging.getLogger(__name__)

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def digest(payload: Any, length: int = 16) -> str:
    """Stable short hash of a JSON-able payload (keys sorted, paths and other objects as strings)."""
    text = json.dumps(payload, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime) so a big file is read once per process."""
    path = Path(path).resolve()
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        _FILE_DIGESTS[memo] = sha.hexdigest()
    return _FILE_DIGESTS[memo]


def folder_fingerprint(path: str | os.PathLike) -> str:
    """Cheap identity of a checkpoint folder: every file's relative name, size and mtime (weights are not read)."""
    root = Path(path).resolve()
    entries = sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    )
    return digest(entries)


@dataclass(frozen=True)
class StageDir:
    """One stage's output folder; complete once ``done.json`` exists (written last)."""

    path: Path
    stage: str
    key: str

    @classmethod
    def for_stage(cls, cache_dir: str | os.PathLike, stage: str, payload: Mapping[str, Any]) -> StageDir:
        key = digest(payload)
        stage_dir = cls(Path(cache_dir) / "synthesis" / f"{stage}-{key}", stage, key)
        stage_dir.path.mkdir(parents=True, exist_ok=True)
        key_file = stage_dir.path / "key.json"
        if not key_file.exists():
            atomic_write_json(key_file, {"stage": stage, "key": key, "payload": payload})
        return stage_dir

    @property
    def done_file(self) -> Path:
        return self.path / "done.json"

    def is_complete(self) -> bool:
        """``done.json`` exists and reads whole (it is written atomically; a damaged one means: do it again)."""
        if not self.done_file.exists():
            return False
        try:
            self.meta()
        except (OSError, ValueError) as err:
            log.warning("%s; the %s stage is done again", err, self.stage)
            return False
        return True

    def meta(self) -> dict[str, Any]:
        """What the stage recorded when it completed (counts, timings)."""
        return read_json(self.done_file, "stage record")

    def complete(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        data = {"stage": self.stage, "key": self.key, **meta}
        atomic_write_json(self.done_file, data)
        return data

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on the folder, so that one process computes it while the others wait, then reuse."""
        with locked_dir(self.path):
            yield
