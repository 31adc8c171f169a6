"""Validation of one generated task module: parse, static policy, sandboxed build, sandboxed oracle.

Stages, in order; the first that fails rejects the module with a reason naming it:
  parse   - `ast.parse` of the source
  static  - the static policy (`sandbox.static`) and the task contract (no overriding what decides
            success or what the oracle does: the main process only ever uses goals as data)
  inspect - the sandbox builds the scene for K seeds (plus a repeat of the first, to catch
            non-determinism) and the scene, instruction and goals are rebuilt here as checked data
  oracle  - the sandbox runs the oracle for K seeds on each backend; accepted iff it succeeds on at
            least ceil(3K/4) seeds in every engine (3 of 4).
The sandboxed jobs (the inspect build, then the oracle runs per backend and group of seeds) are dispatched
through the rollout executor (`taskweave.sim.rollouts`; `--workers N` / `--ray ADDRESS`): local worker
processes by default (one per backend), a Ray cluster's nodes with --ray. The verdict does not depend on it.
Command line: `taskweave tasks validate FILE.py [--json] [--seeds N]` (`taskweave.commands.validate`).
"""
from __future__ import annotations

import ast
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional

from taskweave.envs.task import TaskError
from taskweave.generation.library import NAME_RE, task_record
from taskweave.generation.sandbox.launcher import run_sandboxed
from taskweave.generation.sandbox.static import check_source
from taskweave.generation.task import goals_from_data, scene_from_data
from taskweave.sim.rollouts import RolloutExecutor, make_executor

BACKENDS = ("mujoco", "pybullet")
STAGES = ("parse", "static", "inspect", "oracle")
PROTECTED_METHODS = frozenset({"oracle_plan", "achieve", "success", "progress", "reset", "info", "_release"})
ORACLE_MEMORY_MB = 3072
PASS_FRACTION = 0.75


@dataclass
class ValidationReport:
    """The outcome of validating one task module; `reason` names the failing stage and the cause."""

    file: str
    accepted: bool = False
    stage: str = "parse"                   # the stage reached: where it failed, or "accepted"
    reason: str = ""
    passed: dict = field(default_factory=dict)    # stage -> bool
    violations: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    task: dict = field(default_factory=dict)      # name, description, instruction, goals, signature, assets
    oracle: dict = field(default_factory=dict)    # backend -> {successes, seeds, required, runs, error}
    details: str = ""                      # traceback or failure list: what the repair prompt shows
    seeds: list = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready copy."""
        return asdict(self)

    def feedback(self, limit: int = 4000) -> str:
        """The error text an LLM gets back to repair the module."""
        text = f"{self.stage}: {self.reason}"
        if self.violations:
            text += "\n" + "\n".join(self.violations[:12])
        if self.details:
            text += "\n" + self.details
        return text[-limit:] if len(text) > limit else text

    def summary(self) -> str:
        """A few human-readable lines."""
        head = f"{'ACCEPTED' if self.accepted else 'REJECTED'} {self.file}"
        if self.task.get("name"):
            head += f" (task {self.task['name']}: {self.task.get('description', '')})"
        lines = [head]
        for b, o in self.oracle.items():
            lines.append(f"  oracle {b}: {o.get('successes', 0)}/{len(o.get('seeds', []))} seeds "
                         f"(need {o.get('required')})" + (f" - {o['error']}" if o.get("error") else ""))
        if not self.accepted:
            lines.append(f"  reason: {self.stage}: {self.reason}")
            lines += [f"    {v}" for v in self.violations[:8]]
        lines.append(f"  {self.duration_s:.1f} s")
        return "\n".join(lines)


def contract_violations(source: str, filename: str = "<task>") -> list:
    """Task-contract breaches: a Task subclass that overrides what decides success or what the oracle does."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in PROTECTED_METHODS:
                    out.append(f"{filename}:{item.lineno}:{item.col_offset}: error [task-contract] {node.name} "
                               f"overrides {item.name!r}; goals are data and the generic oracle solves them")
    return out


def required_successes(n_seeds: int) -> int:
    """Seeds that must succeed per engine: 3 of 4 (ceil of 3/4 of the seeds)."""
    return max(1, math.ceil(PASS_FRACTION * n_seeds))


def _error_text(err) -> str:
    if not isinstance(err, dict):
        return str(err)[:2000]
    return f"{err.get('type', 'Error')}: {err.get('message', '')}"


