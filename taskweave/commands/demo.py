"""`taskweave demo`: the offline end-to-end demo (instruction -> TreePlanner -> controller -> video + trace).

Exit code: 0 the episode succeeded, 1 it failed, 2 bad input, 3 it could not complete (LLM or executor)."""
from __future__ import annotations

import argparse
import os
import sys

from taskweave.commands.common import (add_llm_arguments, check_output_dir, episode_exit_code, llm_kwargs,
                                       nonblank_text, seed_int)
from taskweave.commands.plan import DEFAULT_LLM, LLM_HELP, describe_llm
from taskweave.planning.llm.constraints import CONSTRAIN_MODES
from taskweave.planning.tree_planner import DECIDE_MODES
from taskweave.sim.backend import BACKENDS
from taskweave.sim.errors import UserError
from taskweave.sim.fileio import atomic_write_json

HELP = ("The end-to-end demo: instruction -> planner -> controller (the shipped policy or scripted skills) -> "
        "demo.mp4 + trace.json.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave demo`."""
    p.add_argument("--task", default="BlockInBowl")
    p.add_argument("--backend", default="mujoco", choices=BACKENDS)
    p.add_argument("--seed", type=seed_int, default=20_000_000, help="default: the first held-out test seed")
    p.add_argument("--planner", default="tree", choices=("tree", "clea", "iterative", "openloop"))
    p.add_argument("--checkpoint", default=None, help="policy checkpoint (default: the shipped policy of --policy)")
    p.add_argument("--policy", default="state", choices=("state", "rgb"),
                   help="which shipped policy runs the skills: state (default; privileged: reads object poses) or "
                        "rgb (front + wrist camera, proprio and the skill sentence; no simulator ground truth)")
    p.add_argument("--scripted", action="store_true", help="use the scripted skills even if a policy is present")
    p.add_argument("--instruction", type=nonblank_text, default=None, help="override the task's instruction")
    add_llm_arguments(p, DEFAULT_LLM, f"{LLM_HELP} (default: {DEFAULT_LLM}, embedded, no network)")
    p.add_argument("--constrain", default="grammar", choices=CONSTRAIN_MODES,
                   help="constrain replies to the scene's skill grammar where the backend can (default grammar)")
    p.add_argument("--decide", default="majority", choices=DECIDE_MODES,
                   help="tree: how branch points are decided (default majority: the child most sampled plans go "
                        "through; with SmolLM2-135M it matched k votes on the 8-task benchmark at half the tokens, "
                        "and its k votes carry little about the options: see the README and "
                        "docs/results/planning_smollm2-135m_majority.md); votes is the paper's")
    p.add_argument("--out", default="out/demo", help="folder for demo.mp4 and trace.json")


def run(args) -> int:
    """Plan with the LLM (a real local model by default), execute with the learned policy (or scripted skills),
    save video + trace."""
    from taskweave.planning.episode import run_episode
    from taskweave.planning.executors import EnvSkillExecutor
    from taskweave.sim.video import write_video
    from taskweave.wiring import policy_executor, shipped_checkpoint

    ckpt = "" if args.scripted else (args.checkpoint or shipped_checkpoint(args.policy))
    if not args.scripted and not args.checkpoint and not ckpt:
        if args.policy != "state":
            raise UserError(f"no shipped {args.policy} policy in this install; pass --checkpoint or --scripted")
        print("taskweave demo: no shipped state policy in this install: running the scripted skills", flush=True)
    if args.checkpoint and not os.path.exists(args.checkpoint):
        raise UserError(f"checkpoint not found: {args.checkpoint}")
    llm_options = llm_kwargs(args)
    check_output_dir(args.out)   # before the episode, not after it
    frames: list = []
    events: list = []

    def factory(env):
        env.tick_callbacks.append(lambda e: frames.append(e.render()))
        return policy_executor(env, ckpt) if ckpt else EnvSkillExecutor(env)

    def trace(ev: dict) -> None:
        events.append(ev)
        if ev.get("event") == "step" or ev.get("kind") == "step":
            print(f"  {ev.get('call', '')}  {'ok' if ev.get('success') else ev.get('failure', '')}", flush=True)

    controller = f"learned policy ({ckpt})" if ckpt else "scripted skills"
    planner = f"{args.planner} (--decide {args.decide})" if args.planner == "tree" else args.planner
    print(f"taskweave demo: {args.task} on {args.backend}, planner {planner}, llm {args.llm} "
          f"({describe_llm(args.llm)}), controller: {controller}", flush=True)
    rec = run_episode(args.task, planner=args.planner, llm_spec=args.llm, backend=args.backend, seed=args.seed,
                      executor_factory=factory, instruction=args.instruction, trace=trace,
                      planner_kwargs={"constrain": args.constrain,
                                      **({"decide": args.decide} if args.planner == "tree" else {})},
                      llm_kwargs=llm_options)
    os.makedirs(args.out, exist_ok=True)
    video = write_video(os.path.join(args.out, "demo.mp4"), frames) if frames else None
    record = rec.to_dict()
    record["controller"] = controller
    record["video"] = video
    atomic_write_json(os.path.join(args.out, "trace.json"), {"episode": record, "events": events}, indent=1,
                      default=str)
    print(f"instruction: {rec.instruction!r}")
    print(f"{'success' if rec.success else 'failure'}; {len(rec.steps)} skills, {rec.corrections} corrections, "
          f"{rec.llm_calls} LLM calls; video {video}; trace {os.path.join(args.out, 'trace.json')}", file=sys.stdout)
    return episode_exit_code(rec)   # 0 success, 1 the task failed, 3 the run could not complete
