"""The robot-input policy end to end: collect --obs robot, the dataset's frames/proprio/done, train, runner and
controllers (the done head ends skills), evaluation in robot-mode envs, text ablations."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from taskweave.cli import main
from taskweave.envs import make_env
from taskweave.envs.observation import PROPRIO_DIM, PROPRIO_LAYOUT
from taskweave.policies.collect import collect
from taskweave.policies.controllers import CONSTANT_TEXT, PolicyController, ablated_text, run_policy_episodes
from taskweave.policies.dataset import DatasetError, DemoDataset
from taskweave.policies.diffusion import load_checkpoint
from taskweave.policies.diffusion.configuration import robot_config
from taskweave.policies.diffusion.modeling import done_targets
from taskweave.policies.runner import PolicyRunner
from taskweave.policies.train import train
from taskweave.envs.skill_loop import run_skill_call

SIZE = 40   # the smallest frames a robot policy takes: a crop of at least 33 (ResNet-18 + spatial softmax)


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest: tiny models run on one thread


def tiny_robot(**kw):
    base = dict(crop_size=36, vision_width=8, num_keypoints=4, rgb_feature_dim=8, down_dims=(16, 32),
                diffusion_step_embed_dim=16, skill_cond_dim=8, done_hidden_dim=16, pred_horizon=8, action_horizon=4,
                num_train_timesteps=20, num_inference_steps=2, batch_size=8, steps=3, log_every=1,
                checkpoint_every=3, val_every=3, val_batches=1, lr=1e-3, warmup_steps=1)
    return robot_config(**{**base, **kw})


@pytest.fixture(scope="module")
def robot_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("robot") / "ds")
    collect(["BlockInBowl"], 1, "mujoco", out, val_episodes=1, workers=1, progress=False, obs="robot",
            image_size=SIZE)
    return out


@pytest.fixture(scope="module")
def robot_run(robot_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("robotrun") / "run")
    train(robot_data, out, tiny_robot(), device="cpu", progress=False, log=lambda *a, **k: None)
    return out


def test_collect_robot_records_frames_proprio_sentences_and_checksums(robot_data, tmp_path):
    meta = json.load(open(os.path.join(robot_data, "meta.json")))
    assert meta["obs"] == {"state": [29], "rgb:front": [SIZE, SIZE, 3], "rgb:wrist": [SIZE, SIZE, 3],
                           "proprio": [PROPRIO_DIM]}
    assert meta["proprio_layout"] == PROPRIO_LAYOUT and meta["extra"]["obs"] == "robot"
    assert all(" the " in s and "(" not in s for s in meta["skills"]), meta["skills"]   # sentences, not pick(block)
    assert {"data/rgb_front", "data/rgb_wrist", "data/proprio"} <= set(meta["checksums"])
    ds = DemoDataset(robot_data, "train", robot=True)
    item = ds[0]
    assert set(item) == {"rgb:front", "rgb:wrist", "proprio", "action", "skill_id", "done"}, "no state, no task id"
    assert item["rgb:wrist"].shape == (2, SIZE, SIZE, 3) and item["rgb:wrist"].dtype == torch.uint8
    assert item["proprio"].shape == (2, PROPRIO_DIM) and item["done"].shape == (16,)
    assert set(ds.stats()) == {"state", "action", "proprio"}
    for i in (0, len(ds) - 1):
        assert torch.equal(ds[i]["done"], torch.from_numpy(done_targets(ds._win_start[i], ds._win_hi[i], 16)))
    assert ds[len(ds) - 1]["done"][-1] == 1 and ds[0]["done"][0] == 0
    pre = DemoDataset(robot_data, "train", robot=True, preload=True, cameras=["wrist"])
    assert set(pre[3]) == {"rgb:wrist", "proprio", "action", "skill_id", "done"}
    assert torch.equal(pre[3]["rgb:wrist"], ds[3]["rgb:wrist"])
    aux = DemoDataset(robot_data, "train", robot=True, aux_targets=True)   # the auxiliary head's labels, on request
    for i in (0, len(aux) // 2):
        now = aux.window_indices(i)[1]   # obs_horizon 2: the current step
        assert torch.equal(aux[i]["aux_target"], torch.from_numpy(aux.state[now, -6:]))
        assert set(aux[i]) - set(ds[i]) == {"aux_target"}
    obj, tcp = aux.state[0, 23:26], aux.state[0, 0:3]
    assert np.allclose(obj, aux.state[0, 7:10] - tcp, atol=1e-5), "object - TCP, as the state layout says"
    with pytest.raises(DatasetError, match="camera"):
        DemoDataset(robot_data, "train", robot=True, cameras=["top"])
    with pytest.raises(DatasetError, match="--obs state"):   # one observation mode per dataset
        collect(["BlockInBowl"], 2, "mujoco", robot_data, val_episodes=1, workers=1, progress=False)
    with pytest.raises(DatasetError, match="--image-size"):   # one frame size per dataset
        collect(["BlockInBowl"], 2, "mujoco", robot_data, val_episodes=1, workers=1, progress=False, obs="robot",
                image_size=24)


def test_a_damaged_camera_chunk_is_named(tmp_path):
    import shutil
    src = str(tmp_path / "d")
    collect(["StackOnBlock"], 1, "mujoco", src, val_episodes=0, workers=1, progress=False, obs="robot",
            image_size=24)
    chunk = os.path.join(src, "data.zarr", "data", "rgb_wrist", "c", "1", "0", "0", "0")
    assert os.path.exists(chunk)
    bad = str(tmp_path / "bad")
    shutil.copytree(src, bad)
    path = os.path.join(bad, "data.zarr", "data", "rgb_wrist", "c", "1", "0", "0", "0")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    ds = DemoDataset(bad, None, robot=True, pred_horizon=4, action_horizon=2)
    with pytest.raises(DatasetError, match="data/rgb_wrist"):
        for i in range(len(ds)):
            ds[i]
    with pytest.raises(DatasetError, match="data/rgb_wrist"):
        DemoDataset(bad, None, robot=True, preload=True)


def test_train_robot_records_inputs_and_loss_parts(robot_run):
    info = json.load(open(os.path.join(robot_run, "run_info.json")))
    assert info["policy_inputs"] == ["rgb:front", "rgb:wrist", "proprio", "text"] and info["privileged"] is False
    cfg = json.load(open(os.path.join(robot_run, "config.json")))
    assert (cfg["proprio_dim"], cfg["image_shape"], cfg["state_dim"], cfg["num_tasks"]) == \
        (PROPRIO_DIM, [SIZE, SIZE, 3], None, None)
    ck = load_checkpoint(os.path.join(robot_run, "checkpoints", "last.pt"))
    assert ck["privileged"] is False and ck["text_encoder"]["spec"] == "minilm"
    assert ck["config"].num_skills == len(ck["skills"]) and ck["tasks"] == ["BlockInBowl"]
    rec = [json.loads(x) for x in open(os.path.join(robot_run, "metrics.jsonl"))]
    assert all({"diffusion", "done"} <= set(r) for r in rec)
    assert os.path.exists(os.path.join(robot_run, "checkpoints", "best.pt"))


def _force_done(runner, logit: float) -> None:
    """Make the done head answer a constant P(done) (its last layer's bias), whatever it sees."""
    with torch.no_grad():
        last = runner.policy.done_head[-1]
        last.weight.zero_()
        last.bias.fill_(logit)


def test_runner_cuts_the_chunk_where_the_done_head_says_the_skill_is_over(robot_run):
    runner = PolicyRunner.from_checkpoint(robot_run, num_envs=2, device="cpu", seed=0)
    cfg = runner.config
    with torch.no_grad():
        last = runner.policy.done_head[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-9.0] * cfg.pred_horizon))
        last.bias[cfg.obs_horizon - 1 + 2] = 9.0   # done from the third executed action on
    obs = {"proprio": np.zeros((2, PROPRIO_DIM), np.float32),
           **{f"rgb:{c}": np.zeros((2, SIZE, SIZE, 3), np.uint8) for c in cfg.cameras}}
    flags = [runner.act_done(obs, ["pick the red block"] * 2)[1].tolist() for _ in range(3)]
    assert flags == [[False, False], [False, False], [True, True]]
    assert runner.act_done(obs, ["pick the red block"] * 2)[1].tolist() == [False, False], "a new chunk"
    with pytest.raises(ValueError, match="rgb:wrist"):
        runner.act({"proprio": obs["proprio"], "rgb:front": obs["rgb:front"]}, ["x", "x"])
    with pytest.raises(ValueError, match=f"{SIZE}, {SIZE}, 3"):
        runner.act({**obs, "rgb:front": np.zeros((2, 32, 32, 3), np.uint8)}, ["x", "x"])


