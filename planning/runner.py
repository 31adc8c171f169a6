"""Run one planning episode on a task (`run_episode`) and the `taskweave plan` command behind it.

Perturbation specs are the env's (`move:red_block@2,knock@3,remove@1,grasp_fail:0.5@0`), plus
placeholders resolved against the episode's goals after reset, since object names depend on the seed:
`$goal` / `$goalN` is the first argument of goal N (0-based), `$baseN` its second argument.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Callable, Optional

from taskweave.planning import PLANNERS, make_planner
from taskweave.planning.episode import EpisodeRecord
from taskweave.planning.executors import EnvSkillExecutor
from taskweave.planning.llm import make_llm

ExecutorFactory = Callable[..., object]
_POLICY_EXECUTOR_FACTORY: Optional[ExecutorFactory] = None
_PLACEHOLDER = re.compile(r"\$(goal|base)(\d*)")


def set_policy_executor_factory(factory: Optional[ExecutorFactory]) -> None:
    """Register `factory(env, checkpoint) -> SkillExecutor` for `taskweave plan --executor policy:CKPT`."""
    global _POLICY_EXECUTOR_FACTORY
    _POLICY_EXECUTOR_FACTORY = factory


def resolve_perturbations(spec: str, goals: list) -> str:
    """Replace $goalN / $baseN placeholders in a perturbation spec with the episode's object names."""
    def sub(m):
        """The name a placeholder stands for."""
        i = int(m.group(2) or 0)
        if i >= len(goals):
            raise ValueError(f"perturbation {spec!r} names goal {i}, but the task has {len(goals)} goal(s)")
        args = [a for a in goals[i].args if isinstance(a, str)]
        k = 0 if m.group(1) == "goal" else 1
        if k >= len(args):
            raise ValueError(f"perturbation {spec!r}: goal {goals[i]} has no {'base' if k else 'object'} argument")
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
    planner = make_planner(planner, **(planner_kwargs or {})) if isinstance(planner, str) else planner
    own_llm = llm is None
    if own_llm:
        kw = dict(llm_kwargs or {})
        if llm_spec.split(":", 1)[0] == "offline":
            kw.setdefault("seed", seed)
        llm = make_llm(llm_spec, **kw)
    env = make_env(task, backend, control="skill")
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


# ---------------------------------------------------------------- the `taskweave plan` command

