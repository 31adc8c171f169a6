"""`taskweave plan`: run one planner episode on a task, with a per-step trace and a summary.

Exit code (with --json too; the record is printed either way): 0 the episode succeeded, 1 it failed, 2 bad
input, 3 it could not complete (an LLM request or the executor failed: the record's `incomplete`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from taskweave.commands.common import (add_llm_arguments, check_output_file, episode_exit_code, llm_kwargs,
                                       nonblank_text, positive_int, seed_int)
from taskweave.planning.episode import EpisodeRecord, run_episode
from taskweave.planning.llm.constraints import CONSTRAIN_MODES
from taskweave.planning.registry import PLANNERS
from taskweave.planning.tree_planner import DECIDE_MODES
from taskweave.sim.errors import UserError
from taskweave.sim.fileio import atomic_write_text

HELP = "Run an LLM planner on a task: per-step trace, then a summary (or the episode record with --json)."
DEFAULT_LLM = "llama:smollm2-135m"
LLM_HELP = "llama:smollm2-135m|gemma3-270m|PATH.gguf | openai:MODEL | replay:FILE | offline (the symbolic oracle)"


def describe_llm(spec: str) -> str:
    """What an --llm spec is, in a few words (the offline backend says it is no language model)."""
    kind = (spec or "").split(":", 1)[0]
    return {"llama": "a local language model, embedded with llama.cpp",
            "openai": "an OpenAI-compatible server",
            "replay": "recorded answers replayed from a file",
            "offline": "the symbolic oracle: NOT a language model, it answers from the task's true state "
                       "(control-flow tests only)"}.get(kind, "unknown backend")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `taskweave plan`."""
    parser.add_argument("--task", required=True, help="task name (see `taskweave tasks`)")
    parser.add_argument("--planner", default="tree", choices=PLANNERS)
    add_llm_arguments(parser, DEFAULT_LLM, f"{LLM_HELP} (default: {DEFAULT_LLM})")
    parser.add_argument("--constrain", default="grammar", choices=CONSTRAIN_MODES,
                        help="grammar: constrain every reply (plans, options, verdicts, JSON) where the backend can; "
                             "none: free decoding")
    parser.add_argument("--executor", default="scripted", help="scripted | policy:CKPT")
    parser.add_argument("--perturb", default="", help="e.g. move:$goal0@1,knock@3,grasp_fail:1.0@0")
    parser.add_argument("--instruction", type=nonblank_text, default=None, help="override the task's instruction")
    parser.add_argument("--backend", default="mujoco", help="physics engine: mujoco | pybullet")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--json", action="store_true", help="print the episode record as JSON (trace to stderr)")
    parser.add_argument("--out", default=None, help="also write the episode record as JSON to this file")
    parser.add_argument("--samples", type=positive_int, default=None, help="tree: plans sampled (default 50)")
    parser.add_argument("--votes", type=positive_int, default=None, help="tree: votes per decision (default 20); "
                                                                "clea: critic votes (default 5)")
    parser.add_argument("--threshold", type=float, default=None, help="clea: critic threshold tau (default 0.5)")
    parser.add_argument("--backtrack", default=None, choices=("physical", "restore"),
                        help="tree: physical (default; no simulator undo, the next choice is grounded on the real "
                             "state) or restore (privileged simulator undo, counted in the record)")
    parser.add_argument("--decide", default=None, choices=DECIDE_MODES,
                        help="tree: decide branch points by k sampled votes (default), by the option letters' "
                             "log-probabilities in one forward pass (llama backend), auto, or permuted (the letter "
                             "scores averaged over every cyclic order of the options: k passes, no letter bias), or "
                             "majority (no call: the child most sampled plans go through)")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="skill budget (default 40)")


def _planner_kwargs(args) -> dict:
    kw = {"constrain": args.constrain}
    if args.max_steps is not None:
        kw["max_steps"] = args.max_steps
    if args.planner == "tree":
        if args.samples is not None:
            kw["n_samples"] = args.samples
        if args.votes is not None:
            kw["n_votes"] = args.votes
        if getattr(args, "backtrack", None) is not None:
            kw["backtrack"] = args.backtrack
        if getattr(args, "decide", None) is not None:
            kw["decide"] = args.decide
    if args.planner == "clea":
        if args.votes is not None:
            kw["critic_votes"] = args.votes
        if args.threshold is not None:
            kw["threshold"] = args.threshold
    return kw


_llm_kwargs = llm_kwargs   # (the name tests and older callers use)


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
        how = (f"votes {ev['votes']}" if "votes" in ev else f"plans through each {ev['plans']}" if "plans" in ev else
               f"log-probabilities {ev.get('logprobs')}" + (f" over {ev['permutations']} orders"
                                                            if ev.get("permutations") else ""))
        return f"       decided {ev['chosen']} among {len(ev['options'])} options, {how}"
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


def executor_factory(spec: str):
    """The env -> SkillExecutor factory for an --executor value: None for scripted, the policy for policy:CKPT."""
    kind, _, ckpt = (spec or "scripted").partition(":")
    if kind == "scripted" and not ckpt:
        return None
    if kind != "policy":
        raise UserError(f"unknown executor {spec!r} (scripted | policy:CKPT)")
    if not ckpt:
        raise UserError("--executor policy:CKPT needs a checkpoint path")
    if not os.path.exists(ckpt):
        raise UserError(f"--executor {spec}: checkpoint not found: {ckpt}")
    from taskweave.wiring import policy_executor
    return lambda env: policy_executor(env, ckpt)


def run(args) -> int:
    """Run `taskweave plan`: one episode with a per-step trace and a summary (the record as JSON with --json)."""
    factory = executor_factory(args.executor)
    llm_options = llm_kwargs(args)
    if args.out:
        check_output_file(args.out)   # before the episode, not after it
    out = sys.stderr if args.json else sys.stdout

    def trace(ev):
        """Print one trace line per episode event."""
        line = format_event(ev)
        if line is not None:
            print(line, file=out, flush=True)

    print(f"[{args.planner}] {args.task} seed {args.seed} on {args.backend}, llm {args.llm} ({describe_llm(args.llm)}), "
          f"executor {args.executor}"
          + (f", perturbations {args.perturb}" if args.perturb else ""), file=out)
    rec = run_episode(args.task, args.planner, llm_spec=args.llm, backend=args.backend, seed=args.seed,
                      perturb=args.perturb, executor_factory=factory, instruction=args.instruction, trace=trace,
                      planner_kwargs=_planner_kwargs(args), llm_kwargs=llm_options)
    if args.out:
        atomic_write_text(args.out, rec.to_json(indent=2))
    if args.json:
        print(rec.to_json(indent=2))
    else:
        for line in summary_lines(rec):
            print(line)
    return episode_exit_code(rec)   # 0 success, 1 the task failed, 3 the run could not complete (LLM, executor)
