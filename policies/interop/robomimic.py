"""robomimic HDF5 export and import (h5py).

Layout written (robomimic's "Expected Structure of Datasets"):
  data                attrs total (samples), env_args (JSON: env_name, type 2 = gym, env_kwargs with the
                      backend, control rate and tasks), taskweave (JSON: vocabularies, provenance)
  data/demo_K         attrs num_samples, taskweave_task, taskweave_seed, taskweave_split, taskweave_info
    actions (T, A) float32, rewards (T,) float64 (1 at the last, successful step), dones (T,) int64
    obs/state (T, D) float32, obs/<camera>_image (T, H, W, 3) uint8 when the dataset has frames
    next_obs/state (T, D) (the state one step on; the last repeats), skill_id (T,) int32 (into the
    skills vocabulary), segment_ends (S,) int64 (episode-relative ends of the skill segments)
  mask/train, mask/valid, mask/test   demo names (bytes) of each seed split
Demos keep the dataset's episode order (demo_0 is episode 0). Import reads any such file: the state is
obs/state, or --obs-keys concatenated (default: every non-image obs key, sorted).
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Optional

import numpy as np

from taskweave.sim.fileio import atomic_path

from ..dataset import segments_from_skills
from .common import Episode, InteropError, TaskweaveSource, check_output, require, staged_folder, write_taskweave

GYM_ENV_TYPE = 2  # robomimic.envs.env_base.EnvType.GYM_TYPE
MASKS = {"train": "train", "val": "valid", "test": "test"}


def _env_args(meta: dict) -> dict:
    tasks = meta["tasks"]
    name = f"taskweave/{tasks[0]}-v0" if len(tasks) == 1 else "taskweave/multitask"
    return {"env_name": name, "type": GYM_ENV_TYPE,
            "env_kwargs": {"backend": meta.get("backend"), "control": "ee_delta",
                           "control_hz": meta.get("control_hz"), "tasks": tasks}}


def export_robomimic(data: str, out: str, *, camera: str = "front", compression: Optional[str] = "gzip",
                     force: bool = False) -> dict:
    """Write taskweave dataset data as one robomimic HDF5 file out; returns a summary."""
    h5py = require("h5py", "--format robomimic")
    src = TaskweaveSource(data)
    meta = src.meta
    out = check_output(out, force, inputs=(data,))
    if os.path.isdir(out):
        raise InteropError(f"{out}: is a folder; --format robomimic writes one .hdf5 file")
    image_key = f"{camera}_image" if src.has_rgb else None
    masks = {k: [] for k in MASKS.values()}
    total = 0
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("data")
            for k, e in enumerate(meta["episodes"]):
                state, action, skill = src.arrays(e)
                t = len(state)
                d = g.create_group(f"demo_{k}")
                d.attrs["num_samples"] = t
                d.attrs["taskweave_task"], d.attrs["taskweave_seed"] = e["task"], int(e["seed"])
                d.attrs["taskweave_split"], d.attrs["taskweave_info"] = e["split"], json.dumps(e.get("info") or {})
                d.create_dataset("actions", data=action, compression=compression)
                rewards, dones = np.zeros(t, np.float64), np.zeros(t, np.int64)
                rewards[-1], dones[-1] = 1.0, 1  # collected demonstrations are the successful ones
                d.create_dataset("rewards", data=rewards)
                d.create_dataset("dones", data=dones)
                d.create_dataset("obs/state", data=state, compression=compression)
                d.create_dataset("next_obs/state", data=np.concatenate([state[1:], state[-1:]]),
                                 compression=compression)
                if image_key:
                    frames = src.frames(e)
                    d.create_dataset(f"obs/{image_key}", data=frames, chunks=(1, *frames.shape[1:]),
                                     compression=compression)
                d.create_dataset("skill_id", data=skill.astype(np.int32))
                d.create_dataset("segment_ends", data=src.segments(e).astype(np.int64))
                masks[MASKS[e["split"]]].append(f"demo_{k}".encode())
                total += t
            g.attrs["total"] = total
            g.attrs["env_args"] = json.dumps(_env_args(meta))
            g.attrs["taskweave"] = json.dumps({
                "format_version": meta["format_version"], "tasks": meta["tasks"], "skills": src.skills,
                "backend": meta.get("backend"), "control_hz": meta.get("control_hz"), "extra": meta.get("extra", {}),
                "camera": camera if image_key else None, "exported_from": os.path.abspath(data)})
            for name, demos in masks.items():
                if demos:
                    f.create_dataset(f"mask/{name}", data=np.array(demos, dtype=f"S{max(map(len, demos))}"))
    return {"format": "robomimic", "out": out, "episodes": len(meta["episodes"]), "frames": total,
            "image_key": image_key, "masks": {k: len(v) for k, v in masks.items() if v}}


def _attr_json(g, key: str, path: str) -> dict:
    if key not in g.attrs:
        return {}
    raw = g.attrs[key]
    try:
        data = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InteropError(f"{path}: {g.name} attribute '{key}': not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InteropError(f"{path}: {g.name} attribute '{key}': expected a JSON object")
    return data


def _attr(d, key: str, default=None):
    v = d.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)


def _image_keys(obs) -> list:
    return sorted(k for k in obs if obs[k].ndim == 4 and obs[k].dtype == np.uint8)


def import_robomimic(src: str, out: str, *, task: Optional[str] = None, camera: Optional[str] = None,
                     obs_keys: Optional[list] = None, force: bool = False) -> dict:
    """Convert a robomimic HDF5 file src into a taskweave dataset folder out; returns a summary."""
    h5py = require("h5py", "--format robomimic")
    if not os.path.isfile(src):
        raise InteropError(f"{src}: file not found")
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise InteropError(f"{src}: not a readable HDF5 file ({exc})") from None
    with f:
        if "data" not in f:
            raise InteropError(f"{src}: no group 'data'")
        g = f["data"]
        env_args = _attr_json(g, "env_args", src)
        tw = _attr_json(g, "taskweave", src)
        demos = sorted((k for k in g if k.startswith("demo_")),
                       key=lambda k: (0, int(k[5:])) if k[5:].isdigit() else (1, k))
        if not demos:
            raise InteropError(f"{src}: data: no demo_K groups")
        splits = {}
        for mask_name, split in (("train", "train"), ("valid", "val"), ("val", "val"), ("test", "test")):
            if f"mask/{mask_name}" in f:
                for name in f[f"mask/{mask_name}"][()]:
                    splits[name.decode() if isinstance(name, bytes) else str(name)] = split
        skills_vocab = list(tw.get("skills") or [])
        name = task or env_args.get("env_name") or os.path.splitext(os.path.basename(src))[0]
        first = g[demos[0]]
        if "obs" not in first:
            raise InteropError(f"{src}: data/{demos[0]}: no 'obs'")
        state_keys = _state_keys(first["obs"], obs_keys)
        image_key = _camera_key(first["obs"], camera or tw.get("camera"), f"{src}: data/{demos[0]}")

        def episodes() -> Iterator[Episode]:
            for k, demo in enumerate(demos):
                d, where = g[demo], f"{src}: data/{demo}"
                for field in ("actions", "obs"):
                    if field not in d:
                        raise InteropError(f"{where}: no '{field}'")
                obs = d["obs"]
                action = np.asarray(d["actions"][()], dtype=np.float32)
                if action.ndim != 2:
                    raise InteropError(f"{where}/actions: shape {action.shape}, expected (T, A)")
                state = _state(obs, state_keys, where)
                if len(state) != len(action):
                    raise InteropError(f"{where}: obs has {len(state)} steps, actions {len(action)}")
                rgb = _frames(obs, image_key, where, len(action))
                if "skill_id" in d and skills_vocab:
                    ids = np.asarray(d["skill_id"][()], dtype=np.int64)
                    if ids.shape != (len(action),) or ids.min() < 0 or ids.max() >= len(skills_vocab):
                        raise InteropError(f"{where}/skill_id: not {len(action)} indices into the skills vocabulary")
                    skills = [skills_vocab[i] for i in ids]
                else:
                    ep_meta = _attr_json(d, "ep_meta", src)
                    text = ep_meta.get("lang") if isinstance(ep_meta.get("lang"), str) else None
                    skills = [text or _attr(d, "taskweave_task") or name] * len(action)
                ends = (np.asarray(d["segment_ends"][()], np.int64) if "segment_ends" in d else
                        segments_from_skills(np.unique(skills, return_inverse=True)[1]))
                yield Episode(task=_attr(d, "taskweave_task") or name, seed=int(_attr(d, "taskweave_seed", k)),
                              split=_attr(d, "taskweave_split") or splits.get(demo, "train"),
                              state=state, action=action, skills=skills, segment_ends=ends, rgb=rgb,
                              info=json.loads(_attr(d, "taskweave_info") or "{}"))

        extra = dict(tw.get("extra") or {})
        extra["imported_from"] = {"format": "robomimic", "path": os.path.abspath(src), "env_args": env_args}
        env_kwargs = env_args.get("env_kwargs") if isinstance(env_args.get("env_kwargs"), dict) else {}
        with staged_folder(out, force, inputs=(src,)) as tmp:
            counts = write_taskweave(tmp, episodes(), tasks=list(tw.get("tasks") or [name]),
                                     backend=tw.get("backend") or env_kwargs.get("backend") or "robomimic",
                                     control_hz=float(tw.get("control_hz") or env_kwargs.get("control_hz") or 10.0),
                                     extra={**extra, "obs_keys": state_keys, "image_key": image_key}, where=src)
    return {"format": "robomimic", "out": os.path.abspath(out), "obs_keys": state_keys, "image_key": image_key,
            **counts}


def _state_keys(obs, obs_keys: Optional[list]) -> list:
    images = set(_image_keys(obs))
    return list(obs_keys or (["state"] if "state" in obs else sorted(k for k in obs if k not in images)))


def _camera_key(obs, wanted: Optional[str], where: str) -> Optional[str]:
    images = _image_keys(obs)
    if wanted:
        key = wanted if wanted in obs else f"{wanted}_image"
        if key not in images:
            raise InteropError(f"{where}/obs: no image key '{key}' (image keys: {', '.join(images) or 'none'})")
        return key
    if len(images) > 1:
        raise InteropError(f"{where}/obs: several image keys ({', '.join(images)}); choose one with --camera")
    return images[0] if images else None


def _state(obs, keys: list, where: str) -> np.ndarray:
    parts = []
    for key in keys:
        if key not in obs:
            raise InteropError(f"{where}/obs: no key '{key}' (keys: {', '.join(sorted(obs))})")
        a = np.asarray(obs[key][()])
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise InteropError(f"{where}/obs/{key}: shape {a.shape} {a.dtype}, expected numeric (T,) or (T, D)")
        parts.append(a.astype(np.float32))
    if not parts:
        raise InteropError(f"{where}/obs: no low-dimensional keys for the state")
    if len({len(p) for p in parts}) != 1:
        raise InteropError(f"{where}/obs: keys {keys} have different lengths")
    return np.concatenate(parts, axis=1)


def _frames(obs, key: Optional[str], where: str, t: int) -> Optional[np.ndarray]:
    if key is None:
        return None
    if key not in obs:
        raise InteropError(f"{where}/obs: no image key '{key}'")
    frames = np.asarray(obs[key][()])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != t or frames.shape[-1] != 3:
        raise InteropError(f"{where}/obs/{key}: shape {frames.shape} {frames.dtype}, expected ({t}, H, W, 3) uint8")
    return frames
