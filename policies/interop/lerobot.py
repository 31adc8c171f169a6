"""LeRobotDataset v3.0 export and import (pyarrow for parquet, PyAV for mp4).

Layout written (LeRobot's `lerobot.datasets.utils` paths):
  meta/info.json       codebase_version "v3.0", fps = the control rate, features, splits, path templates
  meta/stats.json      min/max/mean/std/count/q01..q99 per feature (images per channel, in [0, 1])
  meta/tasks.parquet   one row per skill text (the per-frame task), task_index = taskweave skill_id
  meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, data/video locations,
                       per-episode stats, and taskweave/{index,task,seed,split,segment_ends,info}
  meta/taskweave.json  the taskweave vocabularies and provenance (ignored by LeRobot)
  data/chunk-XXX/file-XXX.parquet          observation.state, action, timestamp, frame_index,
                       episode_index, index, task_index; a new file past data_files_size_in_mb
  videos/observation.images.<camera>/chunk-XXX/file-XXX.mp4   frames at pts = frame / fps
Episodes are written train, then val, then test, so that info.json's splits are episode ranges;
`taskweave/index` keeps the original order, which import restores.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from taskweave.sim.fileio import atomic_write_json

from .common import ACTION_NAMES, InteropError, TaskweaveSource, require, staged_folder, state_names
from .video import LOSSLESS, Mp4Writer, video_info

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
_INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                   "task_index": "int64"}


def _stats(x: np.ndarray) -> dict:
    """LeRobot's per-feature stats of x (N, ...) reduced over axis 0."""
    x = np.asarray(x, dtype=np.float64)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = np.quantile(x, q, axis=0)
    return out


def _image_stats(frames: np.ndarray, max_frames: int = 100) -> dict:
    """Per-channel stats (3, 1, 1) in [0, 1] over evenly sampled frames, as LeRobot computes them."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), max_frames)).round().astype(int))
    px = frames[idx].reshape(-1, 3) / 255.0
    s = _stats(px)
    return {k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in {**s, "count": np.array([len(idx)])}.items()}


def _aggregate(parts: list) -> dict:
    """Pool per-episode stats (LeRobot's aggregate_feature_stats: count-weighted means and quantiles)."""
    counts = np.array([p["count"][0] for p in parts], dtype=np.float64)
    w = counts.reshape(-1, *([1] * parts[0]["mean"].ndim))
    means = np.stack([p["mean"] for p in parts])
    mean = (means * w).sum(0) / counts.sum()
    var = ((np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2) * w).sum(0) / counts.sum()
    out = {"min": np.min([p["min"] for p in parts], 0), "max": np.max([p["max"] for p in parts], 0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(counts.sum())])}
    for k in parts[0]:
        if k.startswith("q"):
            out[k] = (np.stack([p[k] for p in parts]) * w).sum(0) / counts.sum()
    return out


def _splits(meta: dict) -> dict:
    """info.json splits as episode ranges of the written order (train, then val, then test)."""
    splits, n = {}, 0
    for s in SPLIT_ORDER:
        k = sum(1 for e in meta["episodes"] if e["split"] == s)
        if k:
            splits[s] = f"{n}:{n + k}"
        n += k
    return splits


def _jsonable(stats: dict) -> dict:
    return {k: v.tolist() for k, v in stats.items()}


class _Files:
    """chunk-XXX/file-XXX numbering: a new file once the current one holds limit bytes (at episode bounds)."""

    def __init__(self, limit_mb: float) -> None:
        self.limit, self.chunk, self.file, self.bytes, self.open = limit_mb * 2**20, 0, -1, 0, False

    def want_new(self) -> bool:
        return not self.open or self.bytes >= self.limit

    def advance(self) -> tuple[int, int]:
        self.file += 1
        if self.file == CHUNKS_SIZE:
            self.chunk, self.file = self.chunk + 1, 0
        self.bytes, self.open = 0, True
        return self.chunk, self.file


