"""`RosSkillExecutor`: the planners' `SkillExecutor` over ROS 2 topics (no rclpy import here).

Two ways to run a skill:
- scripted: send `{"id", "skill"}` on `/taskweave/skill_request`, wait for the matching
  `/taskweave/skill_result` (the sim runs its scripted controller);
- policy: name the skill on `/taskweave/current_skill` and watch `/taskweave/symbolic_state`
  and apply the skill loop's `PostconditionRule` (`taskweave.envs.skill_loop`) to the states that
  arrive: the postcondition holds for `settle_ticks` observations and, after a release, the arm has
  lifted clear; or a timeout. A policy with a done head ends the skill itself (`/taskweave/skill_done`,
  the link's `done`): the skill is then scored by its postcondition on the state `DONE_SETTLE_STATES`
  states later (its last command applied), as `policies.controllers.done_result` scores it in simulation.

A physical scene cannot be restored: `snapshot()` returns a marker and `restore()` only logs, so a
backtracking planner continues from the scene as it is. When the state names a registered task and
seed (the sim does), the task's goals and oracle plan are rebuilt from them for scoring and for the
offline LLM.
"""
from __future__ import annotations

import time
import uuid
from typing import Callable, Optional

from taskweave.envs.skill_check import precondition_failure, skill_succeeded
from taskweave.envs.skill_loop import PostconditionRule
from taskweave.envs.symbolic import state_to_text
from taskweave.ros.common import Latest
from taskweave.ros.state_json import symbolic_from_dict
from taskweave.sim.skill_types import SkillCall, SkillResult

POLICY_SILENT_S = 3.0   # a policy skill fails when the sim's watchdog reports no commands for this long
DONE_SETTLE_STATES = 2  # states after the policy's done before the postcondition scores the skill


