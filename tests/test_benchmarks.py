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


def test_policy_speed_times_the_robot_input_policy(tmp_path, capsys):
    import json

    from taskweave.policies.diffusion.configuration import robot_config

    spec = importlib.util.spec_from_file_location("policy_speed", os.path.join(ROOT, "benchmarks", "policy_speed.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = str(tmp_path / "robot.json")
    robot_config(image_shape=(40, 40, 3), crop_size=36, vision_width=8, vision_stages=2, vision_film=True,
                 aux_loss_weight=1.0, num_keypoints=4, rgb_feature_dim=8, down_dims=(16, 32),
                 diffusion_step_embed_dim=16, skill_cond_dim=8, done_hidden_dim=16, pred_horizon=8, action_horizon=4,
                 num_train_timesteps=20, num_inference_steps=4).save(cfg)
    args = ["--config", cfg, "--batch-sizes", "1", "--repeats", "1", "--train-batch", "2", "--train-steps", "1",
            "--threads", "1", "--json"]
    assert bench.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["obs_mode"] == "robot" and report["onnxruntime_latency"] == []
    assert {r["sampler"] for r in report["latency"]} == {"DDIM-4", "DDPM-20"}
    assert report["training"]["samples_per_s"] > 0
