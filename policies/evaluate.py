"""Evaluate the learned policy as the controller of each task's oracle skill sequence (`taskweave eval` runs it)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np
from tqdm import tqdm

from taskweave.envs.metrics import rate_cell, wilson_interval
from taskweave.envs.observation import POLICY_STATE_DIM
from taskweave.sim.errors import UserError
from taskweave.sim.fileio import atomic_write_text
from taskweave.policies.collect import SPLIT_SEED_BASE
from taskweave.policies.diffusion.configuration import policy_inputs


EPISODES = 50          # episodes per task by default (issue 12: enough for a Wilson interval to mean something)
_CACHE: dict = {}      # per process (a worker's, or this one inline): loaded policies and envs, reused by jobs


def evaluate(checkpoint: str, tasks: list, episodes: int = EPISODES, backend: str = "mujoco", split: str = "test",
             num_envs: int = 8, device: str = "auto", max_ticks: int = 150, inference_steps=None,
             video_dir=None, progress: bool = True, action_horizon=None, text_ablation: str = "none",
             executor=None, workers: int = 1) -> dict:
    """Per-task and per-skill success of the policy over held-out seeds, with 95% Wilson intervals.

    Robot-input checkpoints run in robot-mode envs (their cameras and frame size); text_ablation 'constant' or
    'shuffled' replaces the skill language the policy is given (`controllers.ablated_text`).
    Episodes run as jobs of up to num_envs envs in lockstep (batched inference), through `executor`
    (`taskweave.sim.rollouts`; default `make_executor(workers)`); the sampling noise of each episode comes from
    its own generator seeded by the episode's seed, so results depend neither on the task order nor on the
    executor or its worker count (they do on num_envs only through floating-point rounding in a batch)."""
    from taskweave.envs import get_task
    from taskweave.policies.runner import PolicyRunner
    from taskweave.sim.rollouts import make_executor

    if split not in SPLIT_SEED_BASE:
        raise UserError(f"split must be one of {', '.join(SPLIT_SEED_BASE)}, got {split!r}")
    for t in tasks:
        get_task(t)   # an unknown name is an error (UnknownTaskError), before any episode
    n_env = max(1, min(num_envs, episodes))
    runner = PolicyRunner.from_checkpoint(checkpoint, num_envs=1, device=device, num_inference_steps=inference_steps,
                                          seed=0, action_horizon=action_horizon)
    for t in tasks:
        runner.task_index(t)   # a task the checkpoint never saw is an error, up front (never a silent id 0)
    runner.check_state_size(POLICY_STATE_DIM)
    cfg = runner.config   # what the policy sees decides the envs' observations
    env_kw = dict(obs_mode="robot", image_size=int(cfg.image_shape[0]), cameras=cfg.cameras) if runner.robot else {}
    opts = {"device": device, "inference_steps": inference_steps, "action_horizon": action_horizon,
            "max_ticks": max_ticks, "text_ablation": text_ablation, "env_kw": env_kw}
    base = SPLIT_SEED_BASE[split]
    jobs = [(checkpoint, task, backend, [base + i for i in range(start, min(episodes, start + n_env))], opts,
             bool(video_dir) and start == 0) for task in tasks for start in range(0, episodes, n_env)]
    own = executor is None
    executor = make_executor(workers) if own else executor
    t0 = time.perf_counter()
    results = [None] * len(jobs)
    bar = tqdm(total=episodes * len(tasks), desc=f"eval [{backend}]", unit="ep", file=sys.stderr,
               disable=not progress or None)
    try:
        for i, res in executor.imap_unordered(eval_job, jobs):
            results[i] = res
            bar.update(len(res["rows"]))
    finally:
        bar.close()
        if own:
            executor.close()
            if executor.kind == "inline":
                release_cache()   # a caller's own inline executor keeps the envs and policy for its next call
    per_task = {task: [] for task in tasks}
    for job, res in zip(jobs, results):
        per_task[job[1]] += res["rows"]
        if res["frames"]:
            from taskweave.sim.video import write_video
            write_video(os.path.join(video_dir, f"{job[1]}.mp4"), res["frames"])
    devices = sorted({r["device"] for r in results})
    out = summarise(per_task, checkpoint, backend, split, time.perf_counter() - t0, ", ".join(devices))
    out["action_horizon"] = runner.action_horizon
    out["inference_steps"] = runner.num_inference_steps or runner.config.num_inference_steps
    out["train_tasks"] = list(cfg.train_tasks)   # empty: every task of its dataset
    out.update(policy_inputs(cfg))   # 'policy_inputs' (e.g. rgb:front, rgb:wrist, proprio, text), 'privileged'
    out["text_ablation"], out["done_by"] = text_ablation, "done head" if runner.has_done_head else "postcondition"
    out["num_envs"], out["executor"] = n_env, executor.describe()
    out["sampling"] = "per-episode generators seeded by the episode seed"
    return out


def eval_job(checkpoint: str, task: str, backend: str, seeds: list, opts: dict, video: bool) -> dict:
    """One job: the episodes of `seeds` in lockstep envs with batched inference, in this process; returns
    {'rows': per-episode records, 'frames': the first episode's frames when video, 'device'}."""
    import torch

    from taskweave.envs import make_env
    from taskweave.policies.controllers import run_policy_episodes
    from taskweave.policies.diffusion import load_policy
    from taskweave.policies.device import select_device
    from taskweave.policies.runner import PolicyRunner

    key = ("policy", os.path.abspath(checkpoint), opts["device"])
    if key not in _CACHE:
        _CACHE[key] = load_policy(checkpoint, select_device(opts["device"]), use_ema=True)
    policy = _CACHE[key]
    runner = PolicyRunner(policy, num_envs=len(seeds), device=next(policy.parameters()).device,
                          num_inference_steps=opts["inference_steps"], seed=0, action_horizon=opts["action_horizon"])
    runner.source = checkpoint
    runner.seed_envs(seeds)   # per-episode sampling noise
    ekey = ("envs", task, backend, repr(sorted(opts["env_kw"].items())))
    envs = _CACHE.setdefault(ekey, [])
    while len(envs) < len(seeds):
        envs.append(make_env(task, backend, control="ee_delta", **opts["env_kw"]))
    frames = [] if video else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the same floating-point reductions in every process
    try:
        rec = _ActionDigest(runner)
        rows = run_policy_episodes(envs[:len(seeds)], seeds, rec,
                                   None if runner.robot else [runner.task_index(task)] * len(seeds),
                                   opts["max_ticks"], frames=frames, text_ablation=opts["text_ablation"])
    finally:
        torch.set_num_threads(threads)
    for row, h in zip(rows, rec.digests):
        row["action_sha256"] = h.hexdigest()[:16]
    return {"rows": rows, "frames": frames, "device": str(runner.device)}


class _ActionDigest:
    """A PolicyRunner as run_policy_episodes sees it, hashing the actions each running env is given: an
    episode's 'action_sha256' is the same for the same checkpoint and seed whatever ran it (the audit of
    same seeds, same results); envs already done ('idle') are left out."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.digests = [hashlib.sha256() for _ in range(runner.num_envs)]

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def act_done(self, obs_batch, skill_texts, task_ids=None):
        """The runner's act_done, noting each running env's action."""
        actions, done = self._runner.act_done(obs_batch, skill_texts, task_ids)
        for i, text in enumerate(skill_texts):
            if text != "idle":
                self.digests[i].update(np.asarray(actions[i], dtype=np.float32).tobytes())
        return actions, done

    def act(self, obs_batch, skill_texts, task_ids=None):
        """The runner's act, noting each running env's action."""
        return self.act_done(obs_batch, skill_texts, task_ids)[0]


def release_cache() -> None:
    """Close the envs and drop the policies eval_job keeps in this process."""
    for key, value in list(_CACHE.items()):
        if key[0] == "envs":
            for env in value:
                env.close()
    _CACHE.clear()


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
             f"{r['wall_time']} s."]
    if r.get("planner"):
        lines[0] += f" Skills chosen by the {r['planner']} planner (LLM {r['llm']}), executed by the policy."
    lines += ["", *task_table(r), "", *skill_table(r)]
    lines += ["", f"Overall per-skill success: {r['overall_skill_success_rate']:.1%}; episode success "
              f"{r['pc_success']:.1f}%."]
    return "\n".join(lines)


def save_report(r: dict, out_dir: str) -> None:
    """Write out_dir/eval.json (the full result) and out_dir/eval.md (the markdown report), each atomically."""
    for name, text in (("eval.json", json.dumps(r, indent=1)), ("eval.md", to_markdown(r) + "\n")):
        atomic_write_text(os.path.join(out_dir, name), text)
