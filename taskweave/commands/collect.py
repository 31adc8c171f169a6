"""`taskweave collect`: record successful oracle demonstrations into a zarr dataset (resumable)."""
from __future__ import annotations

import argparse
import os

from taskweave.commands.common import (add_executor_arguments, check_output_dir, make_executor_from_args,
                                       nonnegative_int, positive_int)
from taskweave.sim.errors import UserError

HELP = "record oracle demonstrations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave collect`."""
    p.add_argument("--tasks", required=True, help="comma-separated task names, or 'all'")
    p.add_argument("--episodes", type=positive_int, required=True, help="successful train episodes per task")
    p.add_argument("--val-episodes", type=positive_int, default=None, help="per task (default: episodes // 10)")
    p.add_argument("--test-episodes", type=nonnegative_int, default=0, help="per task, stored for reference")
    p.add_argument("--backend", default="mujoco", choices=("mujoco", "pybullet"))
    p.add_argument("--out", required=True, help="dataset folder (reopened and resumed if it exists)")
    p.add_argument("--rgb", type=positive_int, default=0, metavar="SIZE",
                   help="also record SIZExSIZE RGB frames (default: none)")
    p.add_argument("--obs", default="state", choices=("state", "robot"),
                   help="state (default): the privileged state vector of the baseline policies (object and target "
                        "poses from the simulator); robot: also what a robot senses, front and wrist camera frames "
                        "and proprioception per tick, with each skill named by its sentence")
    p.add_argument("--image-size", type=positive_int, default=64, metavar="SIZE",
                   help="square size of the --obs robot camera frames (default 64, the CPU choice)")
    add_executor_arguments(p, min(4, os.cpu_count() or 1))


def task_names(spec: str) -> list:
    """The task names of a --tasks value: comma-separated names, or 'all' for every registered task."""
    from taskweave.envs import TASKS
    return sorted(TASKS) if spec == "all" else [t.strip() for t in spec.split(",") if t.strip()]


def run(args) -> int:
    """Collect the demonstrations and print one summary line."""
    from taskweave.policies.collect import collect

    tasks = task_names(args.tasks)
    if args.episodes < 1:
        raise UserError("--episodes must be at least 1")
    check_output_dir(args.out)   # before any worker starts
    with make_executor_from_args(args) as executor:
        stats = collect(tasks, args.episodes, args.backend, args.out, args.val_episodes, args.test_episodes,
                        args.rgb, obs=args.obs, image_size=args.image_size, executor=executor)
    print(f"kept {stats['kept']} new episodes ({stats['failed']} failed oracle runs discarded, "
          f"{stats['skipped_existing']} already present); dataset {args.out} has {stats['episodes']} episodes; "
          f"ran on {stats['executor']}; meta: {stats['meta']}")
    return 0
