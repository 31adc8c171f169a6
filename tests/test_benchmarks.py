"""benchmarks/sim_speed.py measures what it says: raw physics is the env's own trajectory, replayed."""
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sim_speed():
    spec = importlib.util.spec_from_file_location("sim_speed", os.path.join(ROOT, "benchmarks", "sim_speed.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("backend", ["mujoco", "pybullet"])
def test_raw_replay_reproduces_the_env_trajectory(backend):
    from taskweave.envs import make_env

    bench = _sim_speed()
    env = make_env(bench.FiveBlocks(), backend)
    try:
        env.reset(seed=0)
        rate, cmds = bench.env_rate(env, 25, np.random.default_rng(0))
        assert rate > 0 and len(cmds) == 25
        q_env, poses_env = env.backend.joint_positions(), env.backend.object_poses()
        env.reset(seed=0)
        q0 = env.backend.joint_positions()
        assert np.abs(q_env - q0).max() > 1e-3  # the random actions moved the arm
        assert bench.raw_rate(env, cmds) > 0
        if backend == "mujoco":
            import mujoco
            mujoco.mj_forward(env.backend.model, env.backend.data)  # raw stepping leaves kinematics stale
            tol = 1e-9
        else:
            env.backend._cache.clear()
            tol = 1e-6
        assert np.abs(env.backend.joint_positions() - q_env).max() < tol
        assert np.abs(env.backend.object_poses() - poses_env).max() < tol
    finally:
        env.close()


def test_sim_speed_cli_prints_ratio(capsys):
    bench = _sim_speed()
    assert bench.main(["--ticks", "5", "--repeats", "1", "--backends", "mujoco"]) == 0
    out = capsys.readouterr().out
    assert "env cost / raw" in out and "CPU" in out
