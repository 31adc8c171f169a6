"""LeRobotDataset v3.0 import: any v3.0 folder with `observation.state` and `action` becomes a taskweave dataset.

The per-frame task (tasks.parquet) becomes the skill text; skill segments are runs of one task unless
the episodes table carries `taskweave/segment_ends`. Splits come from `taskweave/split`, else from
info.json's `splits` ranges (episodes outside every range train). Camera frames come from one
`observation.images.<camera>` feature, video (mp4) or image (PNG/JPEG bytes in the parquet).
"""
from __future__ import annotations

import glob
import io
import json
import os
from typing import Iterator, Optional

import numpy as np

from ..dataset import segments_from_skills
from .common import Episode, InteropError, read_json, require, staged_folder, write_taskweave
from .lerobot import CODEBASE_VERSION
from .video import FrameReader


def _parquet(pq, path: str, columns: Optional[list] = None):
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for damaged files
        raise InteropError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    for c in columns or ():
        if c not in table.column_names:
            raise InteropError(f"{path}: no column '{c}'")
    return table


def _column(table, name: str, path: str, width: Optional[int] = None, dtype=np.float32) -> np.ndarray:
    """A column as numpy: (N,) scalars or (N, width) from (fixed-size) lists; a wrong shape names the file."""
    col = table.column(name).combine_chunks()
    try:
        if width is None:
            return np.asarray(col.to_numpy(zero_copy_only=False), dtype=dtype)
        flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=dtype)
    except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: not a list column
        raise InteropError(f"{path}: column '{name}': not numeric lists ({exc})") from None
    if col.null_count or flat.size != len(col) * width:
        raise InteropError(f"{path}: column '{name}': not {width} values in every row, as info.json says")
    return flat.reshape(len(col), width)


def _task_strings(pq, root: str) -> list:
    path = os.path.join(root, "meta", "tasks.parquet")
    if not os.path.exists(path):
        raise InteropError(f"{path}: file not found")
    table = _parquet(pq, path, ["task_index"])
    names = [c for c in ("task", "__index_level_0__") if c in table.column_names]
    if not names:
        raise InteropError(f"{path}: no 'task' column (task strings)")
    idx = table.column("task_index").to_pylist()
    texts = table.column(names[0]).to_pylist()
    out = [None] * (max(idx) + 1 if idx else 0)
    for i, t in zip(idx, texts):
        if not isinstance(t, str) or i < 0:
            raise InteropError(f"{path}: row task_index {i}: task must be a string")
        out[i] = t
    return out


def _camera_key(features: dict, camera: Optional[str], tw: dict, info_path: str) -> Optional[str]:
    keys = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") in ("video", "image")]
    if camera:
        key = camera if camera in features else f"observation.images.{camera}"
        if key not in keys:
            raise InteropError(f"{info_path}: features: no camera '{key}' (cameras: {', '.join(keys) or 'none'})")
        return key
    if tw.get("camera"):
        return f"observation.images.{tw['camera']}"
    if len(keys) > 1:
        raise InteropError(f"{info_path}: features: several cameras ({', '.join(keys)}); choose one with --camera")
    return keys[0] if keys else None


