"""Oracle success of every built-in task on both backends; writes docs/results/oracle.md.

    python experiments/oracle.py --seeds 20 --workers 2
    python experiments/oracle.py --seeds 20 --ray HOST:PORT      # on a Ray cluster
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from tqdm import tqdm

from taskweave.sim.fileio import atomic_write_text
from taskweave.sim.rollouts import make_executor
from taskweave.envs.metrics import rate_cell


def _one(task: str, backend: str, seeds: list) -> dict:
    from taskweave.envs import make_env
    from taskweave.envs.oracle import run_oracle_episode

    env = make_env(task, backend, control="skill")
    rows = [run_oracle_episode(env, s) for s in seeds]
    env.close()
    return {"task": task, "backend": backend, "episodes": rows}


def main(argv=None) -> int:
    """Run the oracle table and write markdown + JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=1000, help="seeds first-seed .. first-seed+seeds-1")
    ap.add_argument("--backends", default="mujoco,pybullet")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ray", default=None, metavar="ADDRESS", help="run on Ray: auto, HOST:PORT or local")
    ap.add_argument("--out", default="docs/results/oracle.md")
    args = ap.parse_args(argv)
    from taskweave.envs import TASKS
    tasks = sorted(TASKS) if args.tasks == "all" else args.tasks.split(",")
    backends = args.backends.split(",")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    t0 = time.time()
    results = []
    jobs = [(t, b, seeds) for b in backends for t in tasks]
    with make_executor(args.workers, args.ray) as ex:   # local workers end with this script, kill -9 included
        where = ex.describe()
        for _, r in tqdm(ex.imap_unordered(_one, jobs), total=len(jobs), desc="oracle", unit="task"):
            results.append(r)
    table = {(r["task"], r["backend"]): r for r in results}
    lines = ["# Oracle success on the built-in tasks", "",
             f"Scripted skills executing each task's oracle plan (re-planned from the symbolic state up to 3 times "
             f"after a failed skill), {args.seeds} seeds per task ({seeds[0]}..{seeds[-1]}), real contact physics.",
             "", f"Reproduce: `python experiments/oracle.py --seeds {args.seeds} --first-seed {args.first_seed}`", "",
             f"Measured {datetime.date.today()} on {platform.processor() or platform.machine()} "
             f"({os.cpu_count()} cores), {time.time() - t0:.0f} s wall on {where}.", "",
             "| task | skills (mean) | " + " | ".join(f"{b} success [95% CI]" for b in backends) + " |",
             "|---|---|" + "---|" * len(backends)]
    worst = 1.0
    for t in tasks:
        cells = []
        nsk = []
        for b in backends:
            eps = table[(t, b)]["episodes"]
            k = sum(e["success"] for e in eps)
            worst = min(worst, k / len(eps))
            cells.append(rate_cell(k, len(eps)))
            nsk += [len(e["skills"]) for e in eps]
        lines.append(f"| {t} | {sum(nsk) / len(nsk):.1f} | " + " | ".join(cells) + " |")
    lines += ["", f"Lowest per-task success: {worst:.0%}.", ""]
    fails = [(r["task"], r["backend"], e) for r in results for e in r["episodes"] if not e["success"]]
    if fails:
        lines += ["## Failed episodes", ""]
        for t, b, e in sorted(fails, key=lambda x: (x[0], x[1], x[2]["seed"])):
            why = e["failures"][-1]["message"] if e["failures"] else "goals not met after the plan"
            lines.append(f"- {t} [{b}] seed {e['seed']}: {why} (progress {e['progress']:.2f})")
        lines.append("")
    atomic_write_text(args.out, "\n".join(lines))
    atomic_write_text(os.path.splitext(args.out)[0] + ".json", json.dumps(results))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