def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `taskweave plan` options to a parser."""
    parser.add_argument("--task", required=True, help="task name (see `taskweave tasks`)")
    parser.add_argument("--planner", default="tree", choices=PLANNERS)
    parser.add_argument("--llm", default="offline", help="offline[:RATES] | openai:MODEL | replay:FILE")
    parser.add_argument("--executor", default="scripted", help="scripted | policy:CKPT")
    parser.add_argument("--perturb", default="", help="e.g. move:$goal0@1,knock@3,grasp_fail:1.0@0")
    parser.add_argument("--instruction", default=None, help="override the task's instruction")
    parser.add_argument("--backend", default="mujoco", help="physics engine: mujoco | pybullet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the episode record as JSON (trace to stderr)")
    parser.add_argument("--out", default=None, help="also write the episode record as JSON to this file")
    parser.add_argument("--samples", type=int, default=None, help="tree: plans sampled (default 50)")
    parser.add_argument("--votes", type=int, default=None, help="tree: votes per decision (default 20); "
                                                                "clea: critic votes (default 5)")
    parser.add_argument("--threshold", type=float, default=None, help="clea: critic threshold tau (default 0.5)")
    parser.add_argument("--max-steps", type=int, default=None, help="skill budget (default 40)")


def _planner_kwargs(args) -> dict:
    kw = {}
    if args.max_steps is not None:
        kw["max_steps"] = args.max_steps
    if args.planner == "tree":
        if args.samples is not None:
            kw["n_samples"] = args.samples
        if args.votes is not None:
            kw["n_votes"] = args.votes
    if args.planner == "clea":
        if args.votes is not None:
            kw["critic_votes"] = args.votes
        if args.threshold is not None:
            kw["threshold"] = args.threshold
    return kw


def format_event(ev: dict) -> Optional[str]:
    """One trace line for an episode event (None for events not worth a line)."""
    kind = ev.get("event")
    if kind == "start":
        return f"instruction: {ev['instruction']}"
    if kind == "step":
        status = "ok" if ev["success"] else f"FAILED {ev['failure']}: {ev['message']}"
        flag = " (correction)" if ev.get("correction") else ""
        return f"  {ev['i']:>3}. {ev['call']:<42} {status}  [{ev.get('source', '')}]{flag}"
    if kind == "llm":
        return f"       llm {ev['tag']} x{ev['n']} ({ev['tokens']} tokens)"
    if kind == "decide":
        return f"       decided {ev['chosen']} among {len(ev['options'])} options, votes {ev['votes']}"
    if kind == "subgoal":
        return f"       subgoal: {ev['subgoal']} -> {', '.join(ev['actions'])}"
    if kind == "critic":
        p = "unreadable" if ev["p"] is None else f"{ev['p']:.2f}"
        return f"       critic on {ev['action']}: p={p}"
    if kind in ("note", "error"):
        return f"     {'!' if kind == 'error' else '*'} {ev['text']}"
    return None


def summary_lines(rec: EpisodeRecord) -> list:
    """A human-readable summary of an episode record."""
    ex = rec.extra
    return [f"success: {rec.success}   goal-condition recall: {rec.goal_condition_recall:.2f}   "
            f"executability: {rec.executability:.2f}",
            f"skills: {len(rec.steps)}   failures: {rec.failures}   corrections: {rec.corrections}   "
            f"malformed replies: {ex.get('malformed_replies', 0)}",
            f"LLM calls: {rec.llm_calls}   tokens: {rec.prompt_tokens} prompt + {rec.completion_tokens} completion "
            f"= {rec.total_tokens}   wall time: {rec.wall_time:.1f} s",
            *([f"perturbation events: {'; '.join(ex['events'])}"] if ex.get("events") else []),
            *([f"error: {rec.error}"] if rec.error else [])]


def plan_main(args, executor_factory: Optional[ExecutorFactory] = None) -> int:
    """Run `taskweave plan`: one episode with a per-step trace and a summary (the record as JSON with --json).

    For `--executor policy:CKPT`, executor_factory(env, checkpoint) -> SkillExecutor comes from this
    argument, else `args.executor_factory`, else `set_policy_executor_factory`; with none, exit code 2.
    """
    kind, _, ckpt = (args.executor or "scripted").partition(":")
    env_factory = None
    if kind == "policy":
        factory = executor_factory or getattr(args, "executor_factory", None) or _POLICY_EXECUTOR_FACTORY
        if not ckpt:
            print("taskweave plan: error: --executor policy:CKPT needs a checkpoint path", file=sys.stderr)
            return 2
        if factory is None:
            print("taskweave plan: error: --executor policy:CKPT needs the learned-policy executor, which is not "
                  "wired into this install (no executor_factory); use --executor scripted", file=sys.stderr)
            return 2
        env_factory = lambda env: factory(env, ckpt)   # noqa: E731
    elif kind != "scripted":
        print(f"taskweave plan: error: unknown executor {args.executor!r} (scripted | policy:CKPT)", file=sys.stderr)
        return 2
    out = sys.stderr if args.json else sys.stdout

    def trace(ev):
        """Print one trace line per episode event."""
        line = format_event(ev)
        if line is not None:
            print(line, file=out, flush=True)

    print(f"[{args.planner}] {args.task} seed {args.seed} on {args.backend}, llm {args.llm}, executor {args.executor}"
          + (f", perturbations {args.perturb}" if args.perturb else ""), file=out)
    rec = run_episode(args.task, args.planner, llm_spec=args.llm, backend=args.backend, seed=args.seed,
                      perturb=args.perturb, executor_factory=env_factory, instruction=args.instruction, trace=trace,
                      planner_kwargs=_planner_kwargs(args))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(rec.to_json(indent=2))
    if args.json:
        print(rec.to_json(indent=2))
    else:
        for line in summary_lines(rec):
            print(line)
    return 0


def main(argv=None) -> int:
    """Stand-alone entry point: `python -m taskweave.planning.runner --task ... --planner ...`."""
    p = argparse.ArgumentParser(prog="taskweave plan", description=plan_main.__doc__)
    add_plan_arguments(p)
    return plan_main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
