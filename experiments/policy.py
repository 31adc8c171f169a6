"""Multitask diffusion policy on 6 tasks vs a single-task policy: writes docs/results/policy.md.

Each step runs a `taskweave` CLI command (printed and recorded in the report) and is skipped when
its output already exists, so the script can resume:

    python experiments/policy.py --work /work            # collect, train, evaluate, report
    python experiments/policy.py --work /work --report   # rebuild the report from existing outputs
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys

from taskweave.sim.fileio import atomic_write_text
from taskweave.envs.metrics import rate_cell
from taskweave.policies.evaluate import skill_table, skill_totals, task_table

TASKS = ["BlockInBowl", "PlaceInZone", "StackOnBlock", "PushToZone", "StackTower", "SortByColour"]
SINGLE = "StackTower"
CONFIG = "experiments/configs/policy_small_cpu.json"
LONG_STEPS = 40000  # optimiser steps of the headline multitask policy (CPU)
HORIZONS = (2, 4, 8)  # execution horizons compared on validation seeds (the config's is 8)


def long_ckpt(work: str) -> str:
    """The headline multitask checkpoint."""
    return os.path.join(work, "runs", "multi6", "checkpoints", f"step_{LONG_STEPS:07d}.pt")


def val_results(work: str) -> dict:
    """{horizon: (skill successes, skill attempts)} of the validation evaluations."""
    out = {}
    for h in HORIZONS:
        r = json.load(open(os.path.join(work, "eval", f"val_h{h}", "eval.json")))
        out[h] = skill_totals(r)
    return out


def chosen_horizon(work: str) -> int:
    """The horizon with the best validation per-skill success (ties: the longer, fewer replans)."""
    res = val_results(work)
    return max(HORIZONS, key=lambda h: (res[h][0] / max(1, res[h][1]), h))


def test_steps(work: str, eval_episodes: int, backend: str, horizon: int) -> list:
    """Held-out (test split) evaluations at the chosen horizon: the headline policy on all tasks, and the
    single-task policy trained as long on its task."""
    ev = os.path.join(work, "eval")
    single = os.path.join(work, "runs", "single", "checkpoints", f"step_{LONG_STEPS:07d}.pt")
    return [(f"{ev}/multi6/eval.json", ["taskweave", "eval", "--checkpoint", long_ckpt(work), "--tasks",
                                        ",".join(TASKS), "--episodes", str(eval_episodes), "--action-horizon",
                                        str(horizon), "--out", f"{ev}/multi6", "--backend", backend]),
            (f"{ev}/multi6_pybullet/eval.json", ["taskweave", "eval", "--checkpoint", long_ckpt(work), "--tasks",
                                                 ",".join(TASKS), "--episodes", str(eval_episodes), "--action-horizon",
                                                 str(horizon), "--out", f"{ev}/multi6_pybullet", "--backend",
                                                 "pybullet" if backend == "mujoco" else "mujoco"]),
            (f"{ev}/single_long/eval.json", ["taskweave", "eval", "--checkpoint", single, "--tasks", SINGLE,
                                             "--episodes", str(eval_episodes), "--action-horizon", str(horizon),
                                             "--out", f"{ev}/single_long", "--backend", backend])]


def steps(work: str, episodes: int, eval_episodes: int, backend: str) -> list:
    """(output that marks the step done, command) for every step of the experiment."""
    d, r = os.path.join(work, "data"), os.path.join(work, "runs")
    ev = os.path.join(work, "eval")
    common = ["--backend", backend]
    return [
        (f"{d}/multi6/meta.json", ["taskweave", "collect", "--tasks", ",".join(TASKS), "--episodes", str(episodes),
                                   "--val-episodes", str(max(1, episodes // 10)), "--out", f"{d}/multi6", "--workers", "2",
                                   *common]),
        (f"{d}/single/meta.json", ["taskweave", "collect", "--tasks", SINGLE, "--episodes", str(episodes),
                                   "--val-episodes", str(max(1, episodes // 10)), "--out", f"{d}/single", "--workers", "2",
                                   *common]),
        (f"{r}/multi6/checkpoints/last.pt", ["taskweave", "train", "--data", f"{d}/multi6", "--out", f"{r}/multi6",
                                             "--config", CONFIG, "--device", "cpu"]),
        (f"{r}/single/checkpoints/last.pt", ["taskweave", "train", "--data", f"{d}/single", "--out", f"{r}/single",
                                             "--config", CONFIG, "--device", "cpu"]),
        (f"{r}/multi6/checkpoints/step_0008000.pt", ["taskweave", "train", "--data", f"{d}/multi6", "--out",
                                                     f"{r}/multi6", "--config", CONFIG, "--device", "cpu",
                                                     "--steps", "8000", "--resume"]),
        (f"{r}/single/checkpoints/step_0008000.pt", ["taskweave", "train", "--data", f"{d}/single", "--out",
                                                     f"{r}/single", "--config", CONFIG, "--device", "cpu",
                                                     "--steps", "8000", "--resume"]),
        # the headline multitask policy: the same run, trained on to LONG_STEPS
        (f"{r}/multi6/checkpoints/step_{LONG_STEPS:07d}.pt", ["taskweave", "train", "--data", f"{d}/multi6", "--out",
                                                              f"{r}/multi6", "--config", CONFIG, "--device", "cpu",
                                                              "--steps", str(LONG_STEPS), "--resume"]),
        (f"{r}/single/checkpoints/step_{LONG_STEPS:07d}.pt", ["taskweave", "train", "--data", f"{d}/single", "--out",
                                                              f"{r}/single", "--config", CONFIG, "--device", "cpu",
                                                              "--steps", str(LONG_STEPS), "--resume"]),
        # multitask vs single-task at the same budget: both runs' 8000-step checkpoints
        (f"{ev}/multi6_8k/eval.json", ["taskweave", "eval", "--checkpoint",
                                       f"{r}/multi6/checkpoints/step_0008000.pt", "--tasks", SINGLE,
                                       "--episodes", str(eval_episodes), "--out", f"{ev}/multi6_8k", *common]),
        (f"{ev}/single/eval.json", ["taskweave", "eval", "--checkpoint", f"{r}/single/checkpoints/step_0008000.pt",
                                    "--tasks", SINGLE, "--episodes", str(eval_episodes), "--out", f"{ev}/single",
                                    *common]),
        # the execution horizon (actions run per predicted chunk) is chosen on validation seeds
        *[(f"{ev}/val_h{h}/eval.json", ["taskweave", "eval", "--checkpoint", long_ckpt(work), "--tasks",
                                        ",".join(TASKS), "--episodes", str(eval_episodes), "--split", "val",
                                        "--action-horizon", str(h), "--out", f"{ev}/val_h{h}", *common])
          for h in HORIZONS],
    ]


def report(work: str, plan: list, out: str, note: str) -> str:
    """Markdown from the evaluation JSONs (multitask per task/skill; multitask vs single-task)."""
    ev = os.path.join(work, "eval")
    multi = json.load(open(f"{ev}/multi6/eval.json"))
    single = json.load(open(f"{ev}/single/eval.json"))
    multi8 = json.load(open(f"{ev}/multi6_8k/eval.json"))
    cfg = json.load(open(os.path.join(work, "runs", "multi6", "config.json")))
    lines = ["# Multitask diffusion policy", "",
             f"State-based diffusion policy (ConditionalUnet1D, down dims {cfg.get('down_dims')}, "
             f"{LONG_STEPS} optimiser steps at batch {cfg.get('batch_size')}, DDIM-{cfg.get('num_inference_steps')} "
             f"sampling, EMA) trained with `taskweave train` from oracle demonstrations of {len(TASKS)} tasks on CPU "
             f"(no GPU was lent), evaluated with `taskweave eval` as the controller of each task's oracle skill "
             f"sequence on held-out test seeds (20,000,000 and up; training seeds start at 0, validation at "
             f"10,000,000). Backend: {multi['backend']}. {note}", "",
             f"## Multitask policy: per-task and per-skill success (test seeds, action horizon "
             f"{multi.get('action_horizon')})", "", *task_table(multi), "", *skill_table(multi)]
    ka, na = skill_totals(multi)
    lines += ["", f"Overall per-skill success: **{rate_cell(ka, na)}**.", "",
              "## Execution horizon, chosen on validation seeds", "",
              "Actions executed from each predicted 16-step chunk before the policy replans (receding horizon). "
              "Same checkpoint, validation seeds (10,000,000 and up), all six tasks; the best one is used on the "
              "test seeds above.", "",
              "| action horizon | per-skill success on validation [95% CI] |", "|---|---|"]
    for h, (k, n) in val_results(work).items():
        lines.append(f"| {h} | {rate_cell(k, n)} |")
    lines += ["",
              f"## Multitask vs single-task on {SINGLE}", "",
              f"Both policies saw the same {SINGLE} demonstrations (same seeds); the multitask one also saw the "
              f"other five tasks. Same model and config, and the same number of optimiser steps, compared at "
              f"two budgets (each run's 8000- and {LONG_STEPS}-step checkpoints); the multitask policy spends "
              f"about a sixth of its updates on {SINGLE}. Test seeds; action horizon 8 (the config's) at 8000 "
              f"steps, the validation-chosen {multi.get('action_horizon')} at {LONG_STEPS}.", "",
              "| policy | steps | episode success [95% CI] | skill success [95% CI] |", "|---|---|---|---|"]
    rows = [("multitask (6 tasks)", 8000, multi8), ("single-task", 8000, single),
            ("multitask (6 tasks)", LONG_STEPS, multi)]
    long_single = f"{ev}/single_long/eval.json"
    if os.path.exists(long_single):
        rows.append(("single-task", LONG_STEPS, json.load(open(long_single))))
    for name, n_steps, r in rows:
        v = r["tasks"][SINGLE]
        lines.append(f"| {name} | {n_steps} | {rate_cell(v['successes'], v['episodes'])} | "
                     f"{rate_cell(v['skill_successes'], v['skill_attempts'])} |")
    other = f"{ev}/multi6_pybullet/eval.json"
    if os.path.exists(other):
        o = json.load(open(other))
        lines += ["", f"## The same policy in the other engine ({o['backend']})", "",
                  f"Demonstrations and training in {multi['backend']}; the checkpoint above evaluated unchanged in "
                  f"{o['backend']} on the same test seeds (the scenes are built from the same specs).", "",
                  *skill_table(o)]
        ko, no = skill_totals(o)
        eo = sum(v["successes"] for v in o["tasks"].values())
        neo = sum(v["episodes"] for v in o["tasks"].values())
        lines += ["", f"Overall per-skill success in {o['backend']}: {rate_cell(ko, no)}; episodes {rate_cell(eo, neo)}."]
    lines += ["", "## Reproduce", "", "```bash"] + [shlex.join(c) for _, c in plan] + ["```", "",
              f"Written {datetime.date.today()} by `python experiments/policy.py`.", ""]
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "policy_notes.md")
    if os.path.exists(notes):  # hand-written reading of the results, kept next to the script
        with open(notes, encoding="utf-8") as f:
            lines += [f.read().rstrip(), ""]
    text = "\n".join(lines)
    atomic_write_text(out, text)
    return text


def main(argv=None) -> int:
    """Run the missing steps, then write the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/policy_experiment", help="folder for data, runs and evaluations")
    ap.add_argument("--episodes", type=int, default=60, help="train episodes per task")
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--backend", default="mujoco")
    ap.add_argument("--report", action="store_true", help="only rebuild the report")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default="docs/results/policy.md")
    ap.add_argument("--export", default="", help="also write the multitask policy here (e.g. the shipped asset)")
    args = ap.parse_args(argv)
    plan = steps(args.work, args.episodes, args.eval_episodes, args.backend)

    def run(todo):
        for marker, cmd in todo:
            if os.path.exists(marker):
                print(f"skip (done): {shlex.join(cmd)}")
                continue
            print(f"run: {shlex.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True)

    if not args.report:
        run(plan)
    horizon = chosen_horizon(args.work)
    print(f"action horizon chosen on validation: {horizon}")
    final = test_steps(args.work, args.eval_episodes, args.backend, horizon)
    plan += final
    if not args.report:
        run(final)
    if args.export:
        from taskweave.policies.diffusion.checkpoint import export_policy
        path = export_policy(long_ckpt(args.work), args.export, action_horizon=horizon)
        print(f"exported the multitask policy to {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    print(report(args.work, plan, args.out, args.note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
