"""The sandbox child: loads one generated task module under the guard and runs one job on it.

Started only by `launcher.run_sandboxed`, as
`python -I -B -m taskweave.generation.sandbox.child --scratch DIR --result-fd N [--uid U --gid G]`.
It reads `DIR/job.json` and `DIR/task_source.py`, imports the trusted modules the job needs,
stubs out the unaudited escape hatches, drops to the given uid, arms the audit hook, and only
then compiles and executes the task source. The answer is one JSON object written to the
result descriptor; the exit status says how it ended (see EXIT_*).

Jobs are registered in JOBS: `inspect` builds the scene for some seeds and returns it as data;
`oracle` runs `taskweave.envs.validate_oracle(task, backend, seed)` on each backend and seed.
"""
from __future__ import annotations

import json
import linecache
import os
import sys
import traceback
import types
from dataclasses import dataclass
from typing import Callable

from taskweave.generation.sandbox.guard import install_guard, neuter_unaudited, restricted_builtins
from taskweave.generation.sandbox.static import ALLOWED_MODULES

EXIT_OK, EXIT_TASK_ERROR, EXIT_BAD_INPUT, EXIT_MEMORY, EXIT_BLOCKED = 0, 1, 2, 3, 4
TASK_FILENAME = "<generated-task>"
TASK_MODULE = "taskweave_generated_task"
JOB_FILE, SOURCE_FILE = "job.json", "task_source.py"
MAX_SEEDS, MAX_ITEMS, MAX_DEPTH = 64, 20_000, 32


@dataclass
class JobKind:
    """How to run one kind of job: trusted modules to import first, then the job itself."""

    run: Callable                          # run(task_cls, job, ctx) -> dict with an "ok" key
    preload: tuple = ()                    # imported before the guard is armed (trusted)
    prepare: Callable = lambda job: {}     # runs before the guard too; returns ctx for run
    allow_ctypes: bool = False             # let trusted code (GL renderers) use ctypes outside task frames


JOBS: dict = {}


def register_job(kind: str, **options):
    """Decorator that registers a job function under a kind name."""
    def wrap(fn):
        JOBS[kind] = JobKind(run=fn, **options)
        return fn
    return wrap


# ---- turning task values into plain data, without running task code from trusted frames ----------
def _type_name(t) -> str:
    try:
        return type.__dict__["__name__"].__get__(t, type)
    except Exception:
        return "?"


def _trusted_types() -> tuple:
    import numpy as np
    scalars = frozenset(t for t in set(np.sctypeDict.values()) if issubclass(t, (np.number, np.bool_)))
    dataclasses_ = set()
    spec = sys.modules.get("taskweave.sim.spec")
    if spec is not None:
        dataclasses_ |= {spec.ObjectSpec, spec.ZoneSpec, spec.CameraSpec, spec.SceneSpec}
    return scalars, np.ndarray, frozenset(dataclasses_)


def plain(x, _budget=None, _depth=0):
    """A JSON-ready copy of x made of dict/list/str/int/float/bool/None; TypeError on anything else."""
    budget = _budget if _budget is not None else [MAX_ITEMS]
    budget[0] -= 1
    if budget[0] < 0 or _depth > MAX_DEPTH:
        raise ValueError("value too large or nested too deeply to return")
    scalars, ndarray, dataclasses_ = _TRUSTED
    t = type(x)
    if x is None or t is bool or t is int or t is str or t is float:
        return x
    if t in scalars:
        return x.item()
    if t is ndarray and x.dtype.kind in "biuf" and x.size <= MAX_ITEMS:
        return x.tolist()
    if t is list or isinstance(x, tuple):
        items = list.copy(x) if t is list else tuple.__getitem__(x, slice(None))
        return [plain(v, budget, _depth + 1) for v in items]
    if t is dict:
        return {k: plain(v, budget, _depth + 1) for k, v in dict.items(x) if type(k) is str}
    if t in dataclasses_:
        d = object.__getattribute__(x, "__dict__")
        if type(d) is dict:
            return {k: plain(v, budget, _depth + 1) for k, v in dict.items(d) if type(k) is str}
    raise TypeError(f"cannot return a value of type {_type_name(t)} (plain data and scene specs only)")


_TRUSTED: tuple = (frozenset(), type(None), frozenset())


