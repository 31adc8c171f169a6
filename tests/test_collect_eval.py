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