def _features(src: TaskweaveSource, video_key: Optional[str]) -> dict:
    d, a = src.meta["obs"]["state"][0], src.meta["action_dim"]
    feats = {"observation.state": {"dtype": "float32", "shape": [d], "names": state_names(src.meta["extra"], d)},
             "action": {"dtype": "float32", "shape": [a], "names": ACTION_NAMES if a == len(ACTION_NAMES) else None}}
    if video_key:
        feats[video_key] = {"dtype": "video", "shape": list(src.rgb_shape), "names": ["height", "width", "channels"]}
    feats.update({k: {"dtype": t, "shape": [1], "names": None} for k, t in _INDEX_FEATURES.items()})
    return feats


def export_lerobot(data: str, out: str, *, camera: str = "front", video_codec: str = "libx264rgb",
                   robot_type: str = "panda", data_file_mb: float = 100, video_file_mb: float = 200,
                   force: bool = False) -> dict:
    """Write taskweave dataset data as a LeRobotDataset v3.0 folder out; returns a summary."""
    pa = require("pyarrow", "--format lerobot")
    pq = require("pyarrow.parquet", "--format lerobot", "pyarrow")
    src = TaskweaveSource(data)
    meta = src.meta
    hz = float(meta.get("control_hz", 10.0))
    if abs(hz - round(hz)) > 1e-9 or round(hz) <= 0:
        raise InteropError(f"{os.path.join(data, 'meta.json')}: control_hz {hz} is not a whole number of frames "
                           "per second, which LeRobot's fps must be")
    fps = int(round(hz))
    video_key = f"observation.images.{camera}" if src.has_rgb else None
    features = _features(src, video_key)
    order = sorted(range(len(meta["episodes"])), key=lambda i: (SPLIT_ORDER[meta["episodes"][i]["split"]], i))
    with staged_folder(out, force, inputs=(data,)) as tmp:
        dfiles, vfiles = _Files(data_file_mb), _Files(video_file_mb)
        pwriter = vwriter = None
        rows, video_parts = [], []
        index = 0
        try:
            for new_idx, i in enumerate(order):
                e = meta["episodes"][i]
                state, action, skill = src.arrays(e)
                t = len(state)
                frame = np.arange(t, dtype=np.int64)
                cols = {"observation.state": state, "action": action, "timestamp": (frame / fps).astype(np.float32),
                        "frame_index": frame, "episode_index": np.full(t, new_idx, np.int64),
                        "index": np.arange(index, index + t, dtype=np.int64), "task_index": skill}
                table = pa.table({k: (pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
                                      if v.ndim == 2 else pa.array(v)) for k, v in cols.items()})
                if dfiles.want_new():
                    if pwriter is not None:
                        pwriter, _ = None, pwriter.close()
                    c, f = dfiles.advance()
                    path = os.path.join(tmp, DATA_PATH.format(chunk_index=c, file_index=f))
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    pwriter = pq.ParquetWriter(path, table.schema, compression="snappy")
                pwriter.write_table(table)
                dfiles.bytes += table.nbytes
                st = {k: _stats(v if v.ndim == 2 else v[:, None]) for k, v in cols.items()}
                row = {"episode_index": new_idx, "tasks": [src.skills[s] for s in dict.fromkeys(skill.tolist())],
                       "length": t, "data/chunk_index": dfiles.chunk, "data/file_index": dfiles.file,
                       "dataset_from_index": index, "dataset_to_index": index + t}
                if video_key:
                    frames = src.frames(e)
                    if vfiles.want_new():
                        if vwriter is not None:
                            vwriter, _ = None, vwriter.close()
                        c, f = vfiles.advance()
                        path = os.path.join(tmp, VIDEO_PATH.format(video_key=video_key, chunk_index=c, file_index=f))
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        vwriter = Mp4Writer(path, fps, frames.shape[1], frames.shape[2], video_codec)
                    start = vwriter.frames
                    vwriter.write(frames)
                    vfiles.bytes = vwriter.bytes
                    row.update({f"videos/{video_key}/chunk_index": vfiles.chunk,
                                f"videos/{video_key}/file_index": vfiles.file,
                                f"videos/{video_key}/from_timestamp": start / fps,
                                f"videos/{video_key}/to_timestamp": (start + t) / fps})
                    st[video_key] = _image_stats(frames)
                    video_parts.append(st[video_key])
                row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
                row.update({f"stats/{k}/{s}": v.tolist() for k, d in st.items() for s, v in d.items()})
                row.update({"taskweave/index": i, "taskweave/task": e["task"], "taskweave/seed": int(e["seed"]),
                            "taskweave/split": e["split"], "taskweave/segment_ends": src.segments(e).tolist(),
                            "taskweave/info": json.dumps(e.get("info") or {})})
                rows.append(row)
                index += t
        finally:
            for w in (pwriter, vwriter):
                if w is not None:
                    w.close()
        _write_meta(tmp, pa, pq, src, data, rows, features, fps, robot_type, video_key, video_parts, camera,
                    video_codec, (data_file_mb, video_file_mb))
    return {"format": "lerobot", "out": os.path.abspath(out), "episodes": len(rows), "frames": index,
            "fps": fps, "splits": _splits(meta), "video": video_key, "video_codec": video_codec if video_key else None,
            "lossless": bool(video_key is None or video_codec in LOSSLESS)}