def _sandbox_failure(res) -> str:
    if res.killed_by:
        return f"killed by {res.killed_by} after {res.duration_s:.1f} s"
    if res.blocked:
        return "the sandbox blocked: " + "; ".join(res.blocked[:3])
    r = res.result or {}
    if isinstance(r.get("error"), dict):
        return _error_text(r["error"])
    return res.error or f"exit status {res.returncode}"


def inspect_job(source: str, seeds: list):
    """The sandboxed build of the scene for every seed, plus a repeat of the first (an executor job)."""
    return run_sandboxed(source, {"kind": "inspect", "seeds": seeds + seeds[:1]}, timeout_s=15 + 2 * len(seeds),
                         memory_mb=1024)


def _inspect(res, seeds: list, rep: ValidationReport) -> bool:
    builds = (res.result or {}).get("builds")
    if type(builds) is not list or len(builds) != len(seeds) + 1:
        rep.reason = f"the sandboxed build did not finish: {_sandbox_failure(res)}"
        rep.details = ((res.result or {}).get("error") or {}).get("traceback", "") if isinstance(
            (res.result or {}).get("error"), dict) else res.stderr[-2000:]
        return False
    for b in builds:
        if isinstance(b, dict) and "error" in b:
            err = b["error"] if isinstance(b["error"], dict) else {}
            rep.reason = f"build(seed={b.get('seed')}) raised {_error_text(err)}"
            rep.details = str(err.get("traceback", ""))[-3000:]
            return False
    if builds[0] != builds[-1]:
        rep.reason = (f"build is not deterministic: seed {seeds[0]} gave two different scenes; use only the rng "
                      "passed to build for random choices")
        return False
    try:
        first = None
        for b in builds[:-1]:
            spec, goals = scene_from_data(b.get("scene")), goals_from_data(b.get("goals"))
            if type(b.get("instruction")) is not str or not b["instruction"].strip():
                raise TaskError("the instruction must be a non-empty string")
            first = first or (spec, goals, b["instruction"])
    except TaskError as e:
        rep.reason = f"the scene or goals are not valid data: {e}"
        return False
    r = res.result
    name, desc = r.get("name"), r.get("description")
    if type(name) is not str or type(desc) is not str or not desc.strip():
        rep.reason = "the task class needs string attributes name and description"
        return False
    if not NAME_RE.match(name):
        rep.reason = f"task name {name!r} must be CamelCase letters and digits (2 to 48 characters)"
        return False
    spec, goals, instruction = first
    rep.task = task_record(name, desc, instruction, goals, spec, "candidate")
    rep.task["objects"] = [o.name for o in spec.objects] + [z.name for z in spec.zones]
    rep.task["stdout"] = res.stdout[-500:]
    return True


def oracle_job(source: str, backend: str, seeds: list) -> dict:
    """The sandboxed oracle on one backend for some seeds (an executor job)."""
    need = required_successes(len(seeds))
    res = run_sandboxed(source, {"kind": "oracle", "seeds": seeds, "backends": [backend]},
                        timeout_s=30 + 15 * len(seeds), memory_mb=ORACLE_MEMORY_MB)
    out = {"seeds": seeds, "required": need, "successes": 0, "runs": [], "error": "", "duration_s": res.duration_s}
    runs = (res.result or {}).get("runs")
    if type(runs) is not list:
        out["error"] = f"the sandboxed oracle did not finish: {_sandbox_failure(res)}"
        return out
    for r in runs:
        if not isinstance(r, dict):
            continue
        rep = r.get("report") if isinstance(r.get("report"), dict) else {}
        fails = rep.get("failures") if isinstance(rep.get("failures"), list) else []
        texts = [f"{f.get('skill')}: {f.get('failure')}: {f.get('message')}"[:300]
                 for f in fails if isinstance(f, dict)]
        row = {"seed": r.get("seed"), "success": rep.get("success") is True,
               "progress": rep.get("progress") if type(rep.get("progress")) is float else 0.0,
               "failures": list(dict.fromkeys(texts))[:4]}
        if "error" in r:
            row["error"] = _error_text(r["error"])
            row["traceback"] = str((r["error"] or {}).get("traceback", ""))[-1500:] if isinstance(
                r["error"], dict) else ""
        out["runs"].append(row)
    out["successes"] = sum(r["success"] for r in out["runs"])
    return out


