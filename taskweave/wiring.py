"""Wiring between the subsystems: the learned policy as a planner's skill executor, the shipped checkpoint."""
from __future__ import annotations

import os

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "policies",
                                  "assets", "policy_small.pt")


SHIPPED = {"state": "policy_small.pt",        # the privileged state policy (object poses in its input)
           "rgb": "policy_robot_rgb.pt"}      # the robot-input policy: front + wrist RGB, proprio, sentence


def shipped_checkpoint(kind: str = "state") -> str:
    """Path of a policy shipped with the package, 'state' or 'rgb' ('' when absent)."""
    from importlib import resources
    if kind not in SHIPPED:
        raise ValueError(f"no shipped policy of kind {kind!r} (choose one of: {', '.join(SHIPPED)})")
    local = os.path.join(os.path.dirname(DEFAULT_CHECKPOINT), SHIPPED[kind])
    try:
        p = resources.files("taskweave.policies").joinpath(f"assets/{SHIPPED[kind]}")
        return str(p) if p.is_file() else ""
    except (ModuleNotFoundError, FileNotFoundError):
        return local if os.path.isfile(local) else ""


def policy_executor(env, checkpoint: str, device: str = "auto", max_ticks: int = 150):
    """A SkillExecutor that runs each skill on env through its skill loop with the policy from checkpoint."""
    from taskweave.planning.executors import EnvSkillExecutor
    from taskweave.policies.controllers import PolicyController
    from taskweave.policies.runner import PolicyRunner

    runner = PolicyRunner.from_checkpoint(checkpoint, num_envs=1, device=device, seed=0)
    task = env.task.name
    task_id = runner.task_index(task)   # a task the policy never saw is an error (RunnerError), never a silent 0
    return EnvSkillExecutor(env, PolicyController(runner, task_id, max_ticks), name=f"policy:{checkpoint}")
