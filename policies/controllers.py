"""The learned policy as a skill controller, and batched evaluation episodes with the policy driving the arm.

Both run through the env's one skill loop (`taskweave.envs.skill_loop`): the policy only chooses
actions; the loop checks the call, fires perturbations, applies the postcondition + retreat rule and
counts the skill.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from taskweave.envs.observation import POLICY_STATE_DIM
from taskweave.envs.skill_loop import SkillRun

DEFAULT_MAX_TICKS = 150   # control ticks a policy gets for one skill before it times out


class PolicyController:
    """A `SkillController` that drives one env with a PolicyRunner (num_envs=1) conditioned on the skill's text."""

    postcondition = True   # the policy does not say when it is done: the skill loop's PostconditionRule does

    def __init__(self, runner, task_id=0, max_ticks: int = DEFAULT_MAX_TICKS, name: str = "policy") -> None:
        self.runner, self.task_id, self.max_ticks, self.name = runner, task_id, int(max_ticks), name
        runner.check_state_size(POLICY_STATE_DIM)   # before any episode, not as a failed skill

    def start(self, run: SkillRun) -> None:
        """Flush the runner's history and action queue, and fix the skill's language for this run."""
        self.runner.reset([0])
        run.memo["text"] = run.env.skill_text(run.call)

    def act(self, run: SkillRun) -> np.ndarray:
        """The policy's next action for the run's env."""
        state = run.env.policy_state(run.call)
        self.runner.check_state_size(len(state))
        return self.runner.act({"state": state[None]}, [run.memo["text"]], [self.task_id])[0]


def run_policy_episodes(envs: Sequence, seeds: Sequence[int], runner, task_ids: Sequence,
                        max_ticks: int = DEFAULT_MAX_TICKS, frames: Optional[list] = None) -> list:
    """Run one episode per env in lockstep (batched inference): the oracle's plan, the policy as controller."""
    n = len(envs)
    if runner.num_envs != n:
        raise ValueError(f"runner.num_envs ({runner.num_envs}) must equal the number of envs ({n})")
    plans, idx, runs, texts, out = [], [0] * n, [None] * n, [""] * n, []
    for env, seed in zip(envs, seeds):
        env.reset(seed=seed)
        plans.append(env.oracle_plan())
        out.append({"seed": int(seed), "skills": [], "success": False})
    runner.reset()
    active = [bool(p) for p in plans]

    def start(i):
        runs[i] = SkillRun(envs[i], plans[i][idx[i]], postcondition=True, max_ticks=max_ticks, controller="policy")
        texts[i] = envs[i].skill_text(runs[i].call)

    for i in range(n):
        if active[i]:
            start(i)
    dim = runner.config.state_dim
    while any(active):
        states = [envs[i].policy_state(runs[i].call) if active[i] else np.zeros(dim, np.float32) for i in range(n)]
        for s in states:
            runner.check_state_size(len(s))
        states = np.stack(states)
        acts = runner.act({"state": states}, [texts[i] if active[i] else "idle" for i in range(n)], list(task_ids))
        if frames is not None and active[0]:
            frames.append(envs[0].render())
        for i in range(n):
            if not active[i]:
                continue
            res = runs[i].result if runs[i].done else runs[i].step(acts[i])   # done: refused before any tick
            if res is None:
                continue
            out[i]["skills"].append({"call": str(runs[i].call), "text": texts[i], "success": res.success,
                                     "failure": res.failure, "ticks": res.steps})
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


__all__ = ["PolicyController", "run_policy_episodes", "DEFAULT_MAX_TICKS"]
