"""Demonstration datasets: DIR/meta.json + DIR/data.zarr; an appending, resumable writer and a window reader.

(~560 lines: the writer and the reader of one on-disk format, privileged and robot observations, read together.)

Layout of DIR/data.zarr (all arrays chunked and Blosc-zstd compressed):
  data/state (T, D) float32, data/action (T, A) float32, data/skill_id (T,) int32,
  data/task_id (T,) int32, optional data/rgb (T, H, W, 3) uint8; robot observations (collect
  --obs robot) add data/rgb_<camera> (T, H, W, 3) uint8 per camera and data/proprio (T, P) float32,
  meta/episode_ends (E,) int64 and meta/segment_ends (S,) int64 (exclusive global ends; a
  segment is a run of steps under one skill, never crossing an episode end).
DIR/progress.json is the writer's commit record; DIR/meta.json, written atomically by
finalize(), makes the dataset valid and lists exactly the episodes readers see. Both carry a
CRC32 per chunk of every array ("checksums", see `policies/integrity.py`), checked when a
DemoDataset opens the data, and the backend the demonstrations come from (an append from
another engine is refused).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec

from taskweave.sim.fileio import atomic_write_text, read_json_object

from . import integrity
from .integrity import DatasetError

FORMAT_VERSION = 2   # 2: per-chunk checksums; 1 (none) is still read, unchecked
SPLITS = ("train", "val", "test")
_ARRAYS = ("state", "action", "skill_id", "task_id")
_KEYS = tuple(f"data/{a}" for a in (*_ARRAYS, "rgb")) + ("meta/episode_ends", "meta/segment_ends")


def camera_array(camera: str) -> str:
    """The zarr array of a camera's frames, e.g. 'data/rgb_front'."""
    return f"data/rgb_{camera}"


def _compressor(shuffle: str = "bitshuffle") -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


def _read_json(path: str) -> dict:
    return read_json_object(path, DatasetError)


def segments_from_skills(skill_ids: np.ndarray) -> np.ndarray:
    """Return the exclusive end index of each run of equal skill ids."""
    skill_ids = np.asarray(skill_ids)
    change = np.nonzero(skill_ids[1:] != skill_ids[:-1])[0] + 1
    return np.concatenate([change, [len(skill_ids)]]).astype(np.int64)


