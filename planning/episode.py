"""One planning episode, the one module for it: the record a planner hands back (`EpisodeRecord`), the
harness every planner runs in (`Episode`) and `run_episode`, which builds the env and runs a planner.

(~500 lines: harness, record, observation helpers and runner share one lifecycle and are read together.)

The `Episode` lets the LLM answer from the world (an offline client binds to the executor), prompts
through the templates, counts malformed replies (never raising on them), executes skill calls through
the `SkillExecutor` (an executor that raises ends the episode with `executor_error` instead of a
crash), enforces step and correction budgets, and at the end fills the `EpisodeRecord`:

- goal-condition recall: fraction of the task's goals that hold at the END of the episode (not the
  maximum over it, a pitfall of the Tree-Planner code);
- executability: fraction of attempted skill calls that were grounded and ran without failing
  (ungrounded calls are recorded as `invalid_args` steps without reaching the executor);
- corrections: skills chosen to recover from a failure (or a perturbation);
- LLM calls and tokens: the client's `UsageMeter` difference over the episode; wall time;
- restores: simulator undos (`Episode.restore`), privileged information no robot has; a record with any
  (or a planner configured for them) says `privileged: true`.

One contract for every planner: a planner learns about the scene only from the text observation
(`executor.observe()`) and the skill results, whose one feedback text is `outcome_line`. No planner
decision reads the env's event log or true poses; a change a planner may react to is one the observation
text shows (`observation_change` compares two observations, ignoring the objects the skill itself names;
`describe_subset` cuts an observation down to some names). The record keeps the env's perturbation events
(`extra["events"]`) for the report only.

Perturbation specs given to `run_episode` are the env's (`move:red_block@2,knock@3,grasp_fail:0.5@0`),
plus placeholders resolved against the episode's goals after reset, since object names depend on the
seed: `$goal` / `$goalN` is the first argument of goal N (0-based), `$baseN` its second argument.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from taskweave.envs.perturb import PerturbationError
from taskweave.planning.grounding import GroundingError, GroundingStats, format_skill_catalogue, ground_call
from taskweave.planning.llm import LLMClient, LLMError, constraints, make_llm
from taskweave.planning.prompts import build_messages
from taskweave.sim.errors import UserError
from taskweave.sim.skill_types import SkillCall, SkillResult

ExecutorFactory = Callable[..., object]


class ConstrainModeError(UserError, ValueError):
    """A --constrain value that is not a mode."""
_PLACEHOLDER = re.compile(r"\$(goal|base)(\d*)")


# ---- the record ------------------------------------------------------------------------------
@dataclass
class StepRecord:
    """One executed skill call and its outcome."""

    call: str
    success: bool
    failure: Optional[str] = None
    message: str = ""
    correction: bool = False   # chosen to recover from an earlier failure
    source: str = ""           # what proposed it: "tree", "decide", "llm", "critic", "oracle", ...

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass
class EpisodeRecord:
    """The outcome of one planning episode: steps, failures, corrections, LLM usage and task scores."""

    task: str
    planner: str
    llm: str = ""
    backend: str = ""
    seed: Optional[int] = None
    instruction: str = ""
    steps: list = field(default_factory=list)
    failures: int = 0
    corrections: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0          # each request's prompt counted once (as the Tree-Planner paper counts)
    completion_tokens: int = 0
    prompt_tokens_sent: int = 0     # prompts over every request actually sent (n separate passes count n times)
    wall_time: float = 0.0
    progress: float = 0.0
    goal_condition_recall: float = 0.0
    executability: float = 0.0
    success: bool = False
    error: Optional[str] = None
    incomplete: bool = False        # the run could not complete (an LLM request or the executor failed)
    extra: dict = field(default_factory=dict)

    def add_step(self, call, result=None, *, success: Optional[bool] = None, failure: Optional[str] = None,
                 message: str = "", correction: bool = False, source: str = "") -> StepRecord:
        """Append one executed call (from a SkillResult or explicit fields) and update the counters."""
        if result is not None:
            success, failure, message = result.success, result.failure, result.message
        step = StepRecord(str(call), bool(success), failure, message, correction, source)
        self.steps.append(step)
        self.failures += int(not step.success)
        self.corrections += int(correction)
        self.executability = sum(s.success for s in self.steps) / len(self.steps)
        return step

    def add_usage(self, usage: dict) -> None:
        """Add LLM usage counters (a `UsageMeter.since(...)` or `to_dict()` result)."""
        self.llm_calls += int(usage.get("calls", 0))
        self.prompt_tokens += int(usage.get("prompt_tokens", 0))
        self.prompt_tokens_sent += int(usage.get("prompt_tokens_sent", usage.get("prompt_tokens", 0)))
        self.completion_tokens += int(usage.get("completion_tokens", 0))

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def repeats_after_failure(self) -> tuple:
        """(failed skills followed by another skill, of those the ones whose next skill was the identical
        call): how often a planner answered a failure by trying exactly the same thing again."""
        followed = [(a, b) for a, b in zip(self.steps, self.steps[1:]) if not a.success]
        return len(followed), sum(a.call == b.call for a, b in followed)

    def to_dict(self) -> dict:
        """JSON-serialisable form, steps included."""
        d = asdict(self)
        d["total_tokens"] = self.total_tokens
        return d

    def to_json(self, indent: Optional[int] = None) -> str:
        """The record as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, default=str)

    @classmethod
    def from_dict(cls, d: dict) -> "EpisodeRecord":
        """Rebuild a record from `to_dict` output."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["steps"] = [StepRecord(**s) for s in known.get("steps", [])]
        return cls(**known)


# ---- the harness -----------------------------------------------------------------------------
Trace = Callable[[dict], None]
DONE_NAMES = frozenset({"done", "finish", "finished", "stop", "end"})
MOVED_TOL = 0.03   # metres an object not named by a skill may drift (in the observation) before it counts as a change
_OBJECT_LINE = re.compile(r"^- (?P<name>[^:\s]+): (?P<what>.*?) at \((?P<x>-?[\d.]+), (?P<y>-?[\d.]+), "
                          r"(?P<z>-?[\d.]+)\)(?P<tipped>, tipped over)?\s*$")


def format_history(lines: list) -> str:
    """Numbered history lines for a prompt, or 'none yet'."""
    return "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1)) if lines else "none yet"


def outcome_line(call, result: SkillResult) -> str:
    """One history line: the call and what came of it."""
    if result.success:
        return f"{call} -> ok"
    return f"{call} -> failed ({result.failure}): {result.message}"


def observed_objects(observation: str) -> dict:
    """Object name -> (x, y, z, tipped over) for every object line of a text observation (what it shows)."""
    out, section = {}, ""
    for line in (observation or "").splitlines():
        line = line.rstrip()
        if line and not line.startswith("- "):
            section = line.split(":", 1)[0].strip().lower()
            continue
        m = _OBJECT_LINE.match(line)
        if m and section == "objects":
            out[m["name"]] = (float(m["x"]), float(m["y"]), float(m["z"]), bool(m["tipped"]))
    return out


def observation_change(before: str, after: str, call=None, tol: float = MOVED_TOL) -> str:
    """What the observation text shows changing from `before` to `after` beyond the objects `call` names:
    an object that appeared, disappeared, tipped over or moved more than tol; '' when nothing did.

    Only the two observation texts are compared (never the env's event log or true poses), so a change
    counts exactly when a robot reading the observation could see it.
    """
    named = set(call.objects()) if isinstance(call, SkillCall) else set()
    old, new = observed_objects(before), observed_objects(after)
    changes = []
    for n in list(old) + [n for n in new if n not in old]:
        if n in named:
            continue
        if n not in new:
            changes.append(f"{n} is no longer seen")
        elif n not in old:
            changes.append(f"{n} appeared at ({new[n][0]:.2f}, {new[n][1]:.2f})")
        else:
            (bx, by, bz, bt), (x, y, z, t) = old[n], new[n]
            if math.dist((x, y, z), (bx, by, bz)) > tol:
                changes.append(f"{n} moved from ({bx:.2f}, {by:.2f}) to ({x:.2f}, {y:.2f})")
            elif t != bt:
                changes.append(f"{n} {'tipped over' if t else 'stands upright again'}")
    return "; ".join(changes)


def _split_facts(text: str) -> list:
    """The facts of an observation's relations list ('none' gives none), split at top-level commas."""
    facts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            facts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    facts.append(cur.strip())
    return [f for f in facts if f and f != "none"]


def describe_subset(observation: str, names) -> str:
    """A text observation cut down to the named objects/zones: their lines, the relations naming them and
    the gripper line (an object the observation does not show is said to be not seen); other lines that
    name no object (the task's rules, say) are kept as they are."""
    names = [n for n in dict.fromkeys(names)]
    wanted = set(names)
    lines, relations, gripper, other, section = {}, [], "Gripper: unknown", [], ""
    for line in (observation or "").splitlines():
        line = line.rstrip()
        head = line.split(":", 1)[0].strip().lower() if ":" in line and not line.startswith("- ") else ""
        if line.startswith("- "):
            name = line[2:].split(":", 1)[0].strip()
            if section in ("objects", "zones"):
                if name in wanted:
                    lines[name] = line
            else:
                other.append(line)
        elif head == "relations":
            relations = [f for f in _split_facts(line.split(":", 1)[1])
                         if wanted & set(re.findall(r"[A-Za-z_]\w*", f.partition("(")[2]))]
        elif head == "gripper":
            gripper = line
        elif head in ("objects", "zones", "task"):
            section = head
        elif line:
            section = head
            other.append(line)
    out = [lines.get(n, f"- {n}: not seen") for n in names]
    out.append("Relations: " + (", ".join(relations) if relations else "none"))
    out.append(gripper)
    return "\n".join(out + other)


class Episode:
    """One planning episode: LLM requests, skill execution, budgets and the record being filled."""

    def __init__(self, planner: str, executor, llm: LLMClient, *, task: str = "", seed: Optional[int] = None,
                 backend: str = "", trace: Optional[Trace] = None, max_steps: int = 40,
                 max_corrections: int = 10, config: Optional[dict] = None, constrain: str = "grammar"):
        """Start the clock, bind the LLM to the executor and open an EpisodeRecord.

        constrain: 'grammar' (constrain replies where the backend can) or 'none' (free decoding).
        """
        if constrain not in constraints.CONSTRAIN_MODES:
            raise ConstrainModeError(f"unknown constrain mode {constrain!r} (choose one of: "
                                     f"{', '.join(constraints.CONSTRAIN_MODES)})")
        self.constrain = constrain
        self.executor, self.llm, self.trace_fn = executor, llm, trace
        self.max_steps, self.max_corrections = int(max_steps), int(max_corrections)
        llm.bind(executor)   # an LLM answering from a world model (offline) reads this one
        self.record = EpisodeRecord(task=task or getattr(executor, "task_name", ""), planner=planner,
                                    llm=getattr(llm, "model", "") or type(llm).__name__,
                                    backend=backend or getattr(executor, "backend_name", ""), seed=seed,
                                    instruction=executor.instruction)
        self.stats = GroundingStats()
        self.malformed = 0
        self.corrections_used = 0
        self.stopped = False
        self.notes: list = []
        self.config = dict(config or {})
        self._usage0 = llm.meter.to_dict()
        self._t0 = time.monotonic()
        self.seen_events: list = []   # perturbation events that fired during a skill (for the record only)
        self.restores = 0             # simulator undos (privileged)
        self.emit("start", planner=planner, task=self.record.task, instruction=self.record.instruction)

    # ---- scene --------------------------------------------------------------------------
    @property
    def objects(self) -> list:
        """Object names of the scene."""
        return list(self.executor.object_names)

    @property
    def graspable(self) -> list:
        """Objects the gripper can hold (an executor without `graspable_names`: every object)."""
        names = getattr(self.executor, "graspable_names", None)
        return list(names) if names is not None else self.objects

    @property
    def zones(self) -> list:
        """Zone names of the scene."""
        return list(self.executor.zone_names)

    def skill_fields(self) -> dict:
        """The prompt fields every planning template shares: skills, objects, zones, task."""
        return {"skills": format_skill_catalogue(), "objects": ", ".join(self.objects) or "none",
                "zones": ", ".join(self.zones) or "none", "task": self.executor.instruction}

    def _event_log(self) -> list:
        """The executor's perturbation events so far: for the record only, never for a planner decision."""
        return list(getattr(self.executor, "events", None) or [])

    # ---- LLM ----------------------------------------------------------------------------
    def constraint(self, name: str, **kw):
        """The constraint for a reply of this kind in this scene, or None with --constrain none.

        name: 'plan' (whole plan), 'step' (one call or done), 'option' (n_options=...), 'verdict', 'subgoal'
        (max_calls=...), 'note' (one line of free text, max_chars=...). Skill calls are typed: the first
        argument of pick, place and rotate ranges over the objects the gripper can hold.
        """
        if self.constrain == "none":
            return None
        if name == "plan":
            return constraints.plan_constraint(self.objects, self.zones, graspable=self.graspable)
        if name == "step":
            return constraints.step_constraint(self.objects, self.zones, graspable=self.graspable)
        if name == "option":
            return constraints.option_constraint(int(kw["n_options"]))
        if name == "verdict":
            return constraints.verdict_constraint()
        if name == "subgoal":
            return constraints.subgoal_constraint(self.objects, self.zones, int(kw.get("max_calls", 3)),
                                                  graspable=self.graspable)
        if name == "note":
            return constraints.note_constraint(int(kw.get("max_chars", 240)))
        raise ValueError(f"no constraint named {name!r}")

    def ask(self, prompt: str, *, tag: str, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
            max_tokens: Optional[int] = None, constraint=None, **fields) -> Optional[list]:
        """Render a template and ask for n completions (under constraint, where the backend can enforce it);
        None (and the episode stopped) on an LLM error."""
        if self.stopped:
            return None
        messages = build_messages(prompt, **fields)
        try:
            resp = self.llm.complete(messages, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                     tag=tag, constraint=constraint)
        except LLMError as e:
            self.stop(f"LLM error ({tag}): {e}", incomplete=True)
            return None
        texts = [t if isinstance(t, str) else "" for t in (resp.texts or [])]
        self.emit("llm", tag=tag, n=n, tokens=resp.total_tokens)
        if not texts:
            self.count_malformed(tag, "the reply had no completions")
            return None
        return texts

    def score(self, prompt: str, choices, *, tag: str, **fields) -> Optional[dict]:
        """Render a template and score the option strings as the reply's first token (one forward pass):
        option -> log-probability, or None (and the episode stopped) on an LLM error."""
        if self.stopped:
            return None
        try:
            resp = self.llm.score_options(build_messages(prompt, **fields), list(choices), tag=tag)
        except LLMError as e:
            self.stop(f"LLM error ({tag}): {e}", incomplete=True)
            return None
        self.emit("llm", tag=tag, n=1, tokens=resp.total_tokens)
        if not resp.logprobs or set(resp.logprobs) != set(choices):
            self.count_malformed(tag, "the option scores did not cover the options")
            return None
        return dict(resp.logprobs)

    def count_malformed(self, tag: str, why: str, k: int = 1) -> None:
        """Count k unreadable replies and note why."""
        self.malformed += k
        self.note(f"unreadable {tag} reply: {why}")

    # ---- skills -------------------------------------------------------------------------
    def ground(self, call: SkillCall):
        """A GroundedCall for this scene, or a GroundingError saying why not."""
        return ground_call(call, self.objects, self.zones, self.stats)

    def execute(self, call, *, source: str, correction: bool = False) -> SkillResult:
        """Ground and run one call, record the step and trace it; an ungrounded call fails with invalid_args."""
        if isinstance(call, GroundingError):
            result = SkillResult(False, "invalid_args", call.reason)
            shown = call.call
        else:
            g = call if hasattr(call, "call") else self.ground(call)
            if isinstance(g, GroundingError):
                result, shown = SkillResult(False, "invalid_args", g.reason), g.call
            else:
                shown = g.call
                n_events = len(self._event_log())
                try:
                    result = self.executor.execute(g.call)
                except Exception as e:  # an executor bug must end this episode, not the whole run
                    result = SkillResult(False, "executor_error", f"{type(e).__name__}: {e}")
                    self.stop(f"executor raised {type(e).__name__} on {g.call}: {e}", incomplete=True)
                if not isinstance(result, SkillResult):
                    result = SkillResult(False, "executor_error", f"executor returned {type(result).__name__}")
                for e in self._event_log()[n_events:]:
                    self.seen_events.append(str(e.get("event", e)) if isinstance(e, dict) else str(e))
        step = self.record.add_step(shown, result, correction=correction, source=source)
        self.emit("step", i=len(self.record.steps), call=step.call, success=step.success, failure=step.failure,
                  message=step.message, source=source, correction=correction)
        return result

    def restore(self, snap, why: str = "") -> None:
        """Return the scene to a snapshot (backtracking): a privileged simulator undo, counted in the record."""
        self.executor.restore(snap)
        self.restores += 1
        self.note(f"restored the scene{': ' + why if why else ''}")

    # ---- budgets and the end --------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Skill calls attempted so far."""
        return len(self.record.steps)

    def budget_left(self) -> bool:
        """False (and the episode stopped) once the step budget is spent."""
        if self.steps >= self.max_steps:
            self.stop(f"step budget of {self.max_steps} skills exhausted")
        return not self.stopped

    def use_correction(self) -> bool:
        """Spend one correction; False (and the episode stopped) when the budget is gone."""
        if self.corrections_used >= self.max_corrections:
            self.stop(f"correction budget of {self.max_corrections} exhausted")
            return False
        self.corrections_used += 1
        return True

    def stop(self, error: str = "", incomplete: bool = False) -> None:
        """End the episode, keeping the first error given; incomplete: the run could not complete (an LLM
        request or the executor failed), which is no verdict on the planner."""
        self.stopped = True
        self.record.incomplete |= bool(incomplete)
        if error and not self.record.error:
            self.record.error = error
            self.note(error, kind="error")

    def note(self, text: str, kind: str = "note") -> None:
        """A free-text event for the trace (backtracking, replanning, critic rejections, ...)."""
        self.notes.append(text)
        self.emit(kind, text=text)

    def emit(self, event: str, **fields) -> None:
        """Send one event dict to the trace callback, if any."""
        if self.trace_fn is not None:
            self.trace_fn({"event": event, **fields})

    def finish(self, **extra) -> EpisodeRecord:
        """Fill the end-of-episode scores, usage and wall time, and return the record."""
        rec, ex = self.record, self.executor
        self.stopped = True
        try:
            rec.progress = rec.goal_condition_recall = float(ex.progress())   # fraction of goals met at the end
            rec.success = bool(ex.is_success())
        except Exception as e:
            rec.error = rec.error or f"could not score the episode: {type(e).__name__}: {e}"
            rec.incomplete = True
        rec.executability = (sum(s.success for s in rec.steps) / len(rec.steps)) if rec.steps else 0.0
        rec.add_usage(self.llm.meter.since(self._usage0))
        rec.wall_time = round(time.monotonic() - self._t0, 4)
        attempted = self.stats.grounded + self.stats.rejected
        rec.extra.update({
            "malformed_replies": int(self.malformed),
            "grounding": self.stats.to_dict(),
            "grounded_fraction": round(self.stats.grounded / attempted, 4) if attempted else None,
            "events": list(self.seen_events),
            "restores": int(self.restores),
            "privileged": bool(self.restores or self.config.get("privileged", False)),
            "budgets": {"max_steps": self.max_steps, "max_corrections": self.max_corrections},
            "constrain": self.constrain,
            "config": self.config,
        })
        rec.extra.update(extra)
        self.emit("end", success=rec.success, gcr=rec.goal_condition_recall, error=rec.error)
        return rec


# ---- running one episode on a task -----------------------------------------------------------
def resolve_perturbations(spec: str, goals: list) -> str:
    """Replace $goalN / $baseN placeholders in a perturbation spec with the episode's object names."""
    def sub(m):
        """The name a placeholder stands for."""
        i = int(m.group(2) or 0)
        if i >= len(goals):
            raise PerturbationError(f"perturbation {spec!r} names goal {i}, but the task has {len(goals)} goal(s)")
        args = [a for a in goals[i].args if isinstance(a, str)]
        k = 0 if m.group(1) == "goal" else 1
        if k >= len(args):
            raise PerturbationError(f"perturbation {spec!r}: goal {goals[i]} has no {'base' if k else 'object'} argument")
        return args[k]
    return _PLACEHOLDER.sub(sub, spec or "")


def run_episode(task, planner="tree", llm_spec: str = "offline", backend: str = "mujoco", seed: int = 0,
                perturb: str = "", executor_factory: Optional[ExecutorFactory] = None,
                instruction: Optional[str] = None, trace=None, *, llm=None, planner_kwargs: Optional[dict] = None,
                llm_kwargs: Optional[dict] = None) -> EpisodeRecord:
    """Build the env for task/seed/perturbations, wrap it in an executor and run one planner episode.

    planner: a name ('tree', 'clea', 'iterative', 'openloop') or a planner object; llm: a ready client
    (else built from llm_spec; the offline one is seeded with `seed`); executor_factory(env) -> SkillExecutor
    (default: scripted skills); trace(event: dict) receives every step, LLM call and note.
    """
    from taskweave.envs import make_env, parse_perturbations
    from taskweave.planning.executors import EnvSkillExecutor
    from taskweave.planning.registry import make_planner
    if instruction is not None and not str(instruction).strip():
        raise UserError("the instruction is empty or blank")
    planner = make_planner(planner, **(planner_kwargs or {})) if isinstance(planner, str) else planner
    own_llm = llm is None
    if own_llm:
        kw = dict(llm_kwargs or {})
        if llm_spec.split(":", 1)[0] in ("offline", "llama"):   # seeded backends follow the episode seed
            kw.setdefault("seed", seed)
        llm = make_llm(llm_spec, **kw)
    # the planner's skill budget bounds the perturbation schedule (checked at reset)
    env = make_env(task, backend, control="skill", max_skills=getattr(planner, "max_steps", None))
    try:
        env.reset(seed=seed)
        resolved = resolve_perturbations(perturb, env.task.goals) if perturb else ""
        if resolved:
            env.perturbations = parse_perturbations(resolved)
            env.reset(seed=seed)
        if instruction:
            env.task.instruction = instruction
        executor = executor_factory(env) if executor_factory is not None else EnvSkillExecutor(env)
        rec = planner.run(executor, llm, task=env.task.name, seed=seed, backend=backend, trace=trace)
        rec.extra["perturbations"] = resolved
        rec.extra["executor"] = getattr(executor, "kind", type(executor).__name__)
        return rec
    finally:
        env.close()
        if own_llm:
            llm.close()


__all__ = ["EpisodeRecord", "StepRecord", "Episode", "Trace", "DONE_NAMES", "format_history", "outcome_line",
           "describe_subset", "observation_change", "observed_objects", "run_episode", "resolve_perturbations", "ExecutorFactory"]
