"""`taskweave demo`: the offline end-to-end demo (instruction -> planner -> controller -> video + trace)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from taskweave.sim.backend import BACKENDS


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave demo`."""
    p.add_argument("--task", default="StackTower")
    p.add_argument("--backend", default="mujoco", choices=BACKENDS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/demo", help="folder for demo.mp4 and trace.json")


def demo_main(args) -> int:
    """Run one oracle episode with video and trace (planner and policy join when available)."""
    from taskweave.envs import make_env
    from taskweave.envs.oracle import run_oracle_episode
    from taskweave.video import write_video

    os.makedirs(args.out, exist_ok=True)
    env = make_env(args.task, args.backend, control="skill")
    frames = []
    try:
        res = run_oracle_episode(env, args.seed, on_tick=lambda obs, a, call: frames.append(env.render()))
        frames.append(env.render())
        instruction = env.instruction
    finally:
        env.close()
    video = write_video(os.path.join(args.out, "demo.mp4"), frames)
    trace = {"task": args.task, "backend": args.backend, "instruction": instruction, **res}
    with open(os.path.join(args.out, "trace.json"), "w", encoding="utf-8") as f:
        json.dump(trace, f, indent=2)
    for s in res["skills"]:
        print(f"  {s}")
    print(f"{'success' if res['success'] else 'failure'}: {instruction!r}; video {video}", file=sys.stdout)
    return 0 if res["success"] else 1