def test_the_policy_controller_ends_the_skill_by_its_done_head_and_keeps_the_timeout(robot_run):
    runner = PolicyRunner.from_checkpoint(robot_run, num_envs=1, device="cpu", seed=0)
    env = make_env("BlockInBowl", "mujoco", obs_mode="robot", image_size=SIZE)
    try:
        env.reset(seed=5)
        call = env.oracle_plan()[0]
        ctl = PolicyController(runner, max_ticks=7)
        assert ctl.postcondition is False, "the policy, not the postcondition rule, ends its skill"
        _force_done(runner, 9.0)    # done at once: one action, then the postcondition scores the skill
        r = run_skill_call(env, call, ctl)
        assert (r.success, r.failure, r.steps) == (False, "grasp_failed", 1) and "said done" in r.message
        _force_done(runner, -9.0)   # never done: the tick budget ends it
        r = run_skill_call(env, call, ctl)
        assert (r.success, r.failure, r.steps) == (False, "timeout", 7)
    finally:
        env.close()


def test_text_ablations_replace_the_language_the_policy_gets(robot_run):
    runner = PolicyRunner.from_checkpoint(robot_run, num_envs=1, device="cpu")
    env = make_env("BlockInBowl", "mujoco", obs_mode="robot", image_size=SIZE)
    try:
        env.reset(seed=5)
        call = env.oracle_plan()[1]   # place(block, bowl)
        rng = np.random.default_rng(0)
        assert ablated_text(runner, env, call, "none", rng) == env.skill_sentence(call)
        assert ablated_text(runner, env, call, "constant", rng) == CONSTANT_TEXT
        shuffled = {ablated_text(runner, env, call, "shuffled", rng) for _ in range(8)}
        assert env.skill_sentence(call) not in shuffled
        state = env.symbolic_state()
        for text in shuffled:   # the same kind of sentence about other objects of the scene
            assert text.startswith("place the ") and " in the " in text
            assert any(n.replace("_", " ") in text for n in state.objects if state.objects[n].shape == "container")
    finally:
        env.close()


