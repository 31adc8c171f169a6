"""The oracle: runs a task's own plan with scripted skills, replanning from the state on failure."""
from __future__ import annotations

import time
from typing import Callable, Optional

from taskweave.envs.env import TaskEnv, make_env


def run_oracle_episode(env: TaskEnv, seed: int, max_replans: int = 3,
                       on_tick: Optional[Callable] = None) -> dict:
    """Reset to seed and execute the oracle plan (re-planned up to max_replans times); a result dict."""
    t0 = time.perf_counter()
    env.reset(seed=seed)
    skills, failures = [], []
    for _ in range(max_replans + 1):
        plan = env.oracle_plan()
        if not plan:
            break
        for call in plan:
            r = env.execute_skill(call, recorder=on_tick)
            skills.append(str(call))
            if not r.success:
                failures.append({"skill": str(call), "failure": r.failure, "message": r.message})
                break
        if env.is_success():
            break
    return {"seed": int(seed), "success": bool(env.is_success()), "progress": float(env.progress()),
            "skills": skills, "failures": failures, "ticks": int(env.steps),
            "wall_time": round(time.perf_counter() - t0, 3)}


def validate_oracle(task, backend: str, seed: int) -> dict:
    """One oracle episode of a task (name or instance) on a backend; used by generated-task validation."""
    env = make_env(task, backend, control="skill")
    try:
        return run_oracle_episode(env, seed)
    finally:
        env.close()
