"""Evaluate the learned policy as the controller of each task's oracle skill sequence (`taskweave eval` runs it)."""
from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict

from tqdm import tqdm

from taskweave.envs.metrics import rate_cell, wilson_interval
from taskweave.envs.observation import POLICY_STATE_DIM
from taskweave.sim.fileio import atomic_write_text
from taskweave.policies.collect import SPLIT_SEED_BASE


def evaluate(checkpoint: str, tasks: list, episodes: int, backend: str = "mujoco", split: str = "test",
             num_envs: int = 8, device: str = "auto", max_ticks: int = 150, inference_steps=None,
             video_dir=None, progress: bool = True, action_horizon=None) -> dict:
    """Per-task and per-skill success of the policy over held-out seeds, with 95% Wilson intervals."""
    from taskweave.envs import get_task, make_env
    from taskweave.policies.controllers import run_policy_episodes
    from taskweave.policies.runner import PolicyRunner

    for t in tasks:
        get_task(t)
    n_env = max(1, min(num_envs, episodes))
    runner = PolicyRunner.from_checkpoint(checkpoint, num_envs=n_env, device=device,
                                          num_inference_steps=inference_steps, seed=0,
                                          action_horizon=action_horizon)
    task_ids = {t: runner.task_index(t) for t in tasks}   # a task the checkpoint never saw is an error, up front
    runner.check_state_size(POLICY_STATE_DIM)
    t0 = time.perf_counter()
    per_task = {}
    bar = tqdm(total=episodes * len(tasks), desc=f"eval [{backend}]", unit="ep", file=sys.stderr,
               disable=not progress or None)
    for task in tasks:
        envs = [make_env(task, backend, control="ee_delta") for _ in range(n_env)]
        tid = task_ids[task]
        rows, base = [], SPLIT_SEED_BASE[split]
        frames = [] if video_dir else None
        for start in range(0, episodes, n_env):
            seeds = [base + start + i for i in range(n_env)]
            res = run_policy_episodes(envs, seeds, runner, [tid] * n_env, max_ticks,
                                      frames=frames if start == 0 else None)
            rows += res[: episodes - start]
            bar.update(min(n_env, episodes - start))
        for e in envs:
            e.close()
        if video_dir and frames:
            from taskweave.sim.video import write_video
            write_video(os.path.join(video_dir, f"{task}.mp4"), frames)
        per_task[task] = rows
    bar.close()
    out = summarise(per_task, checkpoint, backend, split, time.perf_counter() - t0, runner.device)
    out["action_horizon"] = runner.action_horizon
    out["inference_steps"] = runner.num_inference_steps or runner.config.num_inference_steps
    return out


def summarise(per_task: dict, checkpoint: str, backend: str, split: str, wall: float, device) -> dict:
    """Success counts with intervals per task and per skill text."""
    tasks, skills = {}, defaultdict(lambda: [0, 0])
    for task, rows in per_task.items():
        k = sum(r["success"] for r in rows)
        lo, hi = wilson_interval(k, len(rows))
        sk = [s for r in rows for s in r["skills"]]
        ks = sum(s["success"] for s in sk)
        tasks[task] = {"episodes": len(rows), "successes": k, "success_rate": k / len(rows), "ci95": [lo, hi],
                       "skill_attempts": len(sk), "skill_successes": ks,
                       "skill_success_rate": ks / max(1, len(sk)), "seeds": [r["seed"] for r in rows],
                       "per_episode": rows}
        for s in sk:
            skills[s["text"]][0] += s["success"]
            skills[s["text"]][1] += 1
    per_skill = {t: {"successes": k, "attempts": n, "success_rate": k / n, "ci95": list(wilson_interval(k, n))}
                 for t, (k, n) in sorted(skills.items())}
    ka, na = skill_totals({"tasks": tasks})
    return {"checkpoint": checkpoint, "backend": backend, "split": split, "device": str(device),
            "wall_time": round(wall, 1), "tasks": tasks, "skills": per_skill,
            "overall_skill_success_rate": ka / max(1, na), "overall_skill_ci95": list(wilson_interval(ka, na)),
            "pc_success": 100.0 * sum(v["successes"] for v in tasks.values()) / max(1, sum(v["episodes"] for v in
                                                                                        tasks.values()))}


def skill_totals(r: dict) -> tuple:
    """(skill successes, skill attempts) over all tasks of an evaluation result."""
    return (sum(v["skill_successes"] for v in r["tasks"].values()),
            sum(v["skill_attempts"] for v in r["tasks"].values()))


def task_table(r: dict) -> list:
    """Markdown lines: episode and skill success with 95% intervals per task."""
    lines = ["| task | episode success [95% CI] | skill success [95% CI] |", "|---|---|---|"]
    for t, v in r["tasks"].items():
        lines.append(f"| {t} | {rate_cell(v['successes'], v['episodes'])} | "
                     f"{rate_cell(v['skill_successes'], v['skill_attempts'])} |")
    return lines


def skill_table(r: dict) -> list:
    """Markdown lines: success with 95% intervals per skill text."""
    lines = ["| skill | success [95% CI] |", "|---|---|"]
    for t, v in r["skills"].items():
        lines.append(f"| `{t}` | {rate_cell(v['successes'], v['attempts'])} |")
    return lines


def to_markdown(r: dict) -> str:
    """A markdown report of an evaluation."""
    lines = [f"Checkpoint `{r['checkpoint']}`, backend {r['backend']}, {r['split']} seeds, device {r['device']}, "
             f"{r['wall_time']} s.", "", *task_table(r), "", *skill_table(r)]
    lines += ["", f"Overall per-skill success: {r['overall_skill_success_rate']:.1%}; episode success "
              f"{r['pc_success']:.1f}%."]
    return "\n".join(lines)


def save_report(r: dict, out_dir: str) -> None:
    """Write out_dir/eval.json (the full result) and out_dir/eval.md (the markdown report), each atomically."""
    for name, text in (("eval.json", json.dumps(r, indent=1)), ("eval.md", to_markdown(r) + "\n")):
        atomic_write_text(os.path.join(out_dir, name), text)