def _merge_oracle(parts: list) -> dict:
    """One backend's oracle record from the records of its groups of seeds (in seed order)."""
    seeds = [s for p in parts for s in p["seeds"]]
    runs = [r for p in parts for r in p["runs"]]
    return {"seeds": seeds, "required": required_successes(len(seeds)), "successes": sum(r["success"] for r in runs),
            "runs": runs, "error": next((p["error"] for p in parts if p["error"]), ""),
            "duration_s": round(sum(p["duration_s"] for p in parts), 2)}


def _oracle(source: str, seeds: list, backends, executor: RolloutExecutor) -> dict:
    """backend -> oracle record, the seeds of each backend split into groups so that the executor's workers
    all have a job (one group per backend on two workers)."""
    groups = max(1, min(len(seeds), executor.parallelism // max(1, len(backends))))
    size = math.ceil(len(seeds) / groups)
    chunks = [seeds[i:i + size] for i in range(0, len(seeds), size)]
    jobs = [(source, b, c) for b in backends for c in chunks]
    parts = executor.map(oracle_job, jobs)
    return {b: _merge_oracle([p for (_, jb, _), p in zip(jobs, parts) if jb == b]) for b in backends}


def _oracle_reason(oracle: dict) -> tuple:
    bad = [b for b, o in oracle.items() if o["error"] or o["successes"] < o["required"]]
    if not bad:
        return "", ""
    parts, details, causes = [], [], Counter()
    for b in bad:
        o = oracle[b]
        if o["error"]:
            parts.append(f"{b}: {o['error']}")
            continue
        parts.append(f"{b} succeeded on {o['successes']}/{len(o['seeds'])} seeds (need {o['required']})")
        for r in o["runs"]:
            if r["success"]:
                continue
            why = r.get("error") or ("; ".join(r["failures"]) or f"goals not reached (progress {r['progress']:.2f})")
            first = r["failures"][0].split(": ", 1)[-1] if r["failures"] else "goals not reached"
            causes[r.get("error") or first] += 1
            details.append(f"{b} seed {r['seed']}: {why}")
            if r.get("traceback"):
                details.append(r["traceback"])
    reason = "; ".join(parts)
    if causes:
        reason += f"; most common failure: {causes.most_common(1)[0][0]}"
    return reason, "\n".join(details)


def validate_source(source: str, filename: str = "<task>", seeds: int = 4, backends=BACKENDS,
                    first_seed: int = 0, executor: Optional[RolloutExecutor] = None) -> ValidationReport:
    """Run every validation stage on a module's source; the report says whether it is accepted and why not.

    The sandboxed jobs run through executor (default: a local pool of one worker per backend, closed after)."""
    if executor is None:
        with make_executor(max(1, len(backends))) as own:
            return validate_source(source, filename, seeds, backends, first_seed, own)
    t0 = time.monotonic()
    rep = ValidationReport(file=filename, seeds=list(range(first_seed, first_seed + seeds)))
    try:
        ast.parse(source, filename)
        rep.passed["parse"] = True
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        rep.passed["parse"] = False
        rep.reason = f"{type(e).__name__}: {getattr(e, 'msg', e)} (line {getattr(e, 'lineno', '?')})"
        return _done(rep, t0)
    rep.stage = "static"
    found = check_source(source, filename)
    rep.violations = [str(v) for v in found if v.severity == "error"] + contract_violations(source, filename)
    rep.warnings = [str(v) for v in found if v.severity != "error"]
    rep.passed["static"] = not rep.violations
    if rep.violations:
        rep.reason = f"{len(rep.violations)} static policy violation(s), first: {rep.violations[0].split(': ', 1)[-1]}"
        return _done(rep, t0)
    rep.stage = "inspect"
    rep.passed["inspect"] = _inspect(executor.map(inspect_job, [(source, rep.seeds)])[0], rep.seeds, rep)
    if not rep.passed["inspect"]:
        return _done(rep, t0)
    rep.stage = "oracle"
    rep.oracle = _oracle(source, rep.seeds, backends, executor)
    rep.reason, rep.details = _oracle_reason(rep.oracle)
    rep.passed["oracle"] = not rep.reason
    if rep.passed["oracle"]:
        rep.stage, rep.accepted = "accepted", True
    return _done(rep, t0)


def _done(rep: ValidationReport, t0: float) -> ValidationReport:
    rep.duration_s = round(time.monotonic() - t0, 2)
    return rep


def validate_task_file(path: str, seeds: int = 4, backends=BACKENDS,
                       executor: Optional[RolloutExecutor] = None) -> ValidationReport:
    """Validate a task module file on both backends (see the module docstring for the stages)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    return validate_source(source, os.path.basename(path), seeds, tuple(backends), executor=executor)

