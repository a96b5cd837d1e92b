"""Atomic file writes and append-only JSONL, so that a crash never leaves a half-written file that reads as whole.

Every output of the project is written in one of two ways:

* whole files (summary.json, scores, plans, configs, figures, checkpoints, exported folders): to a temporary file
  (or folder) beside the target, flushed and fsynced, then renamed over it with ``os.replace``. A kill at any
  moment leaves either the old file or the new one, never a mix; a leftover ``.<name>.*.tmp`` is never read.
* append-only logs (predictions, synthesis shards, batch logs): complete lines appended and fsynced; a kill can
  only tear the last line, which :func:`read_jsonl_tolerant` (and the synthesis batch log) ignores.

:func:`read_json` reads a whole-file JSON output and names the file when it is truncated or not JSON.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:  # serialises concurrent builders (one per DDP rank) of the same folder; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

#: read once at import (reading it means setting it, which is not thread-safe): temporary files are made 0600/0700
#: and get the mode a plain ``open``/``mkdir`` would have given them
_UMASK = os.umask(0)
os.umask(_UMASK)


def default_permissions(root: str | os.PathLike) -> None:
    """Give a tree made by ``mkdtemp``/``mkstemp`` (0700/0600) the modes ``mkdir``/``open`` would have given it."""
    root = Path(root)
    for item in [root, *root.rglob("*")]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~_UMASK)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every filesystem lets a directory be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[Any]:
    """A binary file handle on a temporary file beside ``path``; when the block ends without an error the file is
    fsynced and renamed over ``path`` (mode as a plain ``open`` would give it). An error or a kill leaves ``path``
    as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to a temporary file beside ``path`` and rename it into place."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON and write it atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows as JSON lines atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it in when the block ends without an error.

    A kill inside the block leaves the previous folder (if any) as it was and a ``.<name>.*.tmp`` sibling that
    nothing reads. The swap is one atomic exchange of the two folders on Linux (``renameat2``), so a reader sees
    the old folder or the new one; elsewhere it is two renames, with an instant in between where there is none.
    Never a half-written folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as handle:
                    os.fsync(handle.fileno())
        default_permissions(tmp)  # mkdtemp makes 0700, save_pretrained writes some files 0600
        if not path.exists():
            os.replace(tmp, path)
        elif not _exchange(tmp, path):  # tmp now holds the previous folder, removed below
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_dir_once(path: str | os.PathLike, build: Callable[[Path], None], done_file: str = "config.json") -> bool:
    """Build a folder once, for a cache shared by processes: ``build`` fills a temporary sibling, which gets the
    modes ``mkdir``/``open`` would have given it and is renamed into place.

    Nothing is built while ``path/done_file`` exists. Two processes may race: the loser's rename fails and its copy
    is dropped, as long as the winner's folder is complete. Returns whether this call built the folder.
    """
    path = Path(path)
    if (path / done_file).exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        build(tmp)
        default_permissions(tmp)  # mkdtemp makes 0700: a shared cache should read like any folder
        os.replace(tmp, path)
    except OSError:
        if not (path / done_file).exists():  # another process did not win the race either
            raise
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


@contextmanager
def locked_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the folder ``path`` (made if missing), so that of several processes that would
    compute it (DDP ranks, parallel runs) one does while the others wait, then reuse its result.

    The lock is ``flock`` on ``path/.lock``, a file that holds nothing; without ``fcntl`` (not POSIX) no lock."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - non-POSIX
        yield path
        return
    with open(path / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON output written whole; a truncated or corrupt one is an error that names the file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: this {what} is truncated or not JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "it was not written by a finished write of this project: delete it to have it made again"
        ) from err


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append complete lines and fsync; a reader skips a torn last line (see :func:`read_jsonl_tolerant`).

    All rows go to the file in one ``write`` call, so a kill leaves all of them, none, or a torn tail.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    if not data:
        return
    with open(path, "ab", buffering=0) as handle:
        view = memoryview(data)
        while view:
            written = handle.write(view)
            view = view[written:]
        os.fsync(handle.fileno())


def read_jsonl_tolerant(path: str | os.PathLike) -> Iterator[dict]:
    """Read an append-only JSONL file written by :func:`append_jsonl`, ignoring a torn final line.

    A torn line can only be the last one (appends are sequential), so any earlier bad line is a real error.
    """
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            is_last = all(not rest.strip() for rest in lines[number:])
            if is_last:
                return
            raise ValueError(f"{path}:{number}: malformed JSON line ({err.msg})") from err
