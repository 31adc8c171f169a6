"""CPU tests of datasets, training (overfit, resume, DDP), the CLI entry and the batched runner."""
from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import zarr

from taskweave.policies import dataset as dataset_mod
from taskweave.policies.diffusion.checkpoint import load_checkpoint
from taskweave.policies.diffusion.configuration import DiffusionConfig
from taskweave.policies.dataset import DatasetError, DatasetWriter, DemoDataset
from taskweave.policies.runner import PolicyRunner
from taskweave.policies.train import TrainError, train

SKILLS = ("pick(red_block)", "place(red_block, green_bowl)")
TARGETS = (np.array([0.3, 0.2, 0.0]), np.array([-0.3, -0.1, 0.2]))


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest: tiny models run on one thread


def demo_episode(seed: int, seg_lens=(20, 14), rgb_shape=None):
    """One synthetic two-skill demo: the gripper moves toward a skill-specific target (action = clipped delta)."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-0.5, 0.5, 3)
    states, actions, skills = [], [], []
    for k, (n, target) in enumerate(zip(seg_lens, TARGETS)):
        grip = 1.0 if k == 0 else -1.0
        for t in range(n):
            a = np.clip((target - pos) * 4, -1, 1)
            states.append(np.concatenate([pos, [np.sin(t / 3), np.cos(t / 3), grip, 0.0], target, [k]]))
            actions.append(np.concatenate([a, [0.0, grip]]))
            skills.append(SKILLS[k])
            pos = pos + a * 0.1
    rgb = rng.integers(0, 256, (len(states), *rgb_shape), dtype=np.uint8) if rgb_shape else None
    return np.array(states, np.float32), np.array(actions, np.float32), skills, rgb


def write_demos(path, n=5, rgb_shape=None, seg_lens=(20, 14), finalize=True):
    w = DatasetWriter(str(path), tasks=["stack", "sort"], backend="synthetic", control_hz=10)
    for seed in range(n):
        state, action, skills, rgb = demo_episode(seed, seg_lens, rgb_shape)
        w.add_episode(["stack", "sort"][seed % 2], seed, state, action, skills, rgb=rgb,
                      split="val" if seed == n - 1 else "train")
    if finalize:
        w.finalize()
    return w


def tiny_config(**kw) -> DiffusionConfig:
    base = dict(down_dims=(32, 64), diffusion_step_embed_dim=32, state_hidden_dim=64, state_feature_dim=32,
                text_embed_dim=32, skill_cond_dim=16, task_embed_dim=8, lr=3e-3, warmup_steps=5, batch_size=32,
                steps=10, log_every=5, checkpoint_every=5, use_ema=True)
    base.update(kw)
    return DiffusionConfig(**base)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos")
    write_demos(path)
    return str(path)


@pytest.fixture(scope="module")
def trained_run(demo_dir, tmp_path_factory):
    """One short overfitting run shared by the training and runner tests."""
    out = str(tmp_path_factory.mktemp("run") / "run")
    cfg = tiny_config(steps=250, batch_size=64, log_every=10, checkpoint_every=100, use_ema=False)
    result = train(demo_dir, out, cfg, device="cpu", progress=False)
    return out, result


# ----------------------------------------------------------------------------- dataset
def test_dataset_round_trip(tmp_path):
    write_demos(tmp_path, n=3, rgb_shape=(12, 10, 3))
    meta = json.load(open(tmp_path / "meta.json"))
    assert meta["tasks"] == ["stack", "sort"] and meta["skills"] == list(SKILLS)
    assert meta["obs"] == {"state": [11], "rgb": [12, 10, 3]} and meta["action_dim"] == 5
    assert [(e["seed"], e["split"], e["length"]) for e in meta["episodes"]] == [(0, "train", 34), (1, "train", 34),
                                                                                (2, "val", 34)]
    assert meta["num_segments"] == 6 and meta["num_steps"] == 102
    root = zarr.open_group(str(tmp_path / "data.zarr"), mode="r")
    assert list(root["meta/episode_ends"][:]) == [34, 68, 102]
    assert list(root["meta/segment_ends"][:]) == [20, 34, 54, 68, 88, 102]
    assert root["data/rgb"].chunks[0] < 102 and root["data/state"].dtype == np.float32
    ds = DemoDataset(str(tmp_path), "train", obs_horizon=2, pred_horizon=16, action_horizon=8)
    val = DemoDataset(str(tmp_path), "val", obs_horizon=2, pred_horizon=16, action_horizon=8)
    assert {int(ds[i]["task_id"]) for i in range(len(ds))} == {0, 1} and {int(val[0]["task_id"])} == {0}
    state, action, _, rgb = demo_episode(1, rgb_shape=(12, 10, 3))
    for i in range(len(ds)):
        idx = ds.window_indices(i)
        if idx[0] >= 34:  # a window of episode 1
            item = ds[i]
            assert item["state"].shape == (2, 11) and item["action"].shape == (16, 5)
            assert np.array_equal(item["action"].numpy(), action[idx - 34])
            assert np.array_equal(item["rgb"].numpy(), rgb[idx[:2] - 34])
            break
    stats = ds.stats()
    both = np.concatenate([demo_episode(s)[1] for s in (0, 1)])
    assert np.array_equal(stats["action"]["max"].numpy(), both.max(0))


def test_windows_stay_inside_one_skill_segment(tmp_path):
    write_demos(tmp_path, n=3, seg_lens=(20, 5))  # the 5-step segment is shorter than a window
    ds = DemoDataset(str(tmp_path), None, obs_horizon=2, pred_horizon=16, action_horizon=8)
    seg_ends = np.array([20, 25, 45, 50, 70, 75])
    seg_of = np.searchsorted(seg_ends, np.arange(75), side="right")
    per_segment = np.zeros(6, int)
    for i in range(len(ds)):
        idx = ds.window_indices(i)
        segs = set(seg_of[idx])
        assert len(segs) == 1, f"window {i} crosses segments: {idx}"
        assert len(set(ds.skill_id[idx])) == 1
        item = ds[i]
        assert int(item["skill_id"]) == ds.skill_id[idx[0]]
        per_segment[segs.pop()] += 1
    # pad_before = 1, pad_after = 7: a segment of L steps gives L - 16 + 7 + 1 + 1 windows, at least one
    assert list(per_segment) == [13, 1, 13, 1, 13, 1]
    first = ds.window_indices(0)
    assert list(first[:3]) == [0, 0, 1], "edge padding repeats the first step before the segment"
    last_long = ds.window_indices(12)
    assert list(last_long[-8:]) == [19] * 8, "edge padding repeats the last step after the segment"


def test_writer_resume_skips_seeds_and_drops_uncommitted_rows(tmp_path):
    w = write_demos(tmp_path, n=2, finalize=False)
    with pytest.raises(DatasetError, match="meta.json"):
        DemoDataset(str(tmp_path))  # not valid before finalize()
    root = zarr.open_group(str(tmp_path / "data.zarr"), mode="r+")  # a crash half-way through episode 3
    root["data/state"].append(np.ones((7, 11), np.float32))
    root["data/action"].append(np.ones((7, 5), np.float32))
    del w
    w = DatasetWriter(str(tmp_path))
    assert w.num_episodes == 2 and w.has_episode("stack", 0) and not w.has_episode("stack", 2)
    assert [(e["task"], e["seed"], e["split"]) for e in w.episodes] == [("stack", 0, "train"), ("sort", 1, "val")]
    state, action, skills, _ = demo_episode(0)
    assert w.add_episode("stack", 0, state, action, skills) is False  # already there
    state, action, skills, _ = demo_episode(2)
    assert w.add_episode("stack", 2, state, action, skills) is True
    w.finalize()
    ds = DemoDataset(str(tmp_path), None)
    assert ds.state.shape == (102, 11) and [e["seed"] for e in ds.meta["episodes"]] == [0, 1, 2]
    assert np.array_equal(ds.state[68:], state), "the crashed rows were dropped before appending"
    os.remove(tmp_path / "progress.json")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        DatasetWriter(str(tmp_path))
    assert DemoDataset(str(tmp_path), None).state.shape == (102, 11), "the existing store was left alone"


def test_finalize_is_atomic(tmp_path, monkeypatch):
    w = write_demos(tmp_path, n=2)
    before = (tmp_path / "meta.json").read_text()
    state, action, skills, _ = demo_episode(5)
    w.add_episode("sort", 5, state, action, skills)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(dataset_mod.os, "replace", broken_replace)
    monkeypatch.setattr("taskweave.sim.fileio.os.replace", broken_replace)
    with pytest.raises(OSError):
        w.finalize()
    monkeypatch.undo()
    assert (tmp_path / "meta.json").read_text() == before, "a failed finalize leaves the old meta.json intact"
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []
    assert len(DemoDataset(str(tmp_path), None).meta["episodes"]) == 2, "readers see only finalised episodes"
    w.finalize()
    assert len(DemoDataset(str(tmp_path), None).meta["episodes"]) == 3


def test_corrupt_or_missing_dataset_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match="nothere"):
        DemoDataset(str(tmp_path / "nothere"))
    write_demos(tmp_path / "a", n=2)
    (tmp_path / "a" / "meta.json").write_text('{"format_version": 1, "tasks": [')
    with pytest.raises(DatasetError, match="meta.json"):
        DemoDataset(str(tmp_path / "a"))
    write_demos(tmp_path / "b", n=2)
    chunk_dir = tmp_path / "b" / "data.zarr" / "data" / "state" / "c"
    chunk = next(p for p in chunk_dir.rglob("*") if p.is_file())
    chunk.write_bytes(b"garbage" * 10)
    with pytest.raises(DatasetError, match="data/state"):
        DemoDataset(str(tmp_path / "b"))
    write_demos(tmp_path / "c", n=2)
    meta = json.load(open(tmp_path / "c" / "meta.json"))
    meta["episodes"][0]["length"] += 1
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="episode_ends"):
        DemoDataset(str(tmp_path / "c"))


# ----------------------------------------------------------------------------- training
def test_tiny_model_overfits_and_reproduces_demos(trained_run, demo_dir):
    out, result = trained_run
    losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl"))]
    assert len(losses) == 25
    assert losses[-1] < losses[0] / 10, f"loss fell only from {losses[0]:.3f} to {losses[-1]:.3f}"
    assert result.step == 250 and os.path.exists(os.path.join(out, "checkpoints", "step_0000100.pt"))
    saved = DiffusionConfig.load(os.path.join(out, "config.json"))
    assert (saved.state_dim, saved.action_dim, saved.num_tasks, saved.num_skills) == (11, 5, 2, 2)
    # sampled chunks follow the demonstrations far better than the mean action does (DDPM-100 is the
    # sampler that is accurate this early in training; DDIM-10 needs a better-trained model)
    ds = DemoDataset(demo_dir, "train")
    batch = torch.utils.data.default_collate([ds[i] for i in range(0, len(ds), 4)])
    policy = result.policy.eval()
    pred = policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(0), sampler="ddpm")
    err = (pred - batch["action"]).abs().mean()
    base = (batch["action"] - batch["action"].mean((0, 1))).abs().mean()
    assert err < 0.6 * base, f"policy error {err:.3f} vs mean-action error {base:.3f}"


def test_resume_continues_at_the_same_step(demo_dir, tmp_path):
    out = str(tmp_path / "run")
    cfg = tiny_config(steps=4, checkpoint_every=2, log_every=1)
    train(demo_dir, out, cfg, device="cpu", progress=False)
    with pytest.raises(TrainError, match="--resume"):
        train(demo_dir, out, cfg, device="cpu", progress=False)
    with open(os.path.join(out, "metrics.jsonl"), "a") as fh:  # logged after the last checkpoint, then a crash
        fh.write(json.dumps({"step": 5, "loss": 9.0}) + "\n" + '{"step": 6, "lo')
    res = train(demo_dir, out, None, device="cpu", steps=7, resume=True, progress=False)
    assert res.step == 7
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "metrics.jsonl"))]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    ckpt = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
    assert ckpt["step"] == 7
    assert all(int(s["step"]) == 7 for s in ckpt["optimizer"]["state"].values()), "optimizer state continued"
    assert ckpt["ema"]["optimization_step"] == 7 and ckpt["lr_scheduler"]["last_epoch"] == 7
    assert DiffusionConfig.load(os.path.join(out, "config.json")).steps == 7
    with pytest.raises(TrainError, match="nothing to resume"):
        train(demo_dir, str(tmp_path / "fresh"), cfg, device="cpu", resume=True, progress=False)


def _ddp_worker(rank, world, port, demo_dir, out, result_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = tiny_config(steps=3, batch_size=8, checkpoint_every=3, log_every=1, use_ema=False)
    res = train(demo_dir, out, cfg, device="cpu", progress=False)
    torch.save({k: v.clone() for k, v in res.policy.state_dict().items()}, os.path.join(result_dir, f"{rank}.pt"))


def test_ddp_two_gloo_ranks_keep_identical_weights(demo_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "run")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, demo_dir, out, str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "0.pt")
    w1 = torch.load(tmp_path / "1.pt")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"{k} differs between ranks"
    ckpt = load_checkpoint(out)
    assert ckpt["step"] == 3
    assert all(torch.equal(ckpt["model"][k], w0[k]) for k in w0), "rank 0 saved the weights it trained"
    torch.manual_seed(DiffusionConfig().seed)  # the initial weights train() starts from on every rank
    from taskweave.policies.diffusion.modeling import DiffusionPolicy
    init = DiffusionPolicy(ckpt["config"]).state_dict()
    assert not torch.equal(init["unet.final_conv.1.weight"], w0["unet.final_conv.1.weight"]), "weights moved"


def test_cli_main_writes_run_and_reports_errors(demo_dir, tmp_path, capsys):
    from taskweave.cli import main
    cfg_path = tmp_path / "cfg.json"
    tiny_config(steps=50).save(str(cfg_path))
    out = tmp_path / "run"
    rc = main(["train", "--data", demo_dir, "--out", str(out), "--config", str(cfg_path), "--device", "cpu",
               "--steps", "2", "--batch-size", "4", "--no-progress"])
    assert rc == 0
    saved = DiffusionConfig.load(str(out / "config.json"))
    assert saved.steps == 2 and saved.batch_size == 4
    assert os.path.exists(out / "checkpoints" / "last.pt") and os.path.exists(out / "run_info.json")
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and len(err.strip().splitlines()) == 1, "a one-line error, no traceback"
    assert main(["train", "--data", demo_dir, "--out", str(tmp_path / "r3"), "--device", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'bogus'" in err and "auto, cpu, cuda" in err


# ----------------------------------------------------------------------------- runner
def test_runner_batches_envs_and_replans_on_skill_change(trained_run, demo_dir):
    out, _ = trained_run
    runner = PolicyRunner.from_checkpoint(out, num_envs=3, device="cpu", seed=0)
    calls = []
    real = runner.policy.predict_action_chunk

    def counting(batch, **kw):
        calls.append(batch["state"].shape[0])
        return real(batch, **kw)

    runner.policy.predict_action_chunk = counting
    ds = DemoDataset(demo_dir, "train")
    states = ds.state[[0, 40, 60]]
    skills = [SKILLS[0], SKILLS[1], SKILLS[0]]
    first = runner.act({"state": states}, skills, ["stack", "sort", 0])
    assert first.shape == (3, 5) and first.dtype == np.float32 and calls == [3]
    for _ in range(7):
        runner.act(states, skills, [0, 1, 0])
    assert calls == [3], "no replanning inside the action horizon"
    runner.act(states, skills, [0, 1, 0])
    assert calls == [3, 3], "all three envs replan together after action_horizon steps"
    runner.act(states, [SKILLS[0], SKILLS[0], SKILLS[0]], [0, 1, 0])
    assert calls == [3, 3, 1], "a new skill for env 1 flushes only that env's queue"
    runner.reset([2])
    runner.act(states, [SKILLS[0]] * 3, [0, 1, 0])
    assert calls == [3, 3, 1, 1]
    runner.act(states, [SKILLS[0], "pick(blue_block)", SKILLS[0]], [0, 1, 0])  # unseen text: encoder fallback
    assert calls[-1] == 1
    with pytest.raises(ValueError, match="unknown_task"):
        runner.act(states, [SKILLS[0]] * 3, [0, "unknown_task", 0])
    with pytest.raises(ValueError, match="state must be"):
        runner.act(states[:2], [SKILLS[0]] * 3, [0, 0, 0])


def test_runner_action_horizon_override_replans_sooner_and_is_checked(trained_run, demo_dir, tmp_path):
    out, _ = trained_run
    ds = DemoDataset(demo_dir, "train")
    states = ds.state[[0]]
    runner = PolicyRunner.from_checkpoint(out, num_envs=1, device="cpu", seed=0, action_horizon=3)
    assert runner.action_horizon == 3 and runner.config.action_horizon != 3
    calls = []
    real = runner.policy.predict_action_chunk
    runner.policy.predict_action_chunk = lambda batch, **kw: (calls.append(1), real(batch, **kw))[1]
    for _ in range(7):
        runner.act(states, [SKILLS[0]], [0])
    assert len(calls) == 3, "replans every 3 actions: ticks 0, 3 and 6"
    for bad in (0, 100, 2.5):
        with pytest.raises(ValueError, match="action_horizon"):
            PolicyRunner.from_checkpoint(out, num_envs=1, device="cpu", action_horizon=bad)
    # an exported checkpoint can carry the execution horizon as its default; the weights are unchanged
    from taskweave.policies.diffusion.checkpoint import export_policy, load_policy
    dst = export_policy(out, str(tmp_path / "p.pt"), action_horizon=4)
    assert PolicyRunner.from_checkpoint(dst, num_envs=1, device="cpu").action_horizon == 4
    a, b = load_policy(out, "cpu"), load_policy(dst, "cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