def json_writer():
    """A JSON encoder for plain data bound only to C functions, so task code cannot patch what it calls."""
    from _json import encode_basestring_ascii as esc
    _type, _str, _int, _float, _list, _tuple, _dict, _ValueError = type, str, int, float, list, tuple, dict, ValueError
    int_repr, float_repr, inf, limit = int.__repr__, float.__repr__, float("inf"), MAX_DEPTH + 8

    def enc(x, depth=0):
        t = _type(x)
        if depth > limit:
            return '"<too deep>"'
        if x is None or x is True or x is False:
            return "null" if x is None else ("true" if x else "false")
        if t is _str:
            return esc(x)
        if t is _int:
            try:
                return int_repr(x)
            except _ValueError:
                return '"<huge int>"'
        if t is _float:
            return float_repr(x) if x == x and x != inf and x != -inf else "null"
        if t is _list or t is _tuple:
            return "[" + ",".join([enc(v, depth + 1) for v in x]) + "]"
        if t is _dict:
            items = [esc(k) + ":" + enc(v, depth + 1) for k, v in _dict.items(x) if _type(k) is _str]
            return "{" + ",".join(items) + "}"
        return '"<unserialisable>"'
    return enc


def error_info(exc: BaseException) -> dict:
    """Type, message and (task-line-annotated) traceback of an exception, as data."""
    info = {"type": _type_name(type(exc)), "message": "", "traceback": ""}
    try:
        info["message"] = str(exc)[:2000] if type(str(exc)) is str else ""
    except Exception:
        info["message"] = "<message unavailable>"
    try:
        info["traceback"] = "".join(traceback.format_exception(exc))[-6000:]
    except Exception:
        pass
    return info


# ---- loading the task -------------------------------------------------------------------
def load_task_class(source: str):
    """Execute the task source in a fresh module (sandbox child only) and return its task class."""
    code = compile(source, TASK_FILENAME, "exec", dont_inherit=True)  # noqa: exec-ok
    module = types.ModuleType(TASK_MODULE)
    module.__dict__["__builtins__"] = restricted_builtins(ALLOWED_MODULES)
    sys.modules[TASK_MODULE] = module
    exec(code, module.__dict__)  # noqa: exec-ok
    base = getattr(sys.modules.get("taskweave.envs.task"), "Task", None)
    found = []
    for value in list(dict.values(module.__dict__)):
        if not isinstance(value, type) or type.__dict__["__module__"].__get__(value, type) != TASK_MODULE:
            continue
        if base is not None and issubclass(value, base) or base is None and "build" in value.__dict__:
            found.append(value)
    if len(found) != 1:
        raise TypeError(f"expected exactly one Task subclass in the module, found {len(found)}")
    return found[0]


def _class_attr(cls, name: str, default):
    for klass in type.__dict__["__mro__"].__get__(cls, type):
        value = klass.__dict__.get(name)
        if type(value) is str:
            return value
    return default


def _seeds(job: dict) -> list:
    seeds = job.get("seeds", [0])
    if type(seeds) is not list or not seeds or len(seeds) > MAX_SEEDS or any(type(s) is not int for s in seeds):
        raise ValueError(f"job seeds must be a non-empty list of at most {MAX_SEEDS} ints")
    return seeds


@register_job("inspect")
def run_inspect(task_cls, job: dict, ctx: dict) -> dict:
    """Build the scene for each seed; return name, instruction, goals and scene spec as data."""
    import numpy as np
    base = getattr(sys.modules.get("taskweave.envs.task"), "Task", None)
    out = {"ok": True, "task_class": _type_name(task_cls), "name": _class_attr(task_cls, "name", _type_name(task_cls)),
           "description": _class_attr(task_cls, "description", ""), "builds": []}
    for seed in _seeds(job):
        entry = {"seed": seed}
        try:
            task = task_cls()
            if base is not None and issubclass(task_cls, base):
                spec = base.reset(task, seed)        # build(default_rng(seed)) plus the API's checks
            else:
                spec = task.build(np.random.default_rng(seed))
            state = object.__getattribute__(task, "__dict__")
            entry["instruction"] = plain(dict.get(state, "instruction"))
            entry["goals"] = plain(dict.get(state, "goals"))
            entry["scene"] = plain(spec)
        except MemoryError:
            raise
        except Exception as exc:
            entry["error"] = error_info(exc)
            out["ok"] = False
        out["builds"].append(entry)
    return out


def _prepare_oracle(job: dict) -> dict:
    import importlib
    envs = importlib.import_module("taskweave.envs")
    fn = getattr(envs, "validate_oracle", None)
    if fn is None:
        raise RuntimeError("taskweave.envs.validate_oracle is not available")
    backends = job.get("backends", ["mujoco", "pybullet"])
    if type(backends) is not list or any(type(b) is not str for b in backends):
        raise ValueError("job backends must be a list of names")
    for b in backends:                       # trusted engines load before the guard is armed
        importlib.import_module({"mujoco": "taskweave.sim.mujoco_backend",
                                 "pybullet": "taskweave.sim.pybullet_backend"}.get(b, b))
    return {"validate_oracle": fn, "backends": backends}