def test_eval_of_a_robot_checkpoint_runs_robot_envs_and_records_its_inputs(robot_run, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", "--checkpoint", robot_run, "--tasks", "BlockInBowl", "--episodes", "2", "--num-envs", "2",
               "--max-ticks", "5", "--split", "val", "--out", str(out), "--device", "cpu",
               "--text-ablation", "shuffled"])
    assert rc == 0
    r = json.loads((out / "eval.json").read_text())
    assert r["policy_inputs"] == ["rgb:front", "rgb:wrist", "proprio", "text"] and r["privileged"] is False
    assert r["done_by"] == "done head" and r["text_ablation"] == "shuffled"
    skills = [s for e in r["tasks"]["BlockInBowl"]["per_episode"] for s in e["skills"]]
    assert skills and all(s["ticks"] <= 5 for s in skills) and "pick(block)" in r["skills"]
    assert all(s["given_text"] != "" and s["given_text"].startswith(s["call"].split("(")[0]) for s in skills)
    capsys.readouterr()
    envs = [make_env("BlockInBowl", "mujoco")]   # a state env still serves: the runner renders what it needs
    runner = PolicyRunner.from_checkpoint(robot_run, num_envs=1, device="cpu", seed=0)
    res = run_policy_episodes(envs, [3], runner, None, max_ticks=3)
    assert res[0]["skills"][0]["ticks"] <= 3
    envs[0].close()
