"""`taskweave rollout`: run the oracle on a task for N episodes, print the success rate.

Exit code: 0 every episode succeeded, 1 at least one failed, 2 bad input, 3 the run could not complete."""
from __future__ import annotations

import argparse
import json
import sys
import time

from tqdm import tqdm

from taskweave.commands.common import (EXIT_FAILED, EXIT_OK, add_executor_arguments, check_output_file,
                                       make_executor_from_args, positive_int, seed_int)
from taskweave.envs import get_task, make_env
from taskweave.envs.oracle import run_oracle_episode
from taskweave.sim.backend import BACKENDS
from taskweave.sim.errors import UserError


HELP = "Run the oracle (scripted skills) on a task for N episodes with a progress bar; print the success rate."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave rollout`."""
    p.add_argument("--task", required=True, help="task name (see `taskweave tasks`)")
    p.add_argument("--backend", default="mujoco", choices=BACKENDS)
    p.add_argument("--episodes", type=positive_int, default=10)
    p.add_argument("--seed", type=seed_int, default=0, help="first seed; episode i uses seed + i")
    p.add_argument("--video", default=None, help="write the first episode as a video (mp4 or gif)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    add_executor_arguments(p, 1)


_ENVS: dict = {}   # per process: one env per (task, backend), reused by the episodes it runs


def episode_job(task: str, backend: str, seed: int, video: bool) -> tuple:
    """One oracle episode in this process (a rollout executor job): (result, frames or None)."""
    env = _ENVS.get((task, backend))
    if env is None:
        env = _ENVS[(task, backend)] = make_env(task, backend, control="skill")
    frames = [] if video else None
    tick = (lambda obs, a, call: frames.append(env.render())) if video else None
    res = run_oracle_episode(env, seed, on_tick=tick)
    if video:
        frames.append(env.render())
    return res, frames


def run(args) -> int:
    """Run oracle episodes with a progress bar; print text or JSON; exit 0 when every episode succeeded, else 1."""
    if args.episodes < 1:
        raise UserError("--episodes must be at least 1")
    if args.video:
        check_output_file(args.video, "--video")   # before the episodes, not after them
    get_task(args.task)   # an unknown name fails before any worker starts
    jobs = [(args.task, args.backend, args.seed + i, args.video is not None and i == 0) for i in range(args.episodes)]
    results, frames = [None] * len(jobs), []
    t0 = time.perf_counter()
    with make_executor_from_args(args) as executor:
        try:
            for i, (res, fr) in tqdm(executor.imap_unordered(episode_job, jobs), total=len(jobs),
                                     desc=f"{args.task} [{args.backend}]", unit="ep", file=sys.stderr, disable=None):
                results[i] = res
                frames = fr or frames
        finally:
            for env in _ENVS.values():   # the inline executor's envs (workers' end with them)
                env.close()
            _ENVS.clear()
    if args.video:
        from taskweave.sim.video import write_video
        write_video(args.video, frames, fps=10)
    n_ok = sum(r["success"] for r in results)
    summary = {"task": args.task, "backend": args.backend, "episodes": len(results), "successes": n_ok,
               "success_rate": n_ok / len(results),
               "mean_progress": sum(r["progress"] for r in results) / len(results),
               "wall_time": round(time.perf_counter() - t0, 2), "video": args.video,
               "executor": executor.describe(), "per_episode": results}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for r in results:
            status = "ok  " if r["success"] else "FAIL"
            why = "" if r["success"] or not r["failures"] else f"  ({r['failures'][-1]['message']})"
            print(f"seed {r['seed']:>4}  {status} progress {r['progress']:.2f}  skills {len(r['skills'])}{why}")
        print(f"success rate {summary['success_rate']:.1%} ({n_ok}/{len(results)}) on {args.task} [{args.backend}]"
              + (f"; video: {args.video}" if args.video else ""))
    return EXIT_OK if n_ok == len(results) else EXIT_FAILED   # a failed episode: the task failed
