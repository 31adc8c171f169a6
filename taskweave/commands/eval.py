"""`taskweave eval`: the learned policy as the controller of each task's oracle skill sequence."""
from __future__ import annotations

import argparse
import json

from taskweave.commands.common import check_output_dir, positive_int
from taskweave.sim.errors import UserError

HELP = "evaluate a policy checkpoint as the skill controller"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave eval`."""
    from taskweave.policies.collect import SPLIT_SEED_BASE
    p.add_argument("--checkpoint", required=True, help="checkpoint file or training run folder")
    p.add_argument("--tasks", required=True, help="comma-separated task names, or 'all'")
    p.add_argument("--episodes", type=positive_int, default=20, help="episodes per task")
    p.add_argument("--backend", default="mujoco", choices=("mujoco", "pybullet"))
    p.add_argument("--split", default="test", choices=tuple(SPLIT_SEED_BASE), help="seed range (held out: test)")
    p.add_argument("--num-envs", type=positive_int, default=8, help="envs stepped in lockstep with batched inference")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-ticks", type=positive_int, default=150, help="control ticks allowed per skill")
    p.add_argument("--inference-steps", type=positive_int, default=None, help="DDIM steps (default: the checkpoint's)")
    p.add_argument("--action-horizon", type=positive_int, default=None,
                   help="actions executed from each predicted chunk before replanning (default: the checkpoint's)")
    p.add_argument("--out", default=None, help="folder for eval.json, eval.md and videos")
    p.add_argument("--video", action="store_true", help="save the first episode of each task as a video")
    p.add_argument("--json", action="store_true")


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
    r = evaluate(args.checkpoint, tasks, args.episodes, args.backend, args.split, args.num_envs, args.device,
                 args.max_ticks, args.inference_steps, video_dir, action_horizon=args.action_horizon)
    if args.out:
        save_report(r, args.out)
    print(json.dumps({k: v for k, v in r.items() if k != "tasks"}, indent=1) if args.json else to_markdown(r))
    return 0