class DatasetWriter:
    """Appends episodes to DIR/data.zarr; reopening DIR resumes; finalize() writes meta.json atomically."""

    def __init__(self, path: str, *, tasks: Sequence[str] = (), backend: Optional[str] = None,
                 control_hz: float = 10.0, chunk_len: int = 2048, rgb_chunk_len: int = 16,
                 extra: Optional[dict] = None, proprio_layout: Optional[str] = None) -> None:
        self.path = path
        self.zarr_path = os.path.join(path, "data.zarr")
        self.progress_path = os.path.join(path, "progress.json")
        self.meta_path = os.path.join(path, "meta.json")
        self.chunk_len, self.rgb_chunk_len = chunk_len, rgb_chunk_len
        os.makedirs(path, exist_ok=True)
        if os.path.exists(self.progress_path):
            self._state = _read_json(self.progress_path)
            stored = self._state.get("backend")
            if backend is not None and stored != backend:
                raise DatasetError(f"{self.progress_path}: this dataset holds {stored} demonstrations; refusing to "
                                   f"append {backend} ones (collect them into another folder)")
            self._root = (self._open_root("r+") if self._state["state_dim"] is not None
                          else zarr.open_group(self.zarr_path, mode="w"))  # nothing committed yet
            for t in tasks:
                self._task_id(t)
            self._truncate_uncommitted()
            if "checksums" not in self._state:
                self._checksum_stored()
        else:
            if os.path.exists(self.zarr_path):
                raise DatasetError(f"{self.zarr_path}: exists without {self.progress_path}; refusing to overwrite "
                                   "a store this writer did not create")
            self._state = {"format_version": FORMAT_VERSION, "backend": backend or "unknown",
                           "control_hz": control_hz, "tasks": [], "skills": [], "episodes": [], "state_dim": None,
                           "action_dim": None, "rgb_shape": None, "num_steps": 0, "num_segments": 0,
                           "extra": extra or {}, "checksums": {}, "cameras": None, "camera_shape": None,
                           "proprio_dim": None, "proprio_layout": proprio_layout}
            for t in tasks:
                self._task_id(t)
            self._commit()  # before the store exists, so a crash here leaves a resumable folder
            self._root = zarr.open_group(self.zarr_path, mode="w")
        self._done = {(e["task"], e["seed"]) for e in self._state["episodes"]}

    # -- bookkeeping
    def _open_root(self, mode: str):
        try:
            return zarr.open_group(self.zarr_path, mode=mode)
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"{self.zarr_path}: cannot open zarr store ({exc})") from None

    def _commit(self) -> None:
        atomic_write_text(self.progress_path, json.dumps(self._state) + "\n")

    def _task_id(self, task: str) -> int:
        if task not in self._state["tasks"]:
            self._state["tasks"].append(task)
        return self._state["tasks"].index(task)

    def _skill_id(self, text: str) -> int:
        skills = self._state["skills"]
        if text not in skills:
            skills.append(text)
        return skills.index(text)

    def _truncate_uncommitted(self) -> None:
        """Drop rows a crash left past the last committed episode."""
        n, s, e = self._state["num_steps"], self._state["num_segments"], len(self._state["episodes"])
        if self._state["state_dim"] is None:
            return
        try:
            for key in self._step_keys():
                arr = self._root[key]
                if arr.shape[0] < n:
                    raise DatasetError(f"{self.zarr_path}/{key}: has {arr.shape[0]} rows, progress.json "
                                       f"commits {n}")
                arr.resize((n, *arr.shape[1:]))
            self._root["meta/episode_ends"].resize((e,))
            self._root["meta/segment_ends"].resize((s,))
        except KeyError as exc:
            raise DatasetError(f"{self.zarr_path}: missing array {exc}") from None

    def _step_keys(self) -> list:
        """The arrays with one row per step that this dataset has."""
        st = self._state
        keys = [f"data/{a}" for a in _ARRAYS] + (["data/rgb"] if st["rgb_shape"] is not None else [])
        keys += [camera_array(c) for c in st.get("cameras") or ()]
        return keys + (["data/proprio"] if st.get("proprio_dim") is not None else [])

    def _checksum_stored(self) -> None:
        """Give a store written before checksums (format 1) records of its committed rows, from now on checked."""
        st, sums = self._state, {}
        if st["state_dim"] is not None:
            sizes = {"meta/episode_ends": len(st["episodes"]), "meta/segment_ends": st["num_segments"]}
            for key in _KEYS:
                if key in self._root:
                    arr = self._root[key]
                    n = sizes.get(key, st["num_steps"])
                    sums[key] = integrity.record_of(np.asarray(arr[:n]), arr.chunks[0])
        st.update(checksums=sums, format_version=FORMAT_VERSION)

    def _append(self, key: str, data: np.ndarray) -> None:
        """Append rows to one array and fold them into its checksum record."""
        arr = self._root[key]
        start = arr.shape[0]
        arr.append(data)
        rec = self._state["checksums"].setdefault(key, integrity.new_record(arr.chunks[0]))
        integrity.extend(rec, start, data)

    @property
    def rgb_shape(self) -> Optional[tuple]:
        """(H, W, 3) of the stored frames; None without frames or before the first episode."""
        return tuple(self._state["rgb_shape"]) if self._state["rgb_shape"] is not None else None

    @property
    def cameras(self) -> Optional[tuple]:
        """The cameras whose frames are stored (robot observations); None without them or before the first episode."""
        return tuple(self._state["cameras"]) if self._state.get("cameras") is not None else None

    @property
    def camera_shape(self) -> Optional[tuple]:
        """(H, W, 3) of every camera's stored frames; None without them or before the first episode."""
        return tuple(self._state["camera_shape"]) if self._state.get("camera_shape") is not None else None

    @property
    def backend(self) -> str:
        """The engine the stored demonstrations come from."""
        return self._state["backend"]

    def _create_arrays(self, state_dim: int, action_dim: int, rgb_shape: Optional[tuple],
                       frames: Optional[dict] = None, proprio_dim: Optional[int] = None) -> None:
        c = self.chunk_len
        mk = self._root.create_array
        mk("data/state", shape=(0, state_dim), chunks=(c, state_dim), dtype="float32", compressors=_compressor())
        mk("data/action", shape=(0, action_dim), chunks=(c, action_dim), dtype="float32", compressors=_compressor())
        mk("data/skill_id", shape=(0,), chunks=(c,), dtype="int32", compressors=_compressor())
        mk("data/task_id", shape=(0,), chunks=(c,), dtype="int32", compressors=_compressor())
        if rgb_shape is not None:
            mk("data/rgb", shape=(0, *rgb_shape), chunks=(self.rgb_chunk_len, *rgb_shape), dtype="uint8",
               compressors=_compressor("shuffle"))
        for cam, shape in (frames or {}).items():
            mk(camera_array(cam), shape=(0, *shape), chunks=(self.rgb_chunk_len, *shape), dtype="uint8",
               compressors=_compressor("shuffle"))
        if proprio_dim is not None:
            mk("data/proprio", shape=(0, proprio_dim), chunks=(c, proprio_dim), dtype="float32",
               compressors=_compressor())
        mk("meta/episode_ends", shape=(0,), chunks=(4096,), dtype="int64", compressors=_compressor())
        mk("meta/segment_ends", shape=(0,), chunks=(4096,), dtype="int64", compressors=_compressor())
        shapes = {tuple(s) for s in (frames or {}).values()}
        self._state.update(state_dim=state_dim, action_dim=action_dim,
                           rgb_shape=list(rgb_shape) if rgb_shape is not None else None,
                           cameras=list(frames) if frames else None,
                           camera_shape=list(shapes.pop()) if shapes else None, proprio_dim=proprio_dim)

    # -- public API
    @property
    def num_episodes(self) -> int:
        """Number of committed episodes."""
        return len(self._state["episodes"])

    @property
    def episodes(self) -> list[dict]:
        """Committed episodes (task, seed, split, length, ...), oldest first; a copy."""
        return [dict(e) for e in self._state["episodes"]]

    def has_episode(self, task: str, seed: int) -> bool:
        """Whether an episode of task with this seed is already stored."""
        return (task, int(seed)) in self._done

    def add_episode(self, task: str, seed: int, state: np.ndarray, action: np.ndarray,
                    skills: Sequence[str] | str, rgb: Optional[np.ndarray] = None, split: str = "train",
                    segment_lengths: Optional[Sequence[int]] = None, info: Optional[dict] = None,
                    frames: Optional[dict] = None, proprio: Optional[np.ndarray] = None) -> bool:
        """Append one episode (per-step skill texts); returns False if (task, seed) is already stored.

        Robot observations: frames {camera: (T, H, W, 3) uint8} (every camera one shape) and proprio (T, P).
        """
        if self.has_episode(task, seed):
            return False
        state = np.asarray(state, dtype=np.float32)
        action = np.asarray(action, dtype=np.float32)
        t = state.shape[0]
        if state.ndim != 2 or action.ndim != 2 or action.shape[0] != t or t == 0:
            raise ValueError(f"state (T, D) and action (T, A) must be 2-D with equal T > 0, "
                             f"got {state.shape} and {action.shape}")
        if not (np.isfinite(state).all() and np.isfinite(action).all()):
            raise ValueError("state and action must be finite")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        skills = [skills] * t if isinstance(skills, str) else list(skills)
        if len(skills) != t:
            raise ValueError(f"skills has {len(skills)} entries for {t} steps")
        if rgb is not None:
            rgb = np.asarray(rgb)
            if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[0] != t or rgb.shape[3] != 3:
                raise ValueError(f"rgb must be (T, H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        frames, proprio = self._check_robot_obs(t, frames, proprio)
        st = self._state
        if st["state_dim"] is None:
            self._create_arrays(state.shape[1], action.shape[1], rgb.shape[1:] if rgb is not None else None,
                                {c: f.shape[1:] for c, f in frames.items()} if frames else None,
                                proprio.shape[1] if proprio is not None else None)
        if state.shape[1] != st["state_dim"] or action.shape[1] != st["action_dim"]:
            raise ValueError(f"episode dims state {state.shape[1]}, action {action.shape[1]} differ from the "
                             f"dataset's {st['state_dim']}, {st['action_dim']}")
        want_rgb = tuple(st["rgb_shape"]) if st["rgb_shape"] is not None else None
        got_rgb = tuple(rgb.shape[1:]) if rgb is not None else None
        if want_rgb != got_rgb:
            raise ValueError(f"episode rgb shape {got_rgb} differs from the dataset's {want_rgb}")
        got = (list(frames) if frames else None, list(frames[next(iter(frames))].shape[1:]) if frames else None,
               proprio.shape[1] if proprio is not None else None)
        want = (st.get("cameras"), st.get("camera_shape"), st.get("proprio_dim"))
        if got != want:
            raise ValueError(f"episode robot observations (cameras, frame shape, proprio size) {got} differ from "
                             f"the dataset's {want}")
        if segment_lengths is not None:
            ends = np.cumsum(np.asarray(segment_lengths, dtype=np.int64))
            if len(ends) == 0 or ends[-1] != t or (np.diff(np.concatenate([[0], ends])) <= 0).any():
                raise ValueError("segment_lengths must be positive and sum to the episode length")
            starts = np.concatenate([[0], ends[:-1]])
            if any(len(set(skills[a:b])) != 1 for a, b in zip(starts, ends)):
                raise ValueError("a segment must have one skill throughout")
        skill_ids = np.array([self._skill_id(s) for s in skills], dtype=np.int32)
        if segment_lengths is None:
            ends = segments_from_skills(skill_ids)
        task_id = self._task_id(task)
        start = st["num_steps"]
        self._append("data/state", state)
        self._append("data/action", action)
        self._append("data/skill_id", skill_ids)
        self._append("data/task_id", np.full(t, task_id, dtype=np.int32))
        if rgb is not None:
            self._append("data/rgb", rgb)
        for cam, f in (frames or {}).items():
            self._append(camera_array(cam), f)
        if proprio is not None:
            self._append("data/proprio", proprio)
        self._append("meta/episode_ends", np.array([start + t], dtype=np.int64))
        self._append("meta/segment_ends", (ends + start).astype(np.int64))
        st["episodes"].append({"index": len(st["episodes"]), "task": task, "task_id": task_id, "seed": int(seed),
                               "split": split, "start": start, "length": t, "num_segments": len(ends),
                               "info": info or {}})
        st["num_steps"] = start + t
        st["num_segments"] += len(ends)
        self._commit()  # the episode exists from here on
        self._done.add((task, int(seed)))
        return True

    @staticmethod
    def _check_robot_obs(t: int, frames: Optional[dict], proprio) -> tuple:
        """Validated (frames, proprio) of one episode of t steps."""
        if frames:
            frames = {str(c): np.asarray(f) for c, f in frames.items()}
            shapes = {f.shape[1:] for f in frames.values()}
            for c, f in frames.items():
                if not c.isidentifier() or f.dtype != np.uint8 or f.ndim != 4 or f.shape[0] != t or f.shape[3] != 3:
                    raise ValueError(f"frames[{c!r}] must be (T, H, W, 3) uint8 for a camera name, got "
                                     f"{f.shape} {f.dtype}")
            if len(shapes) != 1:
                raise ValueError(f"every camera's frames must have one shape, got {sorted(shapes)}")
        if proprio is not None:
            proprio = np.asarray(proprio, dtype=np.float32)
            if proprio.ndim != 2 or proprio.shape[0] != t or not np.isfinite(proprio).all():
                raise ValueError(f"proprio must be a finite (T, P) array with T = {t}, got {proprio.shape}")
        return frames or None, proprio

    def finalize(self) -> str:
        """Write DIR/meta.json atomically (the dataset is valid from then on); returns its path."""
        st = self._state
        if not st["episodes"]:
            raise DatasetError(f"{self.path}: no episodes to finalise")
        meta = {"format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "backend": st["backend"], "control_hz": st["control_hz"], "tasks": st["tasks"],
                "skills": st["skills"],
                "obs": {"state": [st["state_dim"]], **({"rgb": st["rgb_shape"]} if st["rgb_shape"] else {}),
                        **{f"rgb:{c}": st["camera_shape"] for c in st.get("cameras") or ()},
                        **({"proprio": [st["proprio_dim"]]} if st.get("proprio_dim") is not None else {})},
                "proprio_layout": st.get("proprio_layout"),
                "action_dim": st["action_dim"], "num_episodes": len(st["episodes"]),
                "num_steps": st["num_steps"], "num_segments": st["num_segments"],
                "episodes": st["episodes"], "extra": st["extra"], "checksums": st["checksums"]}
        atomic_write_text(self.meta_path, json.dumps(meta, indent=1) + "\n")
        return self.meta_path


def load_meta(path: str) -> dict:
    """Read and check DIR/meta.json of a finalised dataset."""
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: dataset folder not found")
    if not os.path.exists(meta_path):
        raise DatasetError(f"{meta_path}: not found (dataset missing or never finalised)")
    meta = _read_json(meta_path)
    for key in ("format_version", "tasks", "skills", "obs", "action_dim", "episodes", "num_steps",
                "num_segments"):
        if key not in meta:
            raise DatasetError(f"{meta_path}: missing key '{key}'")
    if meta["format_version"] not in (1, FORMAT_VERSION):
        raise DatasetError(f"{meta_path}: format_version {meta['format_version']}, expected {FORMAT_VERSION}")
    return meta


class DemoDataset(torch.utils.data.Dataset):
    """Windows of pred_horizon steps inside one skill segment, edge-padded (pad_before To-1, pad_after Ta-1).

    Items (privileged baselines): 'state' (To, D) float32, 'action' (Tp, A) float32, 'skill_id' and 'task_id'
    int64 scalars, 'rgb' (To, H, W, 3) uint8 when load_rgb. Items with robot=True (what a robot senses):
    'rgb:<camera>' (To, H, W, 3) uint8 for each of cameras (default: every stored camera), 'proprio' (To, P)
    float32, 'action', 'skill_id' and 'done' (Tp,) float32 (`done_targets`: 1 from the segment's last step
    on), and no state or task id; with aux_targets also 'aux_target' (6,), the current step's object/target -
    TCP offsets (a training label of the auxiliary head, never a policy input). Low-dim arrays are read once;
    frames are read per item unless preload.
    """

    def __init__(self, path: str, split: Optional[str] = "train", obs_horizon: int = 2, pred_horizon: int = 16,
                 action_horizon: int = 8, load_rgb: Optional[bool] = None,
                 tasks: Optional[Sequence[str]] = None, robot: bool = False,
                 cameras: Optional[Sequence[str]] = None, preload: bool = False, aux_targets: bool = False) -> None:
        self.path, self.split = path, split
        self.aux_targets = bool(aux_targets) and bool(robot)
        self.obs_horizon, self.pred_horizon, self.action_horizon = obs_horizon, pred_horizon, action_horizon
        self.meta = load_meta(path)
        unknown = [t for t in (tasks or ()) if t not in self.meta["tasks"]]
        if unknown:   # before any array is read or preloaded
            raise DatasetError(f"{os.path.join(path, 'meta.json')}: no task {', '.join(map(repr, unknown))}; its "
                               f"tasks are {', '.join(self.meta['tasks'])}")
        self.zarr_path = os.path.join(path, "data.zarr")
        if self.meta["format_version"] == 1:
            print(f"warning: {path}: a format-1 dataset, written before checksums: damaged chunks go undetected "
                  f"(a collect run on it adds them)", file=sys.stderr)
        self.has_rgb = "rgb" in self.meta["obs"]
        self.load_rgb = self.has_rgb if load_rgb is None else load_rgb
        if self.load_rgb and not self.has_rgb:
            raise DatasetError(f"{os.path.join(path, 'meta.json')}: no rgb observations in this dataset")
        root = self._open()
        n, n_ep, n_seg = self.meta["num_steps"], len(self.meta["episodes"]), self.meta["num_segments"]
        self.state = self._read(root, "data/state", n)
        self.action = self._read(root, "data/action", n)
        self.skill_id = self._read(root, "data/skill_id", n).astype(np.int64)
        self.task_id = self._read(root, "data/task_id", n).astype(np.int64)
        episode_ends = self._read(root, "meta/episode_ends", n_ep)
        segment_ends = self._read(root, "meta/segment_ends", n_seg)
        self._check(episode_ends, segment_ends)
        if self.load_rgb:
            shape = tuple(self._array(root, "data/rgb").shape)
            if shape[0] < n or list(shape[1:]) != list(self.meta["obs"]["rgb"]):
                raise DatasetError(f"{self.zarr_path}/data/rgb: shape {shape} does not match meta.json")
        self._rgb, self._rgb_checked = None, set()
        self.robot = bool(robot)
        self.cameras = self._robot_cameras(cameras) if self.robot else ()
        self.proprio = self._read(root, "data/proprio", n) if self.robot else None
        self._frames: dict = {}                       # camera -> zarr array (opened per process) or preloaded rows
        self._frames_checked: dict = {c: set() for c in self.cameras}
        self.preloaded = bool(preload) and self.robot
        if self.preloaded:
            self._frames = {c: self._read(root, camera_array(c), n) for c in self.cameras}
        wanted = [e for e in self.meta["episodes"]
                  if (split is None or e["split"] == split) and (tasks is None or e["task"] in tasks)]
        self.episodes = wanted
        self._build_windows(segment_ends, wanted)

    # -- loading and checks
    def _open(self):
        if not os.path.isdir(self.zarr_path):
            raise DatasetError(f"{self.zarr_path}: zarr store not found")
        try:
            return zarr.open_group(self.zarr_path, mode="r")
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"{self.zarr_path}: cannot open zarr store ({exc})") from None

    def _array(self, root, key: str):
        try:
            return root[key]
        except Exception as exc:  # noqa: BLE001 - KeyError or a corrupt zarr.json
            raise DatasetError(f"{self.zarr_path}/{key}: missing or unreadable array ({exc})") from None

    def _checksum(self, key: str) -> Optional[dict]:
        """The stored checksum record of one array (None for a format-1 dataset, which has none)."""
        if self.meta["format_version"] == 1:
            return None
        rec = self.meta.get("checksums", {}).get(key)
        if not isinstance(rec, dict) or not {"chunk_rows", "crc32"} <= set(rec):
            raise DatasetError(f"{os.path.join(self.path, 'meta.json')}: no checksum record for {key}")
        return rec

    def _read(self, root, key: str, n: int) -> np.ndarray:
        arr = self._array(root, key)
        if arr.shape[0] < n:
            raise DatasetError(f"{self.zarr_path}/{key}: {arr.shape[0]} rows, meta.json expects {n}")
        return integrity.read_checked(self.zarr_path, arr, key, n, self._checksum(key))

    def _robot_cameras(self, cameras: Optional[Sequence[str]]) -> tuple:
        """The cameras robot items carry, checked against the stored ones and proprio."""
        meta_path = os.path.join(self.path, "meta.json")
        stored = [k.split(":", 1)[1] for k in self.meta["obs"] if k.startswith("rgb:")]
        if "proprio" not in self.meta["obs"] or not stored:
            raise DatasetError(f"{meta_path}: no robot observations (camera frames and proprio) in this dataset; "
                               f"collect it with --obs robot")
        cameras = tuple(stored) if cameras is None else tuple(cameras)
        missing = [c for c in cameras if c not in stored]
        if missing:
            raise DatasetError(f"{meta_path}: no frames of camera(s) {missing}; the dataset has {stored}")
        return cameras

    @property
    def frame_shape(self) -> Optional[tuple]:
        """(H, W, 3) of the camera frames robot items carry (None without robot observations)."""
        return tuple(self.meta["obs"][f"rgb:{self.cameras[0]}"]) if self.cameras else None

    def _check(self, episode_ends: np.ndarray, segment_ends: np.ndarray) -> None:
        meta_path = os.path.join(self.path, "meta.json")
        lengths = np.array([e["length"] for e in self.meta["episodes"]], dtype=np.int64)
        if not np.array_equal(np.cumsum(lengths), episode_ends):
            raise DatasetError(f"{self.zarr_path}/meta/episode_ends: disagrees with episode lengths in {meta_path}")
        if len(segment_ends) and (segment_ends[-1] != self.meta["num_steps"] or (np.diff(segment_ends) <= 0).any()
                                  or not np.isin(episode_ends, segment_ends).all()):
            raise DatasetError(f"{self.zarr_path}/meta/segment_ends: not increasing or not aligned with episodes")
        if self.state.shape[1] != self.meta["obs"]["state"][0] or self.action.shape[1] != self.meta["action_dim"]:
            raise DatasetError(f"{self.zarr_path}: state/action widths disagree with {meta_path}")

    def _build_windows(self, segment_ends: np.ndarray, episodes: list) -> None:
        seg_starts = np.concatenate([[0], segment_ends[:-1]]).astype(np.int64)
        keep = np.zeros(len(segment_ends), dtype=bool)
        for e in episodes:
            keep |= (seg_starts >= e["start"]) & (segment_ends <= e["start"] + e["length"])
        pad_before, pad_after, tp = self.obs_horizon - 1, self.action_horizon - 1, self.pred_horizon
        starts, lo, hi = [], [], []
        for s, e in zip(seg_starts[keep], segment_ends[keep]):
            first = -pad_before
            last = max(e - s - tp + pad_after, first)  # a short segment still yields one window
            offs = np.arange(first, last + 1) + s
            starts.append(offs)
            lo.append(np.full(len(offs), s))
            hi.append(np.full(len(offs), e))
        cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)  # noqa: E731
        self._win_start, self._win_lo, self._win_hi = cat(starts), cat(lo), cat(hi)
        self.steps = (np.concatenate([np.arange(e["start"], e["start"] + e["length"]) for e in episodes])
                      if episodes else np.zeros(0, np.int64))

    # -- public API
    @property
    def skills(self) -> list[str]:
        """The skill text vocabulary (index = skill_id)."""
        return list(self.meta["skills"])

    @property
    def tasks(self) -> list[str]:
        """The task names (index = task_id)."""
        return list(self.meta["tasks"])

    def stats(self) -> dict:
        """Min/max of state, action (and proprio, robot items) over the selected episodes' steps (normaliser stats)."""
        if len(self.steps) == 0:
            raise DatasetError(f"{self.path}: no episodes in split {self.split!r}")
        arrays = {"state": self.state, "action": self.action}
        if self.proprio is not None:
            arrays["proprio"] = self.proprio
        return {k: {"min": torch.from_numpy(v[self.steps].min(0)), "max": torch.from_numpy(v[self.steps].max(0))}
                for k, v in arrays.items()}

    def window_indices(self, i: int) -> np.ndarray:
        """Global step indices (pred_horizon,) of window i, clipped to its segment (edge padding)."""
        idx = self._win_start[i] + np.arange(self.pred_horizon)
        return np.clip(idx, self._win_lo[i], self._win_hi[i] - 1)

    def __len__(self) -> int:
        return len(self._win_start)

    def __getitem__(self, i: int) -> dict:
        idx = self.window_indices(i)
        obs_idx = idx[:self.obs_horizon]
        if self.robot:
            return self._robot_item(i, idx, obs_idx)
        item = {"state": torch.from_numpy(self.state[obs_idx]), "action": torch.from_numpy(self.action[idx]),
                "skill_id": torch.tensor(self.skill_id[idx[0]]), "task_id": torch.tensor(self.task_id[idx[0]])}
        if self.load_rgb:
            if self._rgb is None:
                self._rgb = self._array(self._open(), "data/rgb")
            lo, hi = int(obs_idx.min()), int(obs_idx.max())
            frames = integrity.read_rows_checked(self.zarr_path, self._rgb, "data/rgb", lo, hi + 1,
                                                 self.meta["num_steps"], self._checksum("data/rgb"), self._rgb_checked)
            item["rgb"] = torch.from_numpy(frames[obs_idx - lo])
        return item

    def _robot_item(self, i: int, idx: np.ndarray, obs_idx: np.ndarray) -> dict:
        from .diffusion.modeling import AUX_DIM, done_targets
        item = {"proprio": torch.from_numpy(self.proprio[obs_idx]), "action": torch.from_numpy(self.action[idx]),
                "skill_id": torch.tensor(self.skill_id[idx[0]]),
                "done": torch.from_numpy(done_targets(self._win_start[i], self._win_hi[i], self.pred_horizon))}
        if self.aux_targets:  # a training label only (the auxiliary head's): the privileged state ends with
            item["aux_target"] = torch.from_numpy(self.state[obs_idx[-1], -AUX_DIM:].copy())  # object/target - TCP
        lo, hi = int(obs_idx.min()), int(obs_idx.max())
        for c in self.cameras:
            if self.preloaded:
                rows = self._frames[c][lo:hi + 1]
            else:
                if c not in self._frames:
                    self._frames[c] = self._array(self._open(), camera_array(c))
                key = camera_array(c)
                rows = integrity.read_rows_checked(self.zarr_path, self._frames[c], key, lo, hi + 1,
                                                   self.meta["num_steps"], self._checksum(key),
                                                   self._frames_checked[c])
            item[f"rgb:{c}"] = torch.from_numpy(np.ascontiguousarray(rows[obs_idx - lo]))
        return item

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_rgb"], state["_rgb_checked"] = None, set()  # each DataLoader worker opens its own handle
        if not self.preloaded:
            state["_frames"], state["_frames_checked"] = {}, {c: set() for c in self.cameras}
        return state