def _write_meta(tmp, pa, pq, src, data, rows, features, fps, robot_type, video_key, video_parts, camera,
                video_codec, file_mb) -> None:
    meta = src.meta
    os.makedirs(os.path.join(tmp, "meta", "episodes", "chunk-000"), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(tmp, EPISODES_PATH), compression="snappy")
    tasks = pa.table({"task_index": pa.array(range(len(src.skills)), pa.int64()), "task": src.skills})
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "pandas_version": "2.2.0", "creator": {},
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}]}
    pq.write_table(tasks.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}),
                   os.path.join(tmp, "meta", "tasks.parquet"))
    if video_key:
        first = os.path.join(tmp, VIDEO_PATH.format(video_key=video_key, chunk_index=0, file_index=0))
        features[video_key]["info"] = video_info(first)
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(rows),
            "total_frames": int(meta["num_steps"]), "total_tasks": len(src.skills), "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": file_mb[0], "video_files_size_in_mb": file_mb[1], "fps": fps, "splits": _splits(meta),
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if video_key else None, "features": features}
    atomic_write_json(os.path.join(tmp, "meta", "info.json"), info, indent=4)
    cols = {"observation.state": src.state, "action": src.action}
    stats = {k: _jsonable(_stats(v)) for k, v in cols.items()}
    stats.update({k: _jsonable(_aggregate(_episode_stats(rows, k))) for k in _INDEX_FEATURES})
    if video_key:
        stats[video_key] = _jsonable(_aggregate(video_parts))
    atomic_write_json(os.path.join(tmp, "meta", "stats.json"), stats, indent=4)
    atomic_write_json(os.path.join(tmp, "meta", "taskweave.json"), {
        "format_version": meta["format_version"], "tasks": meta["tasks"], "skills": src.skills,
        "backend": meta.get("backend"), "control_hz": meta.get("control_hz"), "camera": camera if video_key else None,
        "video_codec": video_codec if video_key else None, "extra": meta.get("extra", {}),
        "exported_from": os.path.abspath(data)}, indent=2)


def _episode_stats(rows: list, key: str) -> list:
    names = [c[len(f"stats/{key}/"):] for c in rows[0] if c.startswith(f"stats/{key}/")]
    return [{n: np.asarray(r[f"stats/{key}/{n}"]) for n in names} for r in rows]
