"""`taskweave demo`: the offline end-to-end demo (instruction -> TreePlanner -> controller -> video + trace)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from taskweave.sim.backend import BACKENDS


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave demo`."""
    p.add_argument("--task", default="BlockInBowl")
    p.add_argument("--backend", default="mujoco", choices=BACKENDS)
    p.add_argument("--seed", type=int, default=20_000_000, help="default: the first held-out test seed")
    p.add_argument("--planner", default="tree", choices=("tree", "clea", "iterative", "openloop"))
    p.add_argument("--checkpoint", default=None, help="policy checkpoint (default: the shipped small policy)")
    p.add_argument("--scripted", action="store_true", help="use the scripted skills even if a policy is present")
    p.add_argument("--instruction", default=None, help="override the task's instruction")
    p.add_argument("--out", default="out/demo", help="folder for demo.mp4 and trace.json")


def demo_main(args) -> int:
    """Plan with the offline LLM, execute with the learned policy (or scripted skills), save video + trace."""
    from taskweave.planning.executors import EnvSkillExecutor
    from taskweave.planning.runner import run_episode
    from taskweave.video import write_video
    from taskweave.wiring import policy_executor_factory, shipped_checkpoint

    ckpt = "" if args.scripted else (args.checkpoint or shipped_checkpoint())
    if args.checkpoint and not os.path.exists(args.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    frames: list = []
    events: list = []

    def factory(env):
        env.tick_callbacks.append(lambda e: frames.append(e.render()))
        return policy_executor_factory(env, ckpt) if ckpt else EnvSkillExecutor(env)

    def trace(ev: dict) -> None:
        events.append(ev)
        if ev.get("event") == "step" or ev.get("kind") == "step":
            print(f"  {ev.get('call', '')}  {'ok' if ev.get('success') else ev.get('failure', '')}", flush=True)

    controller = f"learned policy ({ckpt})" if ckpt else "scripted skills"
    print(f"taskweave demo: {args.task} on {args.backend}, planner {args.planner} with the offline LLM, "
          f"controller: {controller}", flush=True)
    rec = run_episode(args.task, planner=args.planner, llm_spec="offline", backend=args.backend, seed=args.seed,
                      executor_factory=factory, instruction=args.instruction, trace=trace)
    os.makedirs(args.out, exist_ok=True)
    video = write_video(os.path.join(args.out, "demo.mp4"), frames) if frames else None
    record = rec.to_dict()
    record["controller"] = controller
    record["video"] = video
    tmp = os.path.join(args.out, "trace.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"episode": record, "events": events}, f, indent=1, default=str)
    os.replace(tmp, os.path.join(args.out, "trace.json"))
    print(f"instruction: {rec.instruction!r}")
    print(f"{'success' if rec.success else 'failure'}; {len(rec.steps)} skills, {rec.corrections} corrections, "
          f"{rec.llm_calls} LLM calls; video {video}; trace {os.path.join(args.out, 'trace.json')}", file=sys.stdout)
    return 0  # the demo ran; whether the episode succeeded is part of its printed result