@register_job("oracle", preload=("mujoco", "pybullet", "taskweave.envs"), prepare=_prepare_oracle,
              allow_ctypes=True)
def run_oracle(task_cls, job: dict, ctx: dict) -> dict:
    """Run validate_oracle(task, backend, seed) for each backend and seed; return the reports."""
    out = {"ok": True, "task_class": _type_name(task_cls), "runs": []}
    for backend in ctx["backends"]:
        for seed in _seeds(job):
            entry = {"backend": backend, "seed": seed}
            try:
                entry["report"] = plain(ctx["validate_oracle"](task_cls(), backend, seed))
            except MemoryError:
                raise
            except Exception as exc:
                entry["error"] = error_info(exc)
                out["ok"] = False
            out["runs"].append(entry)
    return out


# ---- the process ------------------------------------------------------------------------
def _args(argv: list) -> dict:
    out = {"uid": None, "gid": None}
    it = iter(argv)
    for flag in it:
        key = {"--scratch": "scratch", "--result-fd": "result_fd", "--uid": "uid", "--gid": "gid"}[flag]
        out[key] = next(it)
    out["result_fd"] = int(out["result_fd"])
    out["uid"] = None if out["uid"] is None else int(out["uid"])
    out["gid"] = None if out["gid"] is None else int(out["gid"])
    return out


def _read_roots() -> list:
    roots = [p for p in sys.path if p and os.path.isdir(p)]
    for name in ("taskweave", "taskweave.sim", "taskweave.envs", "taskweave.generation"):
        mod = sys.modules.get(name)
        roots += list(getattr(mod, "__path__", []) or [])
    return roots


def main(argv=None) -> int:
    """Run the job described in the scratch directory and write its JSON answer to the result fd."""
    global _TRUSTED
    # Everything finish() uses is bound here, before task code runs and can patch modules.
    write, exit_now, encode, streams, view_of = os.write, os._exit, json_writer(), (sys.stdout, sys.stderr), memoryview

    def finish(payload: dict, code: int):
        for stream in streams:
            try:
                stream.flush()
            except Exception:
                pass
        view = view_of(encode(payload).encode())
        while view:
            view = view[write(fd, view):]
        exit_now(code)

    args = _args(sys.argv[1:] if argv is None else argv)
    fd, scratch = args["result_fd"], args["scratch"]
    try:
        with open(os.path.join(scratch, JOB_FILE)) as f:
            job = json.load(f)
        with open(os.path.join(scratch, SOURCE_FILE)) as f:
            source = f.read()
        for name in job.get("preload", []):   # trusted extra modules named by the parent (may register jobs)
            __import__(name)
        kind = JOBS[job["kind"]]
        for name in sorted(ALLOWED_MODULES) + list(kind.preload):
            try:
                __import__(name)
            except ImportError:
                if name not in ALLOWED_MODULES:
                    raise
        ctx = kind.prepare(job)
        _TRUSTED = _trusted_types()
    except Exception as exc:
        finish({"ok": False, "stage": "setup", "error": error_info(exc)},
               EXIT_MEMORY if isinstance(exc, MemoryError) else EXIT_BAD_INPUT)
    linecache.cache[TASK_FILENAME] = (len(source), None, source.splitlines(True), TASK_FILENAME)
    neuter_unaudited(allow_ctypes=kind.allow_ctypes)
    read_roots = _read_roots()               # before dropping privileges: the uid may not see them
    if args["gid"] is not None:
        os.setgroups([])
        os.setgid(args["gid"])
    if args["uid"] is not None:
        os.setuid(args["uid"])
    blocked = install_guard(scratch, read_roots=read_roots, task_files=(TASK_FILENAME,),
                            task_imports=ALLOWED_MODULES, allow_ctypes=kind.allow_ctypes)
    code = EXIT_OK
    try:
        payload = kind.run(load_task_class(source), job, ctx)
        code = EXIT_OK if payload.get("ok") else EXIT_TASK_ERROR
    except MemoryError as exc:
        payload = {"ok": False, "stage": "task", "error": {"type": "MemoryError", "message": str(exc)}}
        code = EXIT_MEMORY
    except BaseException as exc:
        payload, code = {"ok": False, "stage": "task", "error": error_info(exc)}, EXIT_TASK_ERROR
    events = blocked()
    if events:
        payload["ok"] = False
        payload["blocked"] = events
        code = code if code == EXIT_MEMORY else EXIT_BLOCKED
    finish(payload, code)
    return code


if __name__ == "__main__":
    # Run from the module under its real name, so jobs registered with register_job land in the registry used.
    from taskweave.generation.sandbox import child
    child.main()
