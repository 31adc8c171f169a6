"""Multitask vs single-task at equal data on robot inputs (the LBM question): writes docs/results/policy_multitask.md.

Arms, per training seed (default 0, 1, 2), on one dataset of robot-input demonstrations (front + wrist RGB,
proprio, MiniLM sentence; nothing privileged):
- multitask: one policy trained on every task's train episodes, for len(tasks) x --steps optimiser steps;
- single-task: one policy per task, trained on that task's train episodes alone (`taskweave train --tasks T`),
  for --steps steps each.
So both arms see the same demonstrations of each task, the same config, and the same expected number of
gradient updates per demonstration window (equal compute in total: 3 x S steps in either arm). Each policy is
evaluated on the same test seeds of its task(s) (`taskweave eval`, per-episode seeded sampling), and each
(training seed, task, test seed) is a pair: multitask vs that seed's single-task policy.

Every step is a `taskweave` command, skipped when its output exists (the script resumes); two lanes run at
once (the multitask runs in one, the single-task runs in the other: equal work per lane), each command with
OMP_NUM_THREADS=1:

    python experiments/policy_multitask.py --work /work/runs/issue12 --data robot64b            # train, eval, report
    python experiments/policy_multitask.py --work /work/runs/issue12 --data robot64b --report   # report only
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import threading

from taskweave.envs.metrics import rate_cell

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from policy_robot import first_skill, reach_probe, sign_test  # noqa: E402  (the sibling experiment's tests)
from taskweave.sim.fileio import atomic_write_json, atomic_write_text

TASKS = ["BlockInBowl", "PlaceInZone", "StackOnBlock"]
CONFIG = "experiments/configs/policy_robot_cpu.json"
SEEDS = (0, 1, 2)
STEPS = 2000            # --steps: per single-task policy; the multitask policy gets len(TASKS) x this
PROBE_TICKS = 30


def layout(work: str, steps: int) -> dict:
    """Where each run, its final checkpoint (the multitask run trains len(TASKS) x steps), its evaluation and the
    reach probe live; arm is 'multi' or a task name."""
    root = os.path.join(work, f"multitask_vs_single_{steps}")
    run = lambda arm, s: os.path.join(root, "runs", f"{arm}_s{s}")   # noqa: E731
    final = lambda arm: steps * len(TASKS) if arm == "multi" else steps   # noqa: E731
    return {"root": root, "run": run, "final": final,
            "ckpt": lambda arm, s: os.path.join(run(arm, s), "checkpoints", f"step_{final(arm):07d}.pt"),
            "eval": lambda arm, s: os.path.join(root, "eval", f"{arm}_s{s}"),
            "probe": os.path.join(root, "reach_probe.json")}


def load_results(L: dict) -> tuple:
    """({'<arm>_s<seed>': eval.json} of every policy, the reach probe rows or {})."""
    evals = {f"{arm}_s{s}": json.load(open(os.path.join(L["eval"](arm, s), "eval.json")))
             for s in SEEDS for arm in ["multi", *TASKS]}
    return evals, (json.load(open(L["probe"])) if os.path.exists(L["probe"]) else {})


def lanes(work: str, data: str, steps: int, eval_episodes: int, backend: str) -> list:
    """Two lists of (output marking the step done, command): the multitask lane and the single-task lane."""
    L = layout(work, steps)
    multi, single = [], []
    train = ["taskweave", "train", "--data", data, "--config", CONFIG, "--device", "cpu", "--no-progress"]
    ev = ["--backend", backend, "--device", "cpu", "--num-envs", "8", "--episodes", str(eval_episodes)]
    for s in SEEDS:
        multi.append((L["ckpt"]("multi", s), [*train, "--out", L["run"]("multi", s), "--steps", str(L["final"]("multi")),
                                              "--seed", str(s)]))
        for t in TASKS:
            single.append((L["ckpt"](t, s), [*train, "--out", L["run"](t, s), "--steps", str(steps), "--seed", str(s),
                                             "--tasks", t]))
    for s in SEEDS:   # evaluations after the training of that lane (the final checkpoint of each run)
        for arm, tasks, lane in (("multi", TASKS, multi), *((t, [t], single) for t in TASKS)):
            lane.append((os.path.join(L["eval"](arm, s), "eval.json"),
                         ["taskweave", "eval", "--checkpoint", L["ckpt"](arm, s), "--tasks", ",".join(tasks), *ev,
                          "--out", L["eval"](arm, s)]))
    return [multi, single]


def run_lane(lane: list, log_path: str, failures: list) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for done, cmd in lane:
        if os.path.exists(done):
            continue
        resume = cmd[1] == "train" and os.path.exists(os.path.join(cmd[cmd.index("--out") + 1], "checkpoints", "last.pt"))
        full = cmd + (["--resume"] if resume else [])
        with open(log_path, "a") as log:
            log.write(f"$ {shlex.join(full)}\n")
            log.flush()
            rc = subprocess.call(full, stdout=log, stderr=subprocess.STDOUT, env=env)
        if rc != 0 or not os.path.exists(done):
            failures.append(f"{shlex.join(full)} (exit {rc}, see {log_path})")
            return


def probe_all(work: str, steps: int, eval_episodes: int, backend: str) -> dict:
    """The reach probe (policy_robot.reach_probe) of every policy on the first eval_episodes test seeds."""
    from taskweave.policies.collect import SPLIT_SEED_BASE

    L = layout(work, steps)
    out = json.load(open(L["probe"])) if os.path.exists(L["probe"]) else {}
    seeds = [SPLIT_SEED_BASE["test"] + i for i in range(eval_episodes)]
    for s in SEEDS:
        for t in TASKS:
            for arm, ckpt in (("multi", L["ckpt"]("multi", s)), ("single", L["ckpt"](t, s))):
                key = f"{arm}/s{s}/{t}"
                if key not in out and os.path.exists(ckpt):
                    out[key] = reach_probe(ckpt, t, seeds, "none", PROBE_TICKS, backend)
                    atomic_write_json(L["probe"], out, indent=1)
    return out


def wilcoxon(diffs: list) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences, zeros dropped (scipy is not a dependency):
    exact for n <= 50 (the permutation distribution over the 2^n sign patterns of the average ranks, ties
    included), else the normal approximation with the tie correction and no continuity correction (as
    scipy.stats.wilcoxon's default; below 51 scipy uses the exact table only without ties)."""
    nz = sorted((d for d in diffs if d != 0), key=abs)
    n = len(nz)
    if n < 2:
        return 1.0
    ranks, i = [0.0] * n, 0
    while i < n:   # average ranks over runs of equal |d|
        j = i
        while j + 1 < n and abs(nz[j + 1]) == abs(nz[i]):
            j += 1
        ranks[i:j + 1] = [(i + j) / 2 + 1] * (j - i + 1)
        i = j + 1
    plus = sum(r for r, d in zip(ranks, nz) if d > 0)
    if n <= 50:   # exact: every sign pattern over these (possibly tied) ranks, in half-rank units
        half = [int(2 * r) for r in ranks]
        counts = [1] + [0] * sum(half)   # counts[k]: sign patterns whose positive half-ranks sum to k
        for h in half:
            for k in range(len(counts) - 1, h - 1, -1):
                counts[k] += counts[k - h]
        t = min(int(2 * plus), sum(half) - int(2 * plus))
        return min(1.0, 2 * sum(counts[:t + 1]) / 2 ** n)
    mean = n * (n + 1) / 4
    ties = {}
    for r in ranks:
        ties[r] = ties.get(r, 0) + 1
    var = n * (n + 1) * (2 * n + 1) / 24 - sum(c ** 3 - c for c in ties.values()) / 48
    return math.erfc(abs(plus - mean) / math.sqrt(var) / math.sqrt(2))