def import_lerobot(src: str, out: str, *, task: Optional[str] = None, camera: Optional[str] = None,
                   force: bool = False) -> dict:
    """Convert a LeRobotDataset v3.0 folder src into a taskweave dataset folder out; returns a summary."""
    pq = require("pyarrow.parquet", "--format lerobot", "pyarrow")
    info_path = os.path.join(src, "meta", "info.json")
    if not os.path.isdir(src):
        raise InteropError(f"{src}: dataset folder not found")
    info = read_json(info_path)
    for key in ("codebase_version", "fps", "features"):
        if key not in info:
            raise InteropError(f"{info_path}: missing field '{key}'")
    if info["codebase_version"] != CODEBASE_VERSION:
        raise InteropError(f"{info_path}: codebase_version {info['codebase_version']!r}; only {CODEBASE_VERSION!r} "
                           "is read (LeRobot converts older ones with convert_dataset_v21_to_v30)")
    feats, fps = info["features"], info["fps"]
    if not isinstance(fps, (int, float)) or fps <= 0:
        raise InteropError(f"{info_path}: field 'fps' = {fps!r}: must be a positive number")
    dims = {}
    for key in ("observation.state", "action"):
        f = feats.get(key) if isinstance(feats, dict) else None
        if not isinstance(f, dict) or f.get("dtype") not in ("float32", "float64") or len(f.get("shape", ())) != 1:
            raise InteropError(f"{info_path}: features.{key}: missing or not a 1-D float feature")
        dims[key] = int(f["shape"][0])
    tw_path = os.path.join(src, "meta", "taskweave.json")
    tw = read_json(tw_path) if os.path.exists(tw_path) else {}
    cam = _camera_key(feats, camera, tw, info_path)
    skills = _task_strings(pq, src)

    # frames: every data file, ordered by the global index
    need = ["observation.state", "action", "episode_index", "frame_index", "index", "task_index"]
    files = sorted(glob.glob(os.path.join(src, "data", "*", "*.parquet")))
    if not files:
        raise InteropError(f"{os.path.join(src, 'data')}: no chunk-XXX/file-XXX.parquet files")
    parts = {k: [] for k in need}
    images = []
    for path in files:
        table = _parquet(pq, path, need + ([cam] if cam and feats[cam]["dtype"] == "image" else []))
        parts["observation.state"].append(_column(table, "observation.state", path, dims["observation.state"]))
        parts["action"].append(_column(table, "action", path, dims["action"]))
        for k in need[2:]:
            parts[k].append(_column(table, k, path, dtype=np.int64))
        if cam and feats[cam]["dtype"] == "image":
            images += table.column(cam).to_pylist()
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(cols["index"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    images = [images[i] for i in order] if images else images
    if len(cols["index"]) and not np.array_equal(cols["index"], np.arange(len(order))):
        raise InteropError(f"{os.path.join(src, 'data')}: column 'index' is not 0..{len(order) - 1}")
    bad = (cols["task_index"] < 0) | (cols["task_index"] >= len(skills))
    if bad.any() or any(skills[i] is None for i in np.unique(cols["task_index"])):
        raise InteropError(f"{os.path.join(src, 'data')}: column 'task_index' refers to tasks missing from "
                           "meta/tasks.parquet")

    ep_files = sorted(glob.glob(os.path.join(src, "meta", "episodes", "*", "*.parquet")))
    if not ep_files:
        raise InteropError(f"{os.path.join(src, 'meta', 'episodes')}: no chunk-XXX/file-XXX.parquet files")
    eps = []
    for path in ep_files:
        table = _parquet(pq, path, ["episode_index", "length", "dataset_from_index", "dataset_to_index"])
        keep = [c for c in table.column_names if not c.startswith("stats/")]
        eps += [dict(r, _file=path) for r in table.select(keep).to_pylist()]
    eps.sort(key=lambda r: r.get("taskweave/index", r["episode_index"]))
    ranges = _split_ranges(info.get("splits"), info_path)
    name = task or os.path.basename(os.path.normpath(src))

    def episodes() -> Iterator[Episode]:
        readers: dict = {}
        try:
            for r in eps:
                a, b, path = int(r["dataset_from_index"]), int(r["dataset_to_index"]), r["_file"]
                where = f"{path}: episode_index {r['episode_index']}"
                if not (0 <= a < b <= len(order)) or b - a != r["length"]:
                    raise InteropError(f"{where}: dataset_from_index/dataset_to_index {a}..{b} do not fit length "
                                       f"{r['length']} and {len(order)} frames")
                if (cols["episode_index"][a:b] != r["episode_index"]).any() or \
                        not np.array_equal(cols["frame_index"][a:b], np.arange(b - a)):
                    raise InteropError(f"{where}: data rows {a}..{b} are not frames 0..{b - a - 1} of this episode")
                skill_ids = cols["task_index"][a:b]
                ends = r.get("taskweave/segment_ends") or segments_from_skills(skill_ids).tolist()
                yield Episode(task=r.get("taskweave/task") or name, seed=int(r.get("taskweave/seed",
                                                                                   r["episode_index"])),
                              split=r.get("taskweave/split") or _split_of(r["episode_index"], ranges),
                              state=cols["observation.state"][a:b], action=cols["action"][a:b],
                              skills=[skills[i] for i in skill_ids], segment_ends=np.asarray(ends, np.int64),
                              rgb=_frames(src, info, feats, cam, r, a, b, images, readers, where) if cam else None,
                              info=json.loads(r.get("taskweave/info") or "{}"))
        finally:
            for rd in readers.values():
                rd.close()

    extra = dict(tw.get("extra") or {})
    extra["imported_from"] = {"format": "lerobot", "path": os.path.abspath(src),
                              "codebase_version": info["codebase_version"], "camera": cam}
    tasks = list(tw.get("tasks") or [name])
    with staged_folder(out, force, inputs=(src,)) as tmp:
        counts = write_taskweave(tmp, episodes(), tasks=tasks, backend=tw.get("backend") or "lerobot",
                                 control_hz=float(tw.get("control_hz") or fps), extra=extra, where=src)
    return {"format": "lerobot", "out": os.path.abspath(out), "camera": cam, **counts}


def _split_ranges(splits, info_path: str) -> dict:
    out = {}
    for name, rng in (splits or {}).items():
        try:
            lo, hi = (int(x) for x in str(rng).split(":"))
        except ValueError:
            raise InteropError(f"{info_path}: splits.{name} = {rng!r}: expected 'START:END'") from None
        out[{"valid": "val", "validation": "val"}.get(name, name)] = (lo, hi)
    return out


def _split_of(episode_index: int, ranges: dict) -> str:
    for name in ("test", "val", "train"):
        lo, hi = ranges.get(name, (0, 0))
        if lo <= episode_index < hi:
            return name
    return "train"


def _frames(src, info, feats, cam, r, a, b, images, readers, where) -> np.ndarray:
    shape = tuple(feats[cam].get("shape", ()))
    if feats[cam]["dtype"] == "image":
        pil = require("PIL.Image", "reading image features", "pillow")
        frames = []
        for i in range(a, b):
            img = images[i]
            data = img.get("bytes") if isinstance(img, dict) else None
            if not data:
                raise InteropError(f"{where}: column '{cam}' frame {i - a}: no embedded image bytes")
            frames.append(np.asarray(pil.open(io.BytesIO(data)).convert("RGB")))
        frames = np.stack(frames)
    else:
        try:
            c, f = r[f"videos/{cam}/chunk_index"], r[f"videos/{cam}/file_index"]
            t0 = float(r[f"videos/{cam}/from_timestamp"])
        except KeyError as exc:
            raise InteropError(f"{where}: no column {exc} (video location)") from None
        template = info.get("video_path") or "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        path = os.path.join(src, template.format(video_key=cam, chunk_index=c, file_index=f))
        if not os.path.exists(path):
            raise InteropError(f"{path}: video file not found ({where})")
        if path not in readers:
            readers[path] = FrameReader(path, info["fps"])
        frames = readers[path].read(int(round(t0 * info["fps"])), b - a)
    if len(shape) == 3 and frames.shape[1:] != shape and frames.shape[1:] != (shape[1], shape[2], shape[0]):
        raise InteropError(f"{where}: '{cam}' frames are {frames.shape[1:]}, info.json says {list(shape)}")
    return frames
