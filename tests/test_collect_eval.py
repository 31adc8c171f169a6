"""Demonstration collection and policy evaluation wiring (tiny scale)."""
import json

import numpy as np
import pytest

from taskweave.policies.collect import SPLIT_SEED_BASE, collect, record_episode


def test_record_episode_is_a_successful_demo():
    ep = record_episode("BlockInBowl", "mujoco", 3)
    assert ep is not None
    assert ep["state"].shape[1] == 29 and ep["action"].shape[1] == 5
    assert len(ep["skills"]) == ep["state"].shape[0] == sum(ep["segment_lengths"])
    assert set(ep["skills"]) == {"pick(block)", "place(block, container)"}
    assert np.abs(ep["action"]).max() <= 1.0


def test_collect_resumes_and_keeps_splits_disjoint(tmp_path):
    out = str(tmp_path / "ds")
    s1 = collect(["StackOnBlock"], 2, "mujoco", out, val_episodes=1, workers=1, progress=False)
    assert s1["kept"] == 3
    s2 = collect(["StackOnBlock"], 3, "mujoco", out, val_episodes=1, workers=1, progress=False)
    assert s2["kept"] == 1 and s2["episodes"] == 4  # resumed: only the missing episode was recorded
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    train = {e["seed"] for e in meta["episodes"] if e["split"] == "train"}
    val = {e["seed"] for e in meta["episodes"] if e["split"] == "val"}
    assert not train & val and min(val) >= SPLIT_SEED_BASE["val"]


def test_collect_rejects_unknown_task(tmp_path):
    with pytest.raises(KeyError, match="NoSuchTask"):
        collect(["NoSuchTask"], 1, "mujoco", str(tmp_path / "x"), progress=False)


def test_eval_cli_end_to_end_on_real_envs(tmp_path, capsys):
    """collect -> train (a few steps) -> `taskweave eval`: JSON + markdown with per-task and per-skill counts."""
    import torch

    from taskweave.cli import main
    from taskweave.policies.diffusion.configuration import DiffusionConfig
    from taskweave.policies.train import train

    data = str(tmp_path / "ds")
    collect(["BlockInBowl"], 2, "mujoco", data, val_episodes=0, workers=1, progress=False)
    cfg = DiffusionConfig(down_dims=(16, 32), diffusion_step_embed_dim=16, state_hidden_dim=32, state_feature_dim=16,
                          text_embed_dim=16, skill_cond_dim=8, task_embed_dim=4, batch_size=8, steps=3,
                          checkpoint_every=3, log_every=1, num_inference_steps=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(data, str(tmp_path / "run"), cfg, device="cpu", progress=False)
        out = tmp_path / "ev"
        rc = main(["eval", "--checkpoint", str(tmp_path / "run"), "--tasks", "BlockInBowl", "--episodes", "2",
                   "--num-envs", "2", "--max-ticks", "6", "--split", "val", "--action-horizon", "3",
                   "--out", str(out), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    r = json.loads((out / "eval.json").read_text())
    assert r["action_horizon"] == 3 and r["split"] == "val"
    t = r["tasks"]["BlockInBowl"]
    assert t["episodes"] == 2 and t["seeds"] == [SPLIT_SEED_BASE["val"], SPLIT_SEED_BASE["val"] + 1]
    assert t["skill_attempts"] >= 2 and 0.0 <= t["ci95"][0] <= t["success_rate"] <= t["ci95"][1] <= 1.0
    assert "pick(block)" in r["skills"]
    assert "BlockInBowl" in (out / "eval.md").read_text()
    assert not list(out.glob("*.tmp"))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--tasks", "BlockInBowl", "--episodes", "1"]) != 0
    assert "nope.pt" in capsys.readouterr().err
