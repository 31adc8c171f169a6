"""Dataset integrity: per-chunk CRC32s stored at commit time and checked on open, the dataset fingerprint,
and the zarr temporaries a killed writer leaves.

Each array of DIR/data.zarr has a record {"chunk_rows": c, "crc32": [...]} in progress.json (the commit
record) and in meta.json: crc32[k] covers rows k*c .. min((k+1)*c, n) - 1 of the n committed rows, byte for
byte as written (extended as episodes are appended, with zlib.crc32's running form, so a commit costs
only the new rows). zarr reads a deleted chunk as its fill value (zeros) without complaint; its CRC then
fails, and the error names the array, the chunk and its rows, as it does for a chunk that no longer
decompresses. The low-dimensional arrays are checked whole when a DemoDataset opens them (they are read
whole anyway); RGB chunks are checked the first time a reader touches each one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from typing import Optional

import numpy as np

from taskweave.sim.errors import UserError

_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")   # zarr's LocalStore writes NAME.<uuid hex>.partial, then renames


class DatasetError(UserError, RuntimeError):
    """A dataset that is missing, unfinalised, corrupt or inconsistent; the message names the file."""


def new_record(chunk_rows: int) -> dict:
    """An empty checksum record for an array chunked by chunk_rows rows."""
    return {"chunk_rows": int(chunk_rows), "crc32": []}


def extend(record: dict, start: int, data: np.ndarray) -> None:
    """Fold rows appended at row `start` into the record (its CRCs cover rows [0, start) so far)."""
    c, crcs = record["chunk_rows"], record["crc32"]
    data = np.ascontiguousarray(data)
    pos, row = 0, int(start)
    while pos < len(data):
        k = row // c
        take = min(len(data) - pos, (k + 1) * c - row)
        block = data[pos:pos + take]
        if k < len(crcs):
            crcs[k] = zlib.crc32(block, crcs[k])
        else:
            crcs.append(zlib.crc32(block))
        pos, row = pos + take, row + take


def record_of(data: np.ndarray, chunk_rows: int) -> dict:
    """The checksum record of rows already stored (a dataset written before checksums)."""
    rec = new_record(chunk_rows)
    extend(rec, 0, data)
    return rec


def _chunk(arr, k: int) -> str:
    return arr.metadata.chunk_key_encoding.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))


def _damaged(zarr_path: str, key: str, arr, k: int, c: int, n: int, why: str) -> DatasetError:
    name = _chunk(arr, k)
    if not os.path.exists(os.path.join(zarr_path, key, name)):
        why = "is missing (deleted)"
    return DatasetError(f"{zarr_path}/{key}: chunk {name} (rows {k * c}..{min((k + 1) * c, n) - 1}) {why}; the "
                        f"dataset is damaged: restore the chunk or collect it again")


def read_checked(zarr_path: str, arr, key: str, n: int, record: Optional[dict]) -> np.ndarray:
    """Rows [0, n) of arr, checked against record (None: a dataset without checksums, read unchecked)."""
    c = record["chunk_rows"] if record else arr.chunks[0]
    try:
        data = np.asarray(arr[:n])
    except Exception as exc:  # noqa: BLE001 - a chunk that no longer decompresses; find which one
        for k in range(-(-n // c)):
            try:
                arr[k * c:min((k + 1) * c, n)]
            except Exception:  # noqa: BLE001
                raise _damaged(zarr_path, key, arr, k, c, n, f"is unreadable, truncated or corrupt "
                               f"({type(exc).__name__})") from None
        raise DatasetError(f"{zarr_path}/{key}: unreadable ({type(exc).__name__}: {exc})") from None
    if record:
        verify(zarr_path, arr, key, data, record)
    return data


def verify(zarr_path: str, arr, key: str, data: np.ndarray, record: dict, chunks=None) -> None:
    """Raise DatasetError naming the first chunk of data (rows [0, n)) whose CRC differs from the record."""
    c, crcs, n = record["chunk_rows"], record["crc32"], len(data)
    if len(crcs) != -(-n // c) or c != arr.chunks[0]:
        raise DatasetError(f"{zarr_path}/{key}: the checksum record ({len(crcs)} chunks of {c} rows) does not fit "
                           f"{n} rows in chunks of {arr.chunks[0]}")
    for k in (range(len(crcs)) if chunks is None else chunks):
        if zlib.crc32(np.ascontiguousarray(data[k * c:(k + 1) * c])) != crcs[k]:
            raise _damaged(zarr_path, key, arr, k, c, n, "does not match the checksum stored when it was written")


def read_rows_checked(zarr_path: str, arr, key: str, lo: int, hi: int, n: int, record: Optional[dict],
                      checked: set) -> np.ndarray:
    """Rows [lo, hi) of a frame array; each chunk is checked against record the first time it is read."""
    c = record["chunk_rows"] if record else arr.chunks[0]
    todo = [k for k in range(lo // c, (hi - 1) // c + 1) if record and k not in checked]
    try:
        if not todo:
            return np.asarray(arr[lo:hi])
        k0, k1 = lo // c, (hi - 1) // c
        block = np.asarray(arr[k0 * c:min((k1 + 1) * c, n)])
    except Exception as exc:  # noqa: BLE001
        raise _damaged(zarr_path, key, arr, lo // c, c, n, f"is unreadable, truncated or corrupt "
                       f"({type(exc).__name__})") from None
    for k in todo:
        part = block[(k - k0) * c:(k - k0 + 1) * c]
        if len(record["crc32"]) <= k or zlib.crc32(np.ascontiguousarray(part)) != record["crc32"][k]:
            raise _damaged(zarr_path, key, arr, k, c, n, "does not match the checksum stored when it was written")
        checked.add(k)
    return block[lo - k0 * c:hi - k0 * c]


def dataset_fingerprint(meta: dict) -> str:
    """A short hash of what a dataset teaches (engine, vocabularies, episodes, data checksums)."""
    ident = {k: meta.get(k) for k in ("backend", "tasks", "skills", "obs", "action_dim", "num_steps", "checksums")}
    ident["episodes"] = [[e["task"], e["seed"], e["split"], e["length"]] for e in meta.get("episodes", [])]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def remove_partials(zarr_path: str) -> list:
    """Delete the `*.<uuid>.partial` files zarr leaves when a write is killed; only the lock holder may call it."""
    removed = []
    for folder, _, files in os.walk(zarr_path):
        for name in files:
            if _PARTIAL.search(name):
                os.unlink(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    return removed
