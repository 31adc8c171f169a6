"""The generated-task wrapper: a library task as a `Task` whose code runs only in the sandbox.

A generated task's code never runs here. The sandbox's `inspect` job returns the scene, the
instruction and the goals of a seed as plain (untrusted) data; `scene_from_data` and
`goals_from_data` rebuild them with strict type and range checks, and `SandboxedTask` is the
Task whose `build` does exactly that, caching per code hash and seed in memory and on disk.
`library.TaskLibrary.task_class` subclasses it per stored task; those register as `Gen_<Name>` envs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from typing import Optional

import numpy as np

from taskweave.envs.predicates import PREDICATES, Predicate
from taskweave.envs.task import Task, TaskError
from taskweave.sim.fileio import atomic_write_text
from taskweave.sim.spec import COLORS, SHAPES, ObjectSpec, SceneSpec, ZoneSpec

INSPECT_BLOCK = 16                   # seeds fetched per sandbox inspect call
INSPECT_OPTS = {"timeout_s": 30, "memory_mb": 1024}


def code_hash(source: str) -> str:
    """SHA-256 of a module's source."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


# ---- untrusted data from the sandbox -> checked objects ------------------------------------------
def _num(x, what: str) -> float:
    if type(x) not in (int, float) or not math.isfinite(x):
        raise TaskError(f"{what}: expected a finite number, got {x!r}")
    return float(x)


def _nums(x, n, what: str) -> tuple:
    if type(x) is not list or (len(x) != n if isinstance(n, int) else len(x) not in n):
        raise TaskError(f"{what}: expected {n} numbers, got {x!r}")
    return tuple(_num(v, what) for v in x)


def _ident(x, what: str) -> str:
    if type(x) is not str or not 0 < len(x) <= 64 or not x.replace("_", "").isalnum():
        raise TaskError(f"{what}: expected an identifier, got {x!r}")
    return x


def scene_from_data(d) -> SceneSpec:
    """A validated SceneSpec from the sandbox's plain-data scene (default cameras; unknown fields ignored)."""
    if type(d) is not dict or type(d.get("objects")) is not list or type(d.get("zones", [])) is not list:
        raise TaskError("scene data must be a dict with lists 'objects' and 'zones'")
    if len(d["objects"]) > 32 or len(d.get("zones", [])) > 16:
        raise TaskError("scene has too many objects or zones")
    objects = []
    for o in d["objects"]:
        if type(o) is not dict:
            raise TaskError("scene object must be a dict")
        name = _ident(o.get("name"), "object name")
        shape, color, cat = o.get("shape", "box"), o.get("color", "red"), o.get("category", "block")
        if shape not in SHAPES or color not in COLORS:
            raise TaskError(f"object {name}: unknown shape or colour ({shape!r}, {color!r})")
        size = _nums(o.get("size"), (1, 2, 3), f"object {name} size")
        objects.append(ObjectSpec(name, shape, size, color, mass=_num(o.get("mass", 0.1), "mass"),
                                  friction=_num(o.get("friction", 1.0), "friction"),
                                  pos=_nums(o.get("pos"), 3, f"object {name} pos"), yaw=_num(o.get("yaw", 0.0), "yaw"),
                                  fixed=o.get("fixed", False) is True, category=_ident(cat, "category")))
    zones = []
    for z in d.get("zones", []):
        if type(z) is not dict or z.get("color", "gray") not in COLORS:
            raise TaskError("zone must be a dict with a known colour")
        zones.append(ZoneSpec(_ident(z.get("name"), "zone name"), _nums(z.get("center"), 2, "zone center"),
                              _nums(z.get("half_size"), 2, "zone half_size"), z.get("color", "gray")))
    timestep = _num(d.get("timestep", 0.002), "timestep")
    if not 0.0005 <= timestep <= 0.01:
        raise TaskError(f"timestep {timestep} outside 0.0005..0.01")
    home = d.get("robot_home")
    spec = SceneSpec(objects=objects, zones=zones, timestep=timestep,
                     robot_home=None if home is None else _nums(home, (3, 4, 7), "robot_home"))
    try:
        spec.validate()
    except ValueError as e:
        raise TaskError(str(e)) from None
    return spec


