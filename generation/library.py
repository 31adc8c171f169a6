"""The library of accepted generated tasks: storage, duplicate detection, diversity, and envs.

Layout: `LIBRARY/<Name>/task.py` (the module) and `LIBRARY/<Name>/meta.json` (name, description,
assets, parents, mode, LLM, prompt hashes, goal signature, validation summary), each written
atomically. A library task registers as `Gen_<Name>` (gym id `taskweave/Gen_<Name>-v0`) through
the same `register_task` as the built-ins. Its code never runs in this process: it loads as a
`task.SandboxedTask`, which rebuilds each seed's scene from the sandbox's data.
`register_library` is how the CLI makes a library's tasks available by name: the env registry
(`taskweave.envs.registry`) knows nothing of generation.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from typing import Optional

import numpy as np

from taskweave.envs.registry import register_task
from taskweave.generation.task import SandboxedTask, code_hash
from taskweave.sim.fileio import atomic_write_text
from taskweave.sim.spec import SceneSpec

PREFIX = "Gen_"
NAME_RE = re.compile(r"^[A-Z][A-Za-z0-9]{1,47}$")
DESC_DUP = 0.8                       # descriptions this similar, with some goal overlap, are duplicates
DESC_DUP_STRUCTURE = 0.5             # ... the structure similarity that "some goal overlap" means
DESC_DUP_SAME_GOALS = 0.3            # with the same multiset of goal signatures, this much description overlap suffices
STOPWORDS = frozenset("a an the of to in into on onto and then with each every its it is are at from by so that "
                      "one two three named stated block blocks".split())


def default_library_path() -> str:
    """$TASKWEAVE_LIBRARY, else ./task_library."""
    return os.environ.get("TASKWEAVE_LIBRARY") or os.path.join(os.getcwd(), "task_library")


def env_name(name: str) -> str:
    """The registry name of a library task: Gen_<Name>."""
    return name if name.startswith(PREFIX) else PREFIX + name


# ---- records, signatures, similarity -------------------------------------------------------------
def goal_signature(goals: list, spec: SceneSpec) -> list:
    """The goal structure: sorted `pred(kind, ...)` strings, kinds being object categories, zone, pose or num."""
    kinds = {o.name: ("container" if o.shape == "container" else o.category) for o in spec.objects}
    kinds.update({z.name: "zone" for z in spec.zones})
    sig = []
    for name, args in goals:
        ks = [kinds.get(a, "unknown") if isinstance(a, str) else ("pose" if isinstance(a, tuple) else "num")
              for a in args]
        sig.append(f"{name}({','.join(ks)})")
    return sorted(sig)


def scene_assets(spec: SceneSpec) -> list:
    """The kinds of assets a scene uses: object categories (containers by shape) and 'zone'."""
    kinds = {("container" if o.shape == "container" else o.category) for o in spec.objects}
    return sorted(kinds | ({"zone"} if spec.zones else set()))


def task_record(name: str, description: str, instruction: str, goals: list, spec: SceneSpec,
                source: str = "library") -> dict:
    """What duplicate detection and prompts need to know of a task."""
    return {"name": name, "description": description, "instruction": instruction,
            "goals": [str(g) for g in goals], "signature": goal_signature(goals, spec),
            "assets": scene_assets(spec), "source": source}


_BUILTIN_RECORDS: list = []


def builtin_records() -> list:
    """Records of the built-in tasks (built at seed 0 in this process: their code is trusted)."""
    if not _BUILTIN_RECORDS:
        from taskweave.envs.tasks import BUILTIN_TASKS
        for cls in BUILTIN_TASKS:
            t = cls()
            spec = t.reset(0)
            _BUILTIN_RECORDS.append(task_record(t.name, t.description, t.instruction, t.goals, spec, "builtin"))
    return [dict(r) for r in _BUILTIN_RECORDS]


def _tokens(text: str) -> set:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS}


def _grams(text: str, n: int = 3) -> Counter:
    t = " " + re.sub(r"[^a-z ]+", " ", text.lower()).strip() + " "
    return Counter(t[i:i + n] for i in range(max(0, len(t) - n + 1)))


def description_similarity(a: str, b: str) -> float:
    """Mean of token Jaccard (stopwords dropped) and character-trigram cosine, in [0, 1]."""
    ta, tb = _tokens(a), _tokens(b)
    jac = len(ta & tb) / len(ta | tb) if ta | tb else 1.0
    ga, gb = _grams(a), _grams(b)
    dot = sum(v * gb[k] for k, v in ga.items())
    norm = math.sqrt(sum(v * v for v in ga.values()) * sum(v * v for v in gb.values()))
    return 0.5 * jac + 0.5 * (dot / norm if norm else 0.0)


def structure_similarity(a: dict, b: dict) -> float:
    """Goal-structure similarity: multiset and set Jaccard of signatures, plus asset overlap, in [0, 1]."""
    ca, cb = Counter(a["signature"]), Counter(b["signature"])
    multi = sum((ca & cb).values()) / max(1, sum((ca | cb).values()))
    sa, sb = set(ca), set(cb)
    kinds = len(sa & sb) / max(1, len(sa | sb))
    aa, ab = set(a.get("assets", [])), set(b.get("assets", []))
    assets = len(aa & ab) / max(1, len(aa | ab))
    return 0.4 * multi + 0.4 * kinds + 0.2 * assets


def similarity(a: dict, b: dict) -> dict:
    """Description, structure and combined similarity of two task records."""
    d = description_similarity(a["description"] + " " + a.get("instruction", ""),
                               b["description"] + " " + b.get("instruction", ""))
    s = structure_similarity(a, b)
    return {"description": round(d, 3), "structure": round(s, 3), "combined": round(0.5 * d + 0.5 * s, 3)}


def is_duplicate(a: dict, b: dict) -> tuple:
    """(duplicate?, scores, why) for two records: same name, near-identical text, or same goals and similar text."""
    sc = similarity(a, b)
    bare = lambda n: n[len(PREFIX):] if n.startswith(PREFIX) else n  # noqa: E731
    if bare(a["name"]).lower() == bare(b["name"]).lower():
        return True, sc, f"same name as {b['name']}"
    if sc["description"] >= DESC_DUP and sc["structure"] >= DESC_DUP_STRUCTURE:
        return True, sc, f"description {sc['description']:.2f} similar to {b['name']}'s"
    if Counter(a["signature"]) == Counter(b["signature"]) and sc["description"] >= DESC_DUP_SAME_GOALS:
        return True, sc, (f"same goal structure as {b['name']} ({', '.join(b['signature'])}) and similar "
                          f"description ({sc['description']:.2f})")
    return False, sc, ""


def find_duplicate(record: dict, others: list) -> Optional[dict]:
    """The first record the candidate duplicates, as {name, why, scores}; None if it is new."""
    for o in others:
        dup, sc, why = is_duplicate(record, o)
        if dup:
            return {"name": o["name"], "why": why, "scores": sc}
    return None


def diversity(records: list) -> float:
    """Mean pairwise distance (1 - combined similarity) of a set of task records; 0 for fewer than two."""
    n = len(records)
    if n < 2:
        return 0.0
    ds = [1.0 - similarity(records[i], records[j])["combined"] for i in range(n) for j in range(i + 1, n)]
    return round(float(np.mean(ds)), 4)


# ---- storage -----------------------------------------------------------------------------------
class TaskLibrary:
    """A folder of accepted generated tasks (code + meta.json each) that load as envs."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = os.path.abspath(path or default_library_path())

    def names(self) -> list:
        """Names (without the Gen_ prefix) of the stored tasks, sorted."""
        if not os.path.isdir(self.path):
            return []
        return sorted(n for n in os.listdir(self.path)
                      if NAME_RE.match(n) and os.path.isfile(os.path.join(self.path, n, "meta.json")))

    def meta(self, name: str) -> dict:
        """The metadata record of one task."""
        with open(os.path.join(self.path, self._bare(name), "meta.json"), encoding="utf-8") as f:
            return json.load(f)

    def source(self, name: str) -> str:
        """The module source of one task."""
        with open(os.path.join(self.path, self._bare(name), "task.py"), encoding="utf-8") as f:
            return f.read()

    def entries(self) -> list:
        """Metadata of every stored task."""
        return [self.meta(n) for n in self.names()]

    def records(self, include_builtin: bool = True) -> list:
        """Task records (for prompts, duplicate detection, diversity) of the library, built-ins first."""
        out = builtin_records() if include_builtin else []
        for m in self.entries():
            out.append({k: m.get(k) for k in ("name", "description", "instruction", "goals", "signature", "assets")}
                       | {"source": "library"})
        return out

    def save(self, name: str, source: str, meta: dict) -> str:
        """Store an accepted task atomically (folder assembled aside, then renamed in); its folder."""
        if not NAME_RE.match(name):
            raise ValueError(f"task name {name!r} must be CamelCase letters and digits")
        final = os.path.join(self.path, name)
        if os.path.exists(final):
            raise FileExistsError(f"library already has a task {name!r} ({final})")
        os.makedirs(self.path, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=self.path, prefix=f".tmp-{name}-")
        meta = dict(meta, name=name, env_name=env_name(name), code_sha256=code_hash(source))
        try:
            atomic_write_text(os.path.join(tmp, "task.py"), source)
            atomic_write_text(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=1, sort_keys=True) + "\n")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def remove(self, name: str) -> None:
        """Delete one stored task."""
        shutil.rmtree(os.path.join(self.path, self._bare(name)))

    def diversity(self, include_builtin: bool = False) -> float:
        """Mean pairwise distance of the library's tasks (built-ins included on request)."""
        return diversity(self.records(include_builtin))

    def task_class(self, name: str) -> type:
        """A SandboxedTask subclass for one stored task (zero-argument constructor)."""
        bare = self._bare(name)
        meta = self.meta(bare)
        folder = os.path.join(self.path, bare)
        return type(env_name(bare), (SandboxedTask,), {
            "name": env_name(bare), "description": str(meta.get("description", "")),
            "long_horizon": len(meta.get("goals", [])) >= 2, "source_path": os.path.join(folder, "task.py"),
            "cache_dir": os.path.join(folder, "cache"), "expected_sha": str(meta.get("code_sha256", "")),
            "__doc__": f"Generated task {bare} (sandboxed)."})

    def register(self) -> list:
        """Register every stored task as Gen_<Name> (make_env and gym.make work); the names registered."""
        out = []
        for n in self.names():
            cls = self.task_class(n)
            register_task(cls, cls.name)
            out.append(cls.name)
        return out

    @staticmethod
    def _bare(name: str) -> str:
        bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
        if not NAME_RE.match(bare):
            raise KeyError(f"bad library task name {name!r}")
        return bare


def register_library(path: Optional[str] = None) -> list:
    """Register every task of a library folder (default $TASKWEAVE_LIBRARY or ./task_library); their names."""
    return TaskLibrary(path).register()
