"""`taskweave eval`: the learned policy as the controller of each task's oracle skill sequence, or, with
`--planner NAME --llm SPEC`, end to end: a planner chooses the skills and the policy executes them."""
from __future__ import annotations

import argparse
import json

from taskweave.commands.common import (add_executor_arguments, add_llm_arguments, check_output_dir, llm_kwargs,
                                       make_executor_from_args, positive_int)
from taskweave.sim.errors import UserError

HELP = "evaluate a policy checkpoint as the skill controller"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave eval`."""
    from taskweave.policies.collect import SPLIT_SEED_BASE
    p.add_argument("--checkpoint", required=True, help="checkpoint file or training run folder")
    p.add_argument("--tasks", required=True, help="comma-separated task names, or 'all'")
    p.add_argument("--episodes", type=positive_int, default=50, help="episodes per task (default 50)")
    p.add_argument("--backend", default="mujoco", choices=("mujoco", "pybullet"))
    p.add_argument("--split", default="test", choices=tuple(SPLIT_SEED_BASE), help="seed range (held out: test)")
    p.add_argument("--num-envs", type=positive_int, default=8, help="envs stepped in lockstep with batched inference")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-ticks", type=positive_int, default=150, help="control ticks allowed per skill")
    p.add_argument("--inference-steps", type=positive_int, default=None, help="DDIM steps (default: the checkpoint's)")
    p.add_argument("--action-horizon", type=positive_int, default=None,
                   help="actions executed from each predicted chunk before replanning (default: the checkpoint's)")
    p.add_argument("--text-ablation", default="none", choices=("none", "constant", "shuffled"),
                   help="replace the skill language the policy is given: one constant text, or each object "
                        "swapped for another of its kind in the scene (default: none, as trained)")
    p.add_argument("--out", default=None, help="folder for eval.json, eval.md and videos")
    p.add_argument("--video", action="store_true", help="save the first episode of each task as a video")
    p.add_argument("--json", action="store_true")
    add_executor_arguments(p, 1)
    p.add_argument("--planner", default=None, help="end to end: this planner (tree, clea, iterative, openloop) "
                   "supplies the skills instead of the oracle, the policy executes them")
    add_llm_arguments(p, "llama:smollm2-135m", "the planner's LLM with --planner (default llama:smollm2-135m; "
                      "offline is the symbolic oracle, a control-flow test)")


def run(args) -> int:
    """Evaluate, write eval.json and eval.md under --out, and print the markdown (or the JSON summary)."""
    from taskweave.commands.collect import task_names
    from taskweave.policies.evaluate import evaluate, save_report, to_markdown

    tasks = task_names(args.tasks)
    if args.episodes < 1:
        raise UserError("--episodes must be at least 1")
    video_dir = (args.out or "out/eval") if args.video else None
    for folder in {args.out, video_dir} - {None}:
        check_output_dir(folder, "--out")   # before the episodes, not after them
    if args.planner:
        r = evaluate_with_planner(args, tasks)
        if args.out:
            save_report(r, args.out)
        print(json.dumps({k: v for k, v in r.items() if k != "tasks"}, indent=1) if args.json else to_markdown(r))
        return 0
    with make_executor_from_args(args) as executor:
        r = evaluate(args.checkpoint, tasks, args.episodes, args.backend, args.split, args.num_envs, args.device,
                     args.max_ticks, args.inference_steps, video_dir, action_horizon=args.action_horizon,
                     text_ablation=args.text_ablation, executor=executor)
    if args.out:
        save_report(r, args.out)
    print(json.dumps({k: v for k, v in r.items() if k != "tasks"}, indent=1) if args.json else to_markdown(r))
    return 0


# ---------------------------------------------------------------------------- end to end: planner + policy
def planner_episode_job(checkpoint: str, task: str, backend: str, seed: int, planner: str, llm: str,
                        opts: dict) -> dict:
    """One episode (a rollout executor job): the planner asks the LLM for skills, the policy executes each."""
    from taskweave.planning.episode import run_episode
    from taskweave.wiring import policy_executor

    done: list = []

    def factory(env):
        return _Noted(policy_executor(env, checkpoint, opts["device"], opts["max_ticks"]), env, done)

    rec = run_episode(task, planner, llm, backend, seed, executor_factory=factory,
                      llm_kwargs=opts["llm_kwargs"])
    return {"seed": seed, "success": bool(rec.success), "progress": float(rec.goal_condition_recall),
            "skills": done, "llm_calls": rec.llm_calls, "total_tokens": rec.total_tokens,
            "incomplete": bool(rec.incomplete), "error": rec.error}


class _Noted:
    """A SkillExecutor that notes each executed call with its skill text and result (the per-skill tables)."""

    def __init__(self, inner, env, log: list) -> None:
        self._inner, self._env, self._log = inner, env, log

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def execute(self, call):
        """Execute through the wrapped executor, noting the outcome."""
        from taskweave.sim.skill_types import SkillCall
        try:
            parsed = SkillCall.parse(call) if isinstance(call, str) else call
            text = self._env.skill_text(parsed)
        except Exception:  # noqa: BLE001 - a call the env cannot name: the executor reports it as it runs
            text = str(call)
        res = self._inner.execute(call)
        self._log.append({"call": str(call), "text": text, "success": bool(res.success), "failure": res.failure,
                          "ticks": res.steps})
        return res


def evaluate_with_planner(args, tasks: list) -> dict:
    """Per-task and per-skill success (Wilson intervals) with a planner supplying the skills to the policy."""
    import time

    from taskweave.envs import get_task
    from taskweave.planning import PLANNERS
    from taskweave.policies.collect import SPLIT_SEED_BASE
    from taskweave.policies.evaluate import summarise
    from taskweave.policies.runner import PolicyRunner

    if args.planner not in PLANNERS:
        raise UserError(f"--planner must be one of {', '.join(PLANNERS)}, got {args.planner!r}")
    runner = PolicyRunner.from_checkpoint(args.checkpoint, device="cpu")
    for t in tasks:
        get_task(t)
        runner.task_index(t)   # a task the checkpoint never saw is an error, never a silent task id 0
    opts = {"device": args.device, "max_ticks": args.max_ticks, "llm_kwargs": llm_kwargs(args)}
    base = SPLIT_SEED_BASE[args.split]
    jobs = [(args.checkpoint, t, args.backend, base + i, args.planner, args.llm, opts)
            for t in tasks for i in range(args.episodes)]
    t0 = time.perf_counter()
    with make_executor_from_args(args) as executor:
        rows = executor.map(planner_episode_job, jobs)
        where = executor.describe()
    per_task = {t: [r for j, r in zip(jobs, rows) if j[1] == t] for t in tasks}
    out = summarise(per_task, args.checkpoint, args.backend, args.split, time.perf_counter() - t0, args.device)
    out.update(planner=args.planner, llm=args.llm, skills_from="planner", executor=where,
               incomplete_episodes=sum(r["incomplete"] for r in rows))
    return out
