"""The learned policy as a skill controller, and batched evaluation episodes with the policy driving the arm.

Both run through the env's one skill loop (`taskweave.envs.skill_loop`): the policy chooses actions;
the loop checks the call, fires perturbations and counts the skill. Who ends a skill: a policy with a
done head ends it itself (the runner says the skill is over; the simulator's postcondition only scores
it then), the tick budget stays (`timeout`); a policy without one is ended by the loop's postcondition +
retreat rule. Robot-input policies see `robot_observation` (their cameras at their trained frame size,
proprio) and the skill's sentence; privileged ones the state vector, the skill text and the task id.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from taskweave.envs.observation import POLICY_STATE_DIM, robot_observation
from taskweave.envs.skill_loop import SkillRun
from taskweave.sim.skill_types import SkillResult

DEFAULT_MAX_TICKS = 150   # control ticks a policy gets for one skill before it times out


def skill_language(runner, env, call) -> str:
    """The skill as the runner's policy reads it: the sentence (robot inputs) or the abstract skill text."""
    return env.skill_sentence(call) if runner.robot else env.skill_text(call)


def policy_observation(runner, env, call) -> dict:
    """One env's observation as the runner's policy reads it (unbatched): robot frames + proprio, or the state."""
    if runner.robot:
        cfg = runner.config
        return robot_observation(env.backend, cfg.cameras, int(cfg.image_shape[0]))
    state = env.policy_state(call)
    runner.check_state_size(len(state))
    return {"state": state}


def done_result(run: SkillRun, source: str = "the policy") -> SkillResult:
    """The score of a skill its controller declared done: success iff the postcondition holds now."""
    if run.env.skill_succeeded(run.call, run.before):
        return SkillResult(True, None, f"{run.call}: done by {source}")
    failure = "grasp_failed" if run.call.name == "pick" else "missed_target"
    return SkillResult(False, failure, f"{run.call}: {source} said done, but the postcondition does not hold")


def timeout_result(run: SkillRun, source: str = "the policy") -> SkillResult:
    """The result of a skill that used up its tick budget."""
    return SkillResult(False, "timeout", f"{run.call}: {source} did not finish in {run.max_ticks} ticks")


class PolicyController:
    """A `SkillController` that drives one env with a PolicyRunner (num_envs=1) conditioned on the skill's language.

    With a done head the controller ends the skill when the runner says so (scored by the postcondition) or at
    max_ticks; without one, `postcondition` is True and the skill loop's PostconditionRule ends it.
    """

    def __init__(self, runner, task_id=0, max_ticks: int = DEFAULT_MAX_TICKS, name: str = "policy") -> None:
        self.runner, self.task_id, self.max_ticks, self.name = runner, task_id, int(max_ticks), name
        self.postcondition = not runner.has_done_head
        runner.check_state_size(POLICY_STATE_DIM)   # before any episode, not as a failed skill

    def start(self, run: SkillRun) -> None:
        """Flush the runner's history and action queue, and fix the skill's language for this run."""
        self.runner.reset([0])
        run.memo["text"] = skill_language(self.runner, run.env, run.call)
        run.memo["done"] = False

    def act(self, run: SkillRun):
        """The policy's next action for the run's env, or the skill's result once the policy said it is done."""
        if run.memo["done"]:
            return done_result(run, self.name)
        if run.ticks >= run.max_ticks:
            return timeout_result(run, self.name)
        obs = {k: np.asarray(v)[None] for k, v in policy_observation(self.runner, run.env, run.call).items()}
        tasks = None if self.runner.robot else [self.task_id]
        actions, done = self.runner.act_done(obs, [run.memo["text"]], tasks)
        run.memo["done"] = bool(done[0]) and self.runner.has_done_head
        return actions[0]