class RosSkillExecutor:
    """Runs skill calls through the sim (scripted) or the policy node (policy) and reads the state topic."""

    can_restore = False

    def __init__(self, link, mode: str, instruction: str, skill_timeout: float = 60.0, settle_ticks: int = 3,
                 log: Optional[Callable[[str], None]] = None):
        """link: the planner node (state, results, publish_request, publish_current, stop); mode: scripted | policy."""
        if mode not in ("scripted", "policy"):
            raise ValueError(f"executor must be 'scripted' or 'policy', got {mode!r}")
        self.link, self.kind, self._instruction = link, mode, instruction
        self.skill_timeout, self.settle_ticks = float(skill_timeout), max(1, int(settle_ticks))
        self.log = log or (lambda text: None)
        self._task = None
        self._task_key = None

    # ---- what the state topic says -------------------------------------------------------------
    def latest(self) -> dict:
        """The newest state JSON (raises if none has arrived)."""
        d = self.link.state.value
        if d is None:
            raise RuntimeError("no /taskweave/symbolic_state received yet")
        return d

    @property
    def object_names(self) -> list:
        """Names of the objects in the scene."""
        d = self.latest()
        return list(d.get("object_names") or d.get("objects", {}))

    @property
    def zone_names(self) -> list:
        """Names of the table zones in the scene."""
        return list(self.latest().get("zones", {}))

    @property
    def instruction(self) -> str:
        """The instruction being carried out."""
        return self._instruction

    @property
    def task_name(self) -> str:
        """The task the state comes from ('' on a real robot)."""
        return str(self.latest().get("task") or "")

    @property
    def backend_name(self) -> str:
        """The physics engine of the sim ('' on a real robot)."""
        return str(self.latest().get("backend") or "")

    @property
    def seed(self) -> Optional[int]:
        """The scene seed of the sim (None on a real robot)."""
        return self.latest().get("seed")

    @property
    def events(self) -> list:
        """Perturbation events (none are reported over ROS)."""
        return []

    def symbolic(self):
        """The current SymbolicState, rebuilt from the state topic."""
        return symbolic_from_dict(self.latest())

    def observe(self) -> str:
        """A text observation of the current scene for the LLM (with the task's rules and any broken)."""
        t = self.task()
        broken = [v.get("rule", "") for v in self.latest().get("violations") or [] if isinstance(v, dict)]
        return state_to_text(self.symbolic(), self._instruction, t.rules if t is not None else (), broken)

    def snapshot(self):
        """A marker of the current observation (a physical scene cannot be copied)."""
        return {"seq": self.latest().get("seq")}

    def restore(self, snap) -> None:
        """Cannot rewind the world: log it and carry on from the current scene."""
        self.log(f"restore requested (to seq {snap and snap.get('seq')}): a ROS scene cannot be restored; "
                 "continuing from the current state")

    # ---- task model (when the state names a task and seed) ---------------------------------------
    def task(self):
        """The registered task rebuilt for the state's seed, or None when the state names none."""
        d = self.latest()
        key = (d.get("task"), d.get("seed"))
        if key != self._task_key:
            self._task_key, self._task = key, None
            if key[0] and key[1] is not None:
                from taskweave.envs import get_task
                try:
                    t = get_task(key[0])
                    t.reset(int(key[1]))
                    self._task = t
                except (KeyError, ValueError):
                    self._task = None
        return self._task

    @property
    def goals(self) -> list:
        """The task's goal predicates ([] when unknown)."""
        t = self.task()
        return list(t.goals) if t is not None else []

    def oracle_plan(self) -> list:
        """The task oracle's skill calls from the current state (needs a known task)."""
        t = self.task()
        if t is None:
            raise RuntimeError("the state names no registered task, so there is no oracle plan")
        return list(t.oracle_plan(self.symbolic()))

    def progress(self) -> float:
        """Fraction of the goals met now (0.0 when nobody knows the goals)."""
        d = self.latest()
        if d.get("progress") is not None:
            return float(d["progress"])
        t = self.task()
        return float(t.progress(self.symbolic())) if t is not None else 0.0

    def is_success(self) -> bool:
        """Whether every goal holds now (False when nobody knows the goals)."""
        d = self.latest()
        if d.get("success") is not None:
            return bool(d["success"])
        t = self.task()
        return bool(t.success(self.symbolic())) if t is not None else False

    # ---- running skills ------------------------------------------------------------------------
    def execute(self, call: SkillCall) -> SkillResult:
        """Run one skill call to completion and report success or a failure reason."""
        call = call if isinstance(call, SkillCall) else SkillCall.parse(str(call))
        names = set(self.object_names) | set(self.zone_names)
        unknown = [a for a in call.objects() if a not in names]
        if unknown:
            return SkillResult(False, "invalid_args", f"{call}: unknown object or zone {unknown[0]!r}",
                               info={"call": str(call)})
        refused = precondition_failure(call, self.symbolic()) if self.kind == "policy" else None
        if refused is not None:   # the sim's skill loop refuses scripted requests itself
            refused.info["call"] = str(call)
            return refused
        result = self._scripted(call) if self.kind == "scripted" else self._policy(call)
        result.info.setdefault("call", str(call))
        return result

    def _scripted(self, call: SkillCall) -> SkillResult:
        link = self.link
        rid = uuid.uuid4().hex[:12]
        link.results_wait_ready()
        link.publish_request({"id": rid, "skill": str(call)})
        r = link.results.wait_for(lambda rs: rs.get(rid), self.skill_timeout, link.stop)
        if r is None:
            why = "interrupted" if link.stop.is_set() else f"no skill_result within {self.skill_timeout:g} s"
            return SkillResult(False, "timeout", f"{call}: {why}")
        # the scene after the skill: wait for a state published after the result
        link.state.wait_for(lambda d: not d.get("busy") and (d.get("seq") or 0) >= (r.get("seq") or 0),
                            2.0, link.stop)
        return SkillResult(bool(r.get("success")), r.get("failure"), str(r.get("message", "")),
                           int(r.get("steps") or 0))

    def _policy(self, call: SkillCall) -> SkillResult:
        link = self.link
        before = self.symbolic()
        seq0 = self.latest().get("seq")
        link.publish_current(str(call))
        t0 = time.monotonic()
        rule = PostconditionRule(call, settle=self.settle_ticks)
        seen, last_count, silent_since = 0, link.state.count, None
        done = getattr(link, "done", None)          # the policy's done head, when the link listens for it
        done_count, said_done = (done.count if done is not None else 0), None
        try:
            while True:
                if link.stop.is_set():
                    return SkillResult(False, "timeout", f"{call}: interrupted")
                now = time.monotonic()
                if now - t0 > self.skill_timeout:
                    return SkillResult(False, "timeout", f"{call}: postcondition not reached in "
                                                         f"{self.skill_timeout:g} s", self._ticks(seq0))
                d = link.state.wait_for(lambda v, c=last_count: link.state.count > c and v, 0.5, link.stop)
                if d is None:
                    continue
                last_count = link.state.count
                wd = (d.get("watchdog") or {}).get("state")
                if wd in ("idle", "stale") and now - t0 > 1.0:
                    silent_since = silent_since or now
                    if now - silent_since > POLICY_SILENT_S:
                        return SkillResult(False, "timeout", f"{call}: no arm commands for {POLICY_SILENT_S:g} s "
                                                             f"(watchdog {wd}); is the policy node running?",
                                           self._ticks(seq0))
                else:
                    silent_since = None
                ok = skill_succeeded(call, symbolic_from_dict(d), before)
                seen += 1
                if said_done is None and done is not None and done.count > done_count:
                    done_count = done.count
                    if (done.value or {}).get("skill") == str(call):
                        said_done = DONE_SETTLE_STATES
                elif said_done is not None:
                    said_done -= 1
                    if said_done <= 0:
                        return self._done_result(call, ok, seq0)
                tick = d["seq"] if isinstance(d.get("seq"), int) else seen   # control ticks, when the state says
                result = rule.update(ok, float(d["robot"][2]), tick)
                if result is not None:
                    result.steps = self._ticks(seq0)
                    return result
        finally:
            link.publish_current("")

    def _done_result(self, call: SkillCall, ok: bool, seq0) -> SkillResult:
        """The score of a skill the policy said is done: success iff its postcondition holds now."""
        if ok:
            return SkillResult(True, None, f"{call}: done by the policy", self._ticks(seq0))
        failure = "grasp_failed" if call.name == "pick" else "missed_target"
        return SkillResult(False, failure, f"{call}: the policy said done, but the postcondition does not hold",
                           self._ticks(seq0))

    def _ticks(self, seq0) -> int:
        seq = self.link.state.value.get("seq") if self.link.state.value else None
        return int(seq - seq0) if isinstance(seq, int) and isinstance(seq0, int) else 0


class ResultStore(Latest):
    """skill_result dicts by request id, with waiting (the `results` of a link)."""

    def __init__(self):
        super().__init__()
        self.value: dict = {}

    def add(self, d: dict) -> None:
        """Store one result and wake waiters."""
        with self._cond:
            self.value[d.get("id")] = d
            self.count += 1
            self._cond.notify_all()