def _goal_arg(a):
    if type(a) is str:
        return _ident(a, "goal argument")
    if type(a) is list:
        return _nums(a, (2, 3), "goal pose")
    return _num(a, "goal argument")


def goals_from_data(goals) -> list:
    """Predicates from the sandbox's plain-data goals ([name, [args...]] pairs)."""
    if type(goals) is not list or not 0 < len(goals) <= 32:
        raise TaskError("goals must be a non-empty list")
    out = []
    for g in goals:
        if type(g) is not list or len(g) != 2 or g[0] not in PREDICATES or type(g[1]) is not list:
            raise TaskError(f"bad goal {g!r}: expected [predicate, [args]] with a known predicate")
        out.append(Predicate(g[0], tuple(_goal_arg(a) for a in g[1][:4])))
    return out


# ---- a task whose code runs only in the sandbox ----------------------------------------------------
_CACHE: dict = {}                   # (code sha, seed) -> build data
_CACHE_LOCK = threading.Lock()


class SandboxedTask(Task):
    """A generated task: scene, instruction and goals come from the sandbox `inspect` job, as data."""

    source_path: str = ""
    cache_dir: str = ""
    expected_sha: str = ""          # the validated code's hash (from meta.json); "" skips the check

    def __init__(self) -> None:
        super().__init__()
        self._seed: Optional[int] = None
        with open(self.source_path, encoding="utf-8") as f:
            self.source = f.read()
        self.code_sha = code_hash(self.source)
        if self.expected_sha and self.code_sha != self.expected_sha:
            raise TaskError(f"{self.name}: {self.source_path} changed since it was validated and accepted "
                            "(code hash differs from meta.json); validate it again")

    def reset(self, seed: int) -> SceneSpec:
        """Build the scene for a seed (through the sandbox) and check that goals name real things."""
        self._seed = int(seed)
        try:
            return super().reset(seed)
        finally:
            self._seed = None

    def build(self, rng: np.random.Generator) -> SceneSpec:
        """The sandbox-built scene of the current seed (a seed drawn from rng when called directly)."""
        seed = self._seed if self._seed is not None else int(rng.integers(0, 2**31 - 1))
        data = self.inspect(seed)
        if "error" in data:
            err = data["error"] if isinstance(data["error"], dict) else {}
            raise TaskError(f"{self.name} seed {seed}: {err.get('type', 'error')}: {err.get('message', '')}")
        spec = scene_from_data(data.get("scene"))
        if type(data.get("instruction")) is not str:
            raise TaskError(f"{self.name}: instruction is not a string")
        self.instruction = data["instruction"][:500]
        self.goals = goals_from_data(data.get("goals"))
        return spec

    def inspect(self, seed: int) -> dict:
        """The sandbox's build data for one seed (memory cache, then disk cache, then a sandbox call)."""
        key = (self.code_sha, seed)
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        start = seed - seed % INSPECT_BLOCK
        path = os.path.join(self.cache_dir, f"{self.code_sha[:16]}_{start}.json") if self.cache_dir else ""
        builds = None
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    got = json.load(f)
                builds = got["builds"] if got.get("code_sha256") == self.code_sha else None
            except (OSError, ValueError, KeyError, TypeError):
                builds = None
        if builds is None:
            builds = self._run_inspect(list(range(start, start + INSPECT_BLOCK)))
            if path:
                try:
                    atomic_write_text(path, json.dumps({"code_sha256": self.code_sha, "builds": builds}))
                except OSError:
                    pass                    # a read-only library still works, just slower
        with _CACHE_LOCK:
            for b in builds:
                if isinstance(b, dict) and type(b.get("seed")) is int:
                    _CACHE[(self.code_sha, b["seed"])] = b
            if key not in _CACHE:
                raise TaskError(f"{self.name}: the sandbox returned no build for seed {seed}")
            return _CACHE[key]

    def _run_inspect(self, seeds: list) -> list:
        from taskweave.generation.sandbox.launcher import run_sandboxed
        res = run_sandboxed(self.source, {"kind": "inspect", "seeds": seeds}, **INSPECT_OPTS)
        builds = (res.result or {}).get("builds")
        if type(builds) is not list:
            why = res.error or res.killed_by or (res.result or {}).get("error") or res.stderr[-500:]
            raise TaskError(f"{self.name}: sandboxed build failed: {why}")
        return builds
