"""Atomic file writes, the one home for them: a file is either its old self or complete, never half written.

It lives in `sim`, the bottom layer, so that every part (datasets, checkpoints, generation, the CLI)
can reach it without an import against the layers.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator

TEMP_PREFIX = ".tmp-"   # every temp file below starts with it (sim.locks.FolderLock.clean_temporaries finds them)


def atomic_write(path: str, write: Callable, binary: bool = False, mode: int = 0o644) -> str:
    """Call write(file) on a temp file in path's folder, fsync, then os.replace it onto path; returns path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str, text: str) -> str:
    """Write text to path atomically."""
    return atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(path: str, obj: Any, indent: int | None = 2, **kw) -> str:
    """Write obj as JSON (with a final newline) to path atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kw) + "\n")


def atomic_target(path: str) -> str:
    """A fresh temp path beside path (same folder, same extension) for writers that need a file name;
    move it into place with `os.replace(tmp, path)` once complete, and unlink it on failure."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ext = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=ext, dir=folder)
    os.close(fd)
    return tmp


@contextmanager
def atomic_path(path: str, mode: int = 0o644) -> Iterator[str]:
    """A temp path beside path for writers that need a file name (video encoders, file joins): it is moved
    onto path when the block ends without an error, and removed otherwise."""
    tmp = atomic_target(path)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["TEMP_PREFIX", "atomic_write", "atomic_write_text", "atomic_write_json", "atomic_target", "atomic_path"]


def read_json_object(path: str, error: type = ValueError) -> dict:
    """A JSON object from path; a missing, unreadable or malformed file, or one holding another JSON value,
    raises `error` with one line naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data