def report(work: str, data: str, steps: int, eval_episodes: int, plan_cmds: list, note: str, evals: dict,
           probe: dict) -> str:
    L = layout(work, steps)
    multi = {s: evals[f"multi_s{s}"] for s in SEEDS}
    single = {(t, s): evals[f"{t}_s{s}"] for s in SEEDS for t in TASKS}
    base = multi[SEEDS[0]]
    info = {arm: json.load(open(os.path.join(L["run"](arm, SEEDS[0]), "run_info.json"))) for arm in ["multi", *TASKS]}
    walls = {}
    for arm in ["multi", *TASKS]:
        for s in SEEDS:
            m = [json.loads(x) for x in open(os.path.join(L["run"](arm, s), "metrics.jsonl"))]
            walls.setdefault(arm, []).append(m[-1]["time"] - m[0]["time"])
    cfg = json.load(open(CONFIG))
    lines = ["# Multitask vs single-task at equal data, robot inputs", "",
             f"Generated {datetime.date.today().isoformat()} by `python experiments/policy_multitask.py --work {work} "
             f"--data {os.path.relpath(data, work) if data.startswith(work) else data} --steps {steps} "
             f"--eval-episodes {eval_episodes}`.", "",
             "## Protocol", "",
             f"- Inputs (both arms): `policy_inputs` = `{base['policy_inputs']}`, `privileged` = "
             f"**{str(base['privileged']).lower()}**; training labels `{base['training_labels']}` (the `aux:*` "
             "offsets supervise a training-only head, never an input). Config `" + CONFIG + "` "
             f"(vision width {cfg['vision_width']}, {cfg.get('vision_stages', 4)} stages, text FiLM, batch "
             f"{cfg['batch_size']}, lr {cfg['lr']}, cosine with {cfg['warmup_steps']} warm-up steps), only "
             "`--steps`, `--seed` and `--tasks` differ.",
             f"- Data: the same {info['multi']['num_train_episodes']} train episodes "
             f"({', '.join(t + ' ' + str(info[t]['num_train_episodes']) for t in TASKS)}), collected by the oracle "
             "in MuJoCo with 64-px front and wrist frames. A single-task policy trains on its task's episodes "
             "only (`taskweave train --tasks T`, which also takes its normaliser statistics and validation "
             "windows from them).",
             f"- Budget: each single-task policy {steps} optimiser steps, the multitask policy "
             f"{steps * len(TASKS)}: each demonstration window gets the same expected number of gradient "
             "updates in either arm, and each arm spends the same compute in total. Final checkpoint (EMA) of "
             "every run, no checkpoint selection.",
             f"- Training seeds {', '.join(map(str, SEEDS))} (weights, noise, data order); wall time per run on one "
             f"core of the 2-core CPU: multitask {sum(walls['multi']) / len(SEEDS) / 60:.0f} min, single-task "
             f"{sum(sum(walls[t]) for t in TASKS) / len(SEEDS) / len(TASKS) / 60:.0f} min.",
             f"- Evaluation: MuJoCo test seeds, {eval_episodes} episodes per task, the same seeds for every "
             "policy (per-episode seeded sampling), oracle skill sequence given as sentences, the done head ends "
             "each skill, 150-tick timeout per skill.",
             "", "## Results", "",
             "| task | training seed | multitask: skills | single-task: skills | multitask: episodes | "
             "single-task: episodes |", "|---|---|---|---|---|---|"]
    tot = {"m": [0, 0, 0, 0], "s": [0, 0, 0, 0]}
    for t in TASKS:
        for s in SEEDS:
            m, g = multi[s]["tasks"][t], single[(t, s)]["tasks"][t]
            for key, v in (("m", m), ("s", g)):
                tot[key] = [a + b for a, b in zip(tot[key], (v["skill_successes"], v["skill_attempts"],
                                                             v["successes"], v["episodes"]))]
            lines.append(f"| {t} | {s} | {rate_cell(m['skill_successes'], m['skill_attempts'])} | "
                         f"{rate_cell(g['skill_successes'], g['skill_attempts'])} | "
                         f"{rate_cell(m['successes'], m['episodes'])} | {rate_cell(g['successes'], g['episodes'])} |")
    lines.append(f"| **all** | {len(SEEDS)} seeds | {rate_cell(*tot['m'][:2])} | {rate_cell(*tot['s'][:2])} | "
                 f"{rate_cell(*tot['m'][2:])} | {rate_cell(*tot['s'][2:])} |")
    # paired tests over (seed, task, test seed)
    wins = losses = ew = el = 0
    prog = []
    for t in TASKS:
        for s in SEEDS:
            for a, b in zip(multi[s]["tasks"][t]["per_episode"], single[(t, s)]["tasks"][t]["per_episode"]):
                assert a["seed"] == b["seed"], "both arms must run the same test seeds"
                wins += first_skill(a) and not first_skill(b)
                losses += first_skill(b) and not first_skill(a)
                ew += a["success"] and not b["success"]
                el += b["success"] and not a["success"]
                prog.append(a["progress"] - b["progress"])
    n_pairs = len(prog)
    lines += ["", f"Paired over the same (training seed, task, test seed), {n_pairs} pairs; sign test over the "
              "discordant pairs, Wilcoxon signed-rank on the differences.", "",
              "| measure | multitask only / better | single-task only / better | p |", "|---|---|---|---|",
              f"| first skill (pick) succeeds | {wins} | {losses} | {sign_test(wins, losses):.3g} |",
              f"| episode succeeds | {ew} | {el} | {sign_test(ew, el):.3g} |",
              f"| episode progress (goal fraction) | {sum(d > 0 for d in prog)} | {sum(d < 0 for d in prog)} | "
              f"{wilcoxon(prog):.3g} |"]
    if probe:
        d = []
        near = {"multi": [0, 0], "single": [0, 0]}
        for t in TASKS:
            for s in SEEDS:
                a, b = probe.get(f"multi/s{s}/{t}"), probe.get(f"single/s{s}/{t}")
                if not a or not b:
                    continue
                for x, y in zip(a, b):
                    d.append(y["named_dist"] - x["named_dist"])   # > 0: multitask closer
                    near["multi"][0] += x["nearest_named"]
                    near["single"][0] += y["nearest_named"]
                    near["multi"][1] += 1
                    near["single"][1] += 1
        if d:
            lines += [f"| reach probe: XY distance TCP - named block after {PROBE_TICKS} ticks | "
                      f"{sum(v > 0 for v in d)} | {sum(v < 0 for v in d)} | {wilcoxon(d):.3g} |", "",
                      f"Reach probe ({len(d)} pairs): TCP nearest the named block, multitask "
                      f"{rate_cell(*near['multi'])}, single-task {rate_cell(*near['single'])}; mean distance "
                      f"difference (single - multi) {100 * sum(d) / len(d):+.1f} cm."]
    def probe_cell(arm: str, s: int) -> str:
        rows = [r for t in TASKS for r in probe.get(f"{arm}/s{s}/{t}", [])]
        if not rows:
            return "-"
        return (f"{rate_cell(sum(r['nearest_named'] for r in rows), len(rows))}, "
                f"{100 * sum(r['named_dist'] for r in rows) / len(rows):.1f} cm")

    per_seed = []
    for s in SEEDS:
        ms = sum(multi[s]["tasks"][t]["skill_successes"] for t in TASKS) / max(1, sum(multi[s]["tasks"][t]["skill_attempts"] for t in TASKS))
        ss = sum(single[(t, s)]["tasks"][t]["skill_successes"] for t in TASKS) / max(
            1, sum(single[(t, s)]["tasks"][t]["skill_attempts"] for t in TASKS))
        per_seed.append((s, ms, ss))
    lines += ["", "Per training seed, over the three tasks (the spread between seeds): per-skill success, and the reach "
              "probe (TCP nearest the named block; mean XY distance to it):", "",
              "| training seed | multitask: skills | single-task: skills | multitask: probe | single-task: probe |",
              "|---|---|---|---|---|",
              *[f"| {s} | {100 * a:.0f}% | {100 * b:.0f}% | {probe_cell('multi', s)} | {probe_cell('single', s)} |"
                for s, a, b in per_seed],
              "", "Final validation loss and sampled-chunk action MSE (normalised units, EMA weights) of every run: the "
              "multitask run's over the val episodes of all three tasks, a single-task run's over its task's (the "
              "actions are normalised by each run's own statistics).", "",
              "| run | " + " | ".join(f"seed {s}: val loss / action MSE" for s in SEEDS) + " |",
              "|---|" + "---|" * len(SEEDS),
              *[f"| {arm} | " + " | ".join(
                  (lambda v: f"{v['val_loss']:.3f} / {v['val_action_mse']:.3f}")(
                      json.loads(open(os.path.join(L["run"](arm, s), "val_metrics.jsonl")).read().splitlines()[-1]))
                  for s in SEEDS) + " |" for arm in ["multi", *TASKS]],
              "", "## Reading", "", note, "", "## Reproduce", "", "```bash",
              *[f"OMP_NUM_THREADS=1 {shlex.join(c)}" for c in plan_cmds], "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    global TASKS, CONFIG, SEEDS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="folder of the dataset and of this experiment's runs")
    ap.add_argument("--data", default="robot64b", help="robot-input dataset folder under --work (or a path)")
    ap.add_argument("--steps", type=int, default=STEPS, help="optimiser steps per single-task policy")
    ap.add_argument("--eval-episodes", type=int, default=50, help="test episodes per task")
    ap.add_argument("--probe-episodes", type=int, default=50, help="test seeds per task for the reach probe (0: none)")
    ap.add_argument("--backend", default="mujoco")
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="training seeds")
    ap.add_argument("--report", action="store_true", help="only rebuild the report")
    ap.add_argument("--note", default="", help="the reading paragraph of the report")
    ap.add_argument("--out", default="docs/results/policy_multitask.md")
    args = ap.parse_args(argv)
    TASKS, CONFIG = args.tasks.split(","), args.config
    SEEDS = tuple(int(s) for s in args.seeds.split(","))
    data = args.data if os.path.isabs(args.data) else os.path.join(args.work, args.data)
    if not os.path.exists(os.path.join(data, "meta.json")):
        print(f"error: {data}: no dataset (meta.json); collect one with experiments/policy_robot.py", file=sys.stderr)
        return 2
    plan = lanes(args.work, data, args.steps, args.eval_episodes, args.backend)
    L = layout(args.work, args.steps)
    os.makedirs(L["root"], exist_ok=True)
    if not args.report:
        failures: list = []
        threads = [threading.Thread(target=run_lane, args=(lane, os.path.join(L["root"], f"lane{i}.log"), failures))
                   for i, lane in enumerate(plan)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if failures:
            print("error: " + "; ".join(failures), file=sys.stderr)
            return 1
        if args.probe_episodes:
            probe_all(args.work, args.steps, args.probe_episodes, args.backend)
    evals, probe = load_results(L)
    text = report(args.work, data, args.steps, args.eval_episodes, [c for lane in plan for _, c in lane], args.note,
                  evals, probe)
    atomic_write_text(args.out, text)
    raw = os.path.splitext(args.out)[0] + ".json"   # the per-episode rows behind the tables, for re-analysis
    atomic_write_json(raw, {"evals": evals, "reach_probe": probe}, indent=None, separators=(",", ":"))
    print(f"wrote {args.out} and {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