def ablated_text(runner, env, call, mode: str, rng: np.random.Generator) -> str:
    """The skill's language under a text ablation: 'none' (as trained), 'constant' (one fixed text for every
    skill), 'shuffled' (each object argument swapped for another of the scene's objects of its kind, at random)."""
    if mode == "none":
        return skill_language(runner, env, call)
    if mode == "constant":
        return CONSTANT_TEXT
    if mode != "shuffled":
        raise ValueError(f"text ablation must be one of {TEXT_ABLATIONS}, got {mode!r}")
    state = env.symbolic_state()
    kind = lambda name: ("zone" if name in state.zones else  # noqa: E731
                         "container" if state.objects[name].shape == "container" else "object")
    args = []
    for a in call.args:
        if isinstance(a, str) and (a in state.objects or a in state.zones):
            pool = [o for o in (*state.objects, *state.zones) if o != a and kind(o) == kind(a) and o not in call.args]
            a = pool[int(rng.integers(len(pool)))] if pool else a
        args.append(a)
    return skill_language(runner, env, type(call)(call.name, tuple(args)))


TEXT_ABLATIONS = ("none", "constant", "shuffled")
CONSTANT_TEXT = "do the task"


def run_policy_episodes(envs: Sequence, seeds: Sequence[int], runner, task_ids: Optional[Sequence],
                        max_ticks: int = DEFAULT_MAX_TICKS, frames: Optional[list] = None,
                        text_ablation: str = "none") -> list:
    """Run one episode per env in lockstep (batched inference): the oracle's plan, the policy as controller.

    A policy with a done head ends each skill itself (scored by the postcondition then) or times out at
    max_ticks; one without is ended by the skill loop's postcondition rule. text_ablation replaces the skill
    language the policy is given ('constant', 'shuffled': see `ablated_text`); records keep the true call.
    """
    n = len(envs)
    if runner.num_envs != n:
        raise ValueError(f"runner.num_envs ({runner.num_envs}) must equal the number of envs ({n})")
    if text_ablation not in TEXT_ABLATIONS:
        raise ValueError(f"text ablation must be one of {TEXT_ABLATIONS}, got {text_ablation!r}")
    own_done = runner.has_done_head
    plans, idx, runs, texts, out, rngs = [], [0] * n, [None] * n, [""] * n, [], []
    for env, seed in zip(envs, seeds):
        env.reset(seed=seed)
        plans.append(env.oracle_plan())
        out.append({"seed": int(seed), "skills": [], "success": False})
        rngs.append(np.random.default_rng([int(seed), 7]))
    runner.reset()
    active = [bool(p) for p in plans]

    def start(i):
        runs[i] = SkillRun(envs[i], plans[i][idx[i]], postcondition=not own_done, max_ticks=max_ticks,
                           controller="policy")
        texts[i] = ablated_text(runner, envs[i], runs[i].call, text_ablation, rngs[i]) if not runs[i].done else ""

    for i in range(n):
        if active[i]:
            start(i)
    blank = None
    while any(active):
        obs = [policy_observation(runner, envs[i], runs[i].call) if active[i] else None for i in range(n)]
        blank = blank or {k: np.zeros_like(v) for k, v in next(o for o in obs if o is not None).items()}
        obs = [o if o is not None else blank for o in obs]
        batch = {k: np.stack([o[k] for o in obs]) for k in blank}
        acts, done = runner.act_done(batch, [texts[i] if active[i] else "idle" for i in range(n)],
                                     None if runner.robot else list(task_ids))
        if frames is not None and active[0]:
            frames.append(envs[0].render())
        for i in range(n):
            if not active[i]:
                continue
            run = runs[i]
            res = run.result if run.done else run.step(acts[i])   # done: refused before any tick
            if res is None and own_done:   # the policy ends its skill; the postcondition only scores it
                if done[i]:
                    res = run.finish(done_result(run))
                elif run.ticks >= run.max_ticks:
                    res = run.finish(timeout_result(run))
            if res is None:
                continue
            out[i]["skills"].append({"call": str(run.call), "text": envs[i].skill_text(run.call),   # the skill kind
                                     "given_text": texts[i], "success": res.success,
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


__all__ = ["PolicyController", "run_policy_episodes", "DEFAULT_MAX_TICKS", "TEXT_ABLATIONS", "ablated_text",
           "skill_language", "policy_observation", "done_result", "timeout_result"]
