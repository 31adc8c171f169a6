"""Executing skills with the learned policy: one skill on one env, and batched evaluation episodes."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from taskweave.sim.skill_types import SkillCall, SkillResult

RETREAT_Z = 0.1      # after a place/push/rotate the arm lifts clear before the next skill
RETREAT_TICKS = 12


class SkillTracker:
    """Follows one skill on one env: postcondition, retreat after release, tick budget."""

    def __init__(self, env, call: SkillCall, max_ticks: int) -> None:
        self.env, self.call, self.max_ticks = env, call, max_ticks
        env.before_skill()
        self.before = env.symbolic_state()
        self.text = env.skill_text(call)
        self.ticks = 0
        self.done_at: Optional[int] = None
        self.result: Optional[SkillResult] = None

    def state(self, dim: Optional[int] = None) -> np.ndarray:
        """The policy's state vector for this skill now (its first dim entries when given)."""
        return self.env.policy_state(self.call)[:dim]

    def step(self, action) -> Optional[SkillResult]:
        """Apply one action; return the result once the skill is over."""
        env = self.env
        env.apply_action(action)
        self.ticks += 1
        if self.done_at is None and env.skill_succeeded(self.call, self.before):
            self.done_at = self.ticks
        if self.done_at is not None:
            ee_z = float(env.backend.ee_pose()[0][2])
            if self.call.name == "pick" or ee_z > RETREAT_Z or self.ticks - self.done_at >= RETREAT_TICKS:
                if env.skill_succeeded(self.call, self.before):
                    self.result = SkillResult(True, None, f"{self.call}: done by the policy", self.ticks)
                else:
                    self.result = SkillResult(False, "missed_target", f"{self.call}: undone while retreating",
                                              self.ticks)
        elif self.ticks >= self.max_ticks:
            self.result = SkillResult(False, "timeout", f"{self.call}: policy did not finish in {self.max_ticks} "
                                      f"ticks", self.ticks)
        if self.result is not None:
            self.result.info["call"] = str(self.call)
        return self.result


class PolicySkillExecutor:
    """Runs skill calls on an env with a PolicyRunner as the controller (planners hand it to their executor)."""

    def __init__(self, runner, task_id=0, max_ticks: int = 150) -> None:
        self.runner, self.task_id, self.max_ticks = runner, task_id, max_ticks

    def __call__(self, env, call: SkillCall) -> SkillResult:
        """Execute one already-validated skill call with the policy (the caller counts skills)."""
        tr = SkillTracker(env, call, self.max_ticks)
        self.runner.reset([0])
        while True:
            a = self.runner.act({"state": tr.state(self.runner.config.state_dim)[None]}, [tr.text],
                                [self.task_id])[0]
            res = tr.step(a)
            if res is not None:
                return res


def run_policy_episodes(envs: Sequence, seeds: Sequence[int], runner, task_ids: Sequence, max_ticks: int = 150,
                        frames: Optional[list] = None) -> list:
    """Run one episode per env in lockstep (batched inference): the oracle's plan, the policy as controller."""
    n = len(envs)
    assert runner.num_envs == n, "runner.num_envs must equal the number of envs"
    plans, idx, trackers, out = [], [0] * n, [None] * n, []
    for env, seed in zip(envs, seeds):
        env.reset(seed=seed)
        plans.append(env.oracle_plan())
        out.append({"seed": int(seed), "skills": [], "success": False})
    runner.reset()
    active = [bool(p) for p in plans]

    def start(i):
        trackers[i] = SkillTracker(envs[i], plans[i][idx[i]], max_ticks)

    for i in range(n):
        if active[i]:
            start(i)
    dim = runner.config.state_dim
    while any(active):
        states = np.stack([trackers[i].state(dim) if active[i] else np.zeros(dim, np.float32) for i in range(n)])
        texts = [trackers[i].text if active[i] else "idle" for i in range(n)]
        acts = runner.act({"state": states}, texts, list(task_ids))
        if frames is not None and active[0]:
            frames.append(envs[0].render())
        for i in range(n):
            if not active[i]:
                continue
            res = trackers[i].step(acts[i])
            if res is None:
                continue
            out[i]["skills"].append({"call": str(trackers[i].call), "text": trackers[i].text,
                                     "success": res.success, "failure": res.failure, "ticks": res.steps})
            idx[i] += 1
            if not res.success or idx[i] >= len(plans[i]):
                active[i] = False
                runner.reset([i])
            else:
                start(i)
    for i, env in enumerate(envs):
        out[i]["success"] = bool(env.is_success())
        out[i]["progress"] = float(env.progress())
    return out
