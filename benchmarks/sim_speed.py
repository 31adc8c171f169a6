"""Raw engine speed vs TaskEnv step speed over the same scene and substeps, and render fps.

    python benchmarks/sim_speed.py [--ticks 300] [--json]

Env: TaskEnv.step with small random low-level actions (IK, gripper, substeps, state observation,
symbolic state, reward and success). Raw: the same trajectory replayed from the same reset state by
writing the joint commands the env sent straight to the engine and calling the engine's own step
function `substeps` times per tick, so both sides pay for the same contacts. Both on Panda + table + 5 blocks, 2 ms physics, 10 Hz control.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from taskweave.envs import make_env
from taskweave.envs.task import Layout, P, Task, block
from taskweave.sim.spec import SceneSpec


class FiveBlocks(Task):
    """Five blocks on the table (benchmark scene)."""

    name = "FiveBlocks"

    def build(self, rng):
        lay = Layout(rng)
        cs = ["red", "green", "blue", "yellow", "orange"]
        self.instruction = "benchmark"
        self.goals = [P("on", "red_block", "green_block")]
        return SceneSpec(objects=[block(f"{c}_block", c, lay.spot(), rng=rng) for c in cs])


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or platform)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_rate(env, ticks: int, rng) -> tuple:
    """Control ticks per second through TaskEnv.step with small random actions, and the joint commands
    each tick ended up sending to the engine (for raw_rate to replay)."""
    acts = rng.uniform(-0.3, 0.3, size=(ticks, 5)).astype(np.float32)
    b = env.backend
    cmds = []
    t = time.perf_counter()
    for a in acts:
        env.step(a)
        cmds.append((b.arm_target.copy(), b.gripper_target))
    return ticks / (time.perf_counter() - t), cmds


def raw_rate(env, cmds) -> float:
    """Control ticks per second of bare engine stepping along the same trajectory.

    From the same reset state, the joint commands the env sent are written straight to the engine
    (ctrl for MuJoCo, one motor-control call for PyBullet) and the engine's own step function runs
    `substeps` times per tick: the same physics (same contacts) as the env did, with nothing around it.
    """
    b = env.backend
    n = env.controller.substeps
    if env.backend_name == "mujoco":
        import mujoco
        m, d = b.model, b.data
        step = mujoco.mj_step
        t = time.perf_counter()
        for arm, grip in cmds:
            d.ctrl[:7] = arm
            d.ctrl[7:9] = grip
            for _ in range(n):
                step(m, d)
    else:
        step = b.client.stepSimulation
        t = time.perf_counter()
        for arm, grip in cmds:
            b.arm_target, b.gripper_target = arm, grip
            b._apply_commands()
            for _ in range(n):
                step()
    return len(cmds) / (time.perf_counter() - t)


def _best_us(fn, n: int) -> float:
    """Best of 5 timings of n calls, microseconds per call."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def overhead_breakdown(env, n: int = 500) -> dict:
    """Microseconds per call of what an env step adds to physics, measured one part at a time at a fixed
    state: the action -> joint targets (IK), the symbolic state, reward + success, the observation."""
    env.reset(seed=0)
    for a in np.random.default_rng(1).uniform(-0.3, 0.3, size=(10, 5)):
        env.step(a)
    snap = env.backend.snapshot()
    a = np.array([0.1, -0.1, 0.05, 0.1, 1.0])
    out = {"command_ik_us": _best_us(lambda: env.controller.command(a), n)}
    env.backend.restore(snap)
    st = env.symbolic_state()
    out["symbolic_state_us"] = _best_us(env.symbolic_state, n)
    out["reward_success_us"] = _best_us(lambda: (env.task.progress(st), env.task.success(st)), n)
    out["observation_us"] = _best_us(env._obs, n)
    return out


def render_fps(env, frames: int = 30) -> float:
    """128x128 RGB frames per second from the front camera."""
    env.backend.render("front", 128, 128)
    t = time.perf_counter()
    for _ in range(frames):
        env.backend.render("front", 128, 128)
    return frames / (time.perf_counter() - t)


def main(argv=None) -> int:
    """Measure and print raw vs env speed per backend."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="mujoco,pybullet")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = {"device": f"CPU: {cpu_name()} ({os.cpu_count()} cores)", "results": []}
    for backend in args.backends.split(","):
        env = make_env(FiveBlocks(), backend)
        env.reset(seed=0)
        raws, envs = [], []
        for _ in range(args.repeats):  # interleave to share any machine noise; timing noise only adds time, so keep the best
            env.reset(seed=0)
            rate, cmds = env_rate(env, args.ticks, np.random.default_rng(0))
            envs.append(rate)
            env.reset(seed=0)
            raws.append(raw_rate(env, cmds))
        raw, stepped = max(raws), max(envs)
        n = env.controller.substeps
        row = {"backend": backend, "substeps": n, "ticks": args.ticks, "repeats": args.repeats,
               "raw_ticks_per_s": raw, "raw_physics_steps_per_s": raw * n, "env_steps_per_s": stepped,
               "env_cost_over_raw": raw / stepped,
               "env_overhead_ms_per_tick": 1e3 * (1.0 / stepped - 1.0 / raw),
               "breakdown_us": overhead_breakdown(env), "render_fps_128": render_fps(env)}
        out["results"].append(row)
        env.close()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(out["device"])
        for r in out["results"]:
            print(f"{r['backend']:>9}: raw {r['raw_physics_steps_per_s']:8.0f} physics steps/s = "
                  f"{r['raw_ticks_per_s']:6.1f} ticks/s ({r['substeps']} substeps); env {r['env_steps_per_s']:6.1f} "
                  f"steps/s; env cost / raw = {r['env_cost_over_raw']:.3f}x (best of {r['repeats']} each); "
                  f"render 128x128 {r['render_fps_128']:.1f} fps")
            bd = r["breakdown_us"]
            print(f"{'':>11}per tick: physics {1e6 / r['raw_ticks_per_s']:.0f} us; on top: IK/command "
                  f"{bd['command_ik_us']:.0f} us, symbolic state {bd['symbolic_state_us']:.0f} us, reward+success "
                  f"{bd['reward_success_us']:.0f} us, observation {bd['observation_us']:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
