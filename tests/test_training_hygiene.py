"""Training hygiene: validation loss and action MSE, keep-best, exact kill + resume, monotone LR on extension."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from taskweave.envs.observation import PROPRIO_DIM
from taskweave.policies import train as train_mod
from taskweave.policies.dataset import DatasetWriter
from taskweave.policies.diffusion.checkpoint import load_checkpoint
from taskweave.policies.diffusion.configuration import DiffusionConfig, robot_config
from taskweave.policies.resume import LRSchedule, ResumableSampler, data_position
from taskweave.policies.train import train

SKILLS = ("pick the red block", "place the red block in the green bowl")


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest: tiny models run on one thread


def write_demos(path, robot: bool, n: int = 4, seg_lens=(9, 7), size: int = 40, tasks=("t",)) -> str:
    """Synthetic two-skill episodes (the last one in val; several tasks take turns); robot: frames of two cameras
    and proprio too."""
    w = DatasetWriter(str(path), tasks=list(tasks), backend="synthetic", proprio_layout="synthetic" if robot else None)
    for seed in range(n):
        task = tasks[seed % len(tasks)]
        rng = np.random.default_rng(seed)
        t = sum(seg_lens)
        state = rng.normal(size=(t, 6)).astype(np.float32)
        action = np.tanh(np.cumsum(rng.normal(size=(t, 5)), 0) * 0.2).astype(np.float32)
        skills = [SKILLS[k] for k, m in enumerate(seg_lens) for _ in range(m)]
        kw = {}
        if robot:
            kw = dict(frames={c: rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8) for c in ("front", "wrist")},
                      proprio=rng.normal(size=(t, PROPRIO_DIM)).astype(np.float32))
        if task != tasks[0]:
            action = action + 5.0          # another task's actions lie elsewhere: its stats differ
        w.add_episode(task, seed, state, action, skills, split="val" if seed == n - 1 else "train",
                      segment_lengths=list(seg_lens), **kw)
    w.finalize()
    return str(path)


def tiny(robot: bool, **kw) -> DiffusionConfig:
    base = dict(down_dims=(16, 32), diffusion_step_embed_dim=16, skill_cond_dim=8, pred_horizon=8, obs_horizon=2,
                action_horizon=4, num_train_timesteps=20, num_inference_steps=3, lr=3e-3, warmup_steps=2,
                batch_size=8, steps=6, log_every=1, checkpoint_every=3, val_every=2, val_batches=1, use_ema=True)
    base.update(kw)
    if robot:
        return robot_config(**{**dict(crop_size=36, vision_width=8, num_keypoints=4, rgb_feature_dim=8,
                                      done_hidden_dim=16), **base})
    return DiffusionConfig(**{**dict(state_hidden_dim=32, state_feature_dim=16, text_embed_dim=16,
                                     text_encoder="builtin:16", task_embed_dim=4), **base})


@pytest.fixture(scope="module", params=["state", "robot"])
def demos(request, tmp_path_factory):
    robot = request.param == "robot"
    return write_demos(tmp_path_factory.mktemp(request.param), robot), robot


def quiet(*a, **k):
    pass


def assert_same_training_state(a: str, b: str) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["step"] == cb["step"]
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for x, y in zip(ca["ema"]["shadow_params"], cb["ema"]["shadow_params"]):
        assert torch.equal(x, y)
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert ca["lr_scheduler"]["_last_lr"] == cb["lr_scheduler"]["_last_lr"]
    assert torch.equal(ca["extra"]["rng"][0]["torch"], cb["extra"]["rng"][0]["torch"])


def kill_after_step_3(data: str, out: str, cfg, monkeypatch) -> None:
    """Run a 6-step training that dies right after its step-3 checkpoint is on disk."""
    real_save = train_mod.save_checkpoint

    def save_then_die(path, *a, **k):
        written = real_save(path, *a, **k)
        if path.endswith("last.pt") and k["step"] == 3:
            raise KeyboardInterrupt("killed")
        return written

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(data, out, cfg, device="cpu", progress=False, log=quiet)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))["step"] == 3


def test_kill_and_resume_equals_a_straight_run(demos, tmp_path, monkeypatch):
    data, robot = demos
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    train(data, straight, tiny(robot), device="cpu", progress=False, log=quiet)
    kill_after_step_3(data, killed, tiny(robot), monkeypatch)
    res = train(data, killed, None, device="cpu", resume=True, progress=False, log=quiet)
    assert res.step == 6
    assert_same_training_state(os.path.join(straight, "checkpoints", "last.pt"),
                               os.path.join(killed, "checkpoints", "last.pt"))
    lines = lambda run, name: [json.loads(x) for x in open(os.path.join(run, name))]  # noqa: E731
    drop = lambda recs: [{k: v for k, v in r.items() if k not in ("time", "samples_per_s")} for r in recs]  # noqa: E731
    assert drop(lines(straight, "metrics.jsonl")) == drop(lines(killed, "metrics.jsonl"))
    assert len(lines(killed, "metrics.jsonl")) == 6
    assert drop(lines(straight, "val_metrics.jsonl")) == drop(lines(killed, "val_metrics.jsonl"))


def test_a_resume_without_the_rng_states_is_not_the_same_run(demos, tmp_path, monkeypatch):
    """The check above can fail: reseeding on resume (what train did before) gives other weights."""
    from taskweave.policies.diffusion.checkpoint import _tensor_crc
    data, robot = demos
    straight, killed = str(tmp_path / "a"), str(tmp_path / "b")
    train(data, straight, tiny(robot), device="cpu", progress=False, log=quiet)
    kill_after_step_3(data, killed, tiny(robot), monkeypatch)
    last = os.path.join(killed, "checkpoints", "last.pt")
    ck = torch.load(last, weights_only=True)
    ck["extra"].pop("rng")
    ck.pop("checksum")
    ck["checksum"] = _tensor_crc(ck)
    torch.save(ck, last)
    logs = []
    train(data, killed, None, device="cpu", resume=True, progress=False, log=logs.append)
    assert any("not exact" in str(m) for m in logs)
    a = load_checkpoint(os.path.join(straight, "checkpoints", "last.pt"))["model"]
    b = load_checkpoint(os.path.join(killed, "checkpoints", "last.pt"))["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_validation_loss_action_mse_and_keep_best(demos, tmp_path):
    data, robot = demos
    out = str(tmp_path / "run")
    train(data, out, tiny(robot, steps=8, lr=1e-2), device="cpu", progress=False, log=quiet)
    recs = [json.loads(x) for x in open(os.path.join(out, "val_metrics.jsonl"))]
    assert [r["step"] for r in recs] == [2, 4, 6, 8]
    want = {"val_loss", "val_diffusion", "val_action_mse"} | ({"val_done"} if robot else set())
    assert all(want <= set(r) and all(math.isfinite(r[k]) for k in want) for r in recs)
    if robot:
        assert all(abs(r["val_loss"] - r["val_diffusion"] - r["val_done"]) < 1e-5 for r in recs)
    best = min(recs, key=lambda r: r["val_loss"])
    ck = load_checkpoint(os.path.join(out, "checkpoints", "best.pt"))
    assert ck["step"] == best["step"] and abs(ck["extra"]["val_loss"] - best["val_loss"]) < 1e-9
    assert [r["best"] for r in recs] == [r["val_loss"] <= min(q["val_loss"] for q in recs[:i + 1])
                                         for i, r in enumerate(recs)]
    train_recs = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert all("diffusion" in r for r in train_recs) and all(("done" in r) == robot for r in train_recs)
    last = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
    assert last["extra"]["best_val_loss"] == best["val_loss"], "a resumed run knows the best so far"


def test_extending_steps_on_resume_keeps_the_lr_monotone(demos, tmp_path, monkeypatch):
    data, robot = demos
    out = str(tmp_path / "run")
    kill_after_step_3(data, out, tiny(robot, steps=6, warmup_steps=2), monkeypatch)
    train(data, out, None, device="cpu", steps=12, resume=True, progress=False, log=quiet)
    lrs = [json.loads(x)["lr"] for x in open(os.path.join(out, "metrics.jsonl"))]
    assert len(lrs) == 12
    after = lrs[1:]   # the LR each logged step leaves for the next; warm-up ends at step 2
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:])), lrs
    assert lrs[2] == pytest.approx(3e-3 * LRSchedule("cosine", 2, 6)(3)), "continues from where it was"
    assert lrs[10] > 0 and lrs[-1] == 0.0
    assert LRSchedule("cosine", 2, 12)(4) > lrs[2] / 3e-3, "rebuilding the cosine over 12 steps jumps back up"
    with pytest.raises(train_mod.TrainError, match="LR 0"):   # a finished cosine cannot be extended
        train(data, out, None, device="cpu", steps=20, resume=True, progress=False, log=quiet)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "constant_with_warmup"])
def test_lr_schedule_matches_diffusers_and_extends_down_from_where_it_is(kind):
    from diffusers.optimization import get_scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_scheduler(kind, opt, num_warmup_steps=5, num_training_steps=40)
    ours = LRSchedule(kind, 5, 40)
    assert all(abs(ours(s) - ref.lr_lambdas[0](s)) < 1e-12 for s in range(41))   # (diffusers rises again past the end)
    ours.extend(20, 80)
    vals = [ours(s) for s in range(5, 81)]
    assert all(b <= a + 1e-12 for a, b in zip(vals, vals[1:]))
    assert ours(20) == pytest.approx(LRSchedule(kind, 5, 40)(20))
    if kind in ("cosine", "linear"):
        assert ours(80) == pytest.approx(0.0, abs=1e-12) and ours(60) > 0
    early = LRSchedule(kind, 5, 40)
    early.extend(3, 80)   # still warming up: the decay simply spans the new total
    assert early.restarts == [] and early.end == 80


def test_resumable_sampler_continues_the_epoch_where_it_stopped():
    ds = list(range(23))
    full = ResumableSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3)
    full.set_epoch(4)
    order = list(full)
    part = ResumableSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3)
    part.set_epoch(4)
    part.skip = 10
    assert len(part) == 13 and list(part) == order[10:]
    assert len(part) == 23 and list(part) == order, "the skip applies to one epoch only"
    assert data_position(7, 3) == (2, 1) and data_position(6, 3) == (2, 0)


def test_no_val_episodes_means_no_validation(tmp_path):
    w = DatasetWriter(str(tmp_path / "d"), tasks=["t"], backend="synthetic")
    rng = np.random.default_rng(0)
    for seed in range(2):
        w.add_episode("t", seed, rng.normal(size=(12, 6)).astype(np.float32),
                      rng.uniform(-1, 1, (12, 5)).astype(np.float32), SKILLS[0])
    w.finalize()
    logs = []
    out = str(tmp_path / "run")
    train(str(tmp_path / "d"), out, tiny(False, steps=2), device="cpu", progress=False, log=logs.append)
    assert not os.path.exists(os.path.join(out, "val_metrics.jsonl"))
    assert not os.path.exists(os.path.join(out, "checkpoints", "best.pt"))
    assert any("no val episodes" in str(m) for m in logs)


def test_train_tasks_trains_on_those_episodes_only_and_a_resume_keeps_them(tmp_path, capsys):
    """`--tasks` (config train_tasks): the windows, val batches and normaliser stats come from those tasks'
    episodes alone; an unknown name and a changed seed or task list on --resume are one-line errors."""
    from taskweave.cli import main
    data = write_demos(tmp_path / "two", robot=False, n=6, tasks=("t", "u"))
    out = str(tmp_path / "only_u")
    res = train(data, out, tiny(False, steps=2), device="cpu", progress=False, log=quiet, tasks=["u"], seed=7)
    info = json.load(open(os.path.join(out, "run_info.json")))
    assert info["train_tasks"] == ["u"] and info["tasks"] == ["t", "u"] and info["num_train_episodes"] == 2
    ckpt = load_checkpoint(res.checkpoint)
    assert ckpt["config"].train_tasks == ("u",) and ckpt["config"].seed == 7
    assert float(ckpt["normalizer"]["action"]["min"].min()) > 3.0, "stats of u's actions (shifted by +5) only"
    everything = train(data, str(tmp_path / "all"), tiny(False, steps=2), device="cpu", progress=False, log=quiet)
    assert float(load_checkpoint(everything.checkpoint)["normalizer"]["action"]["min"].min()) < 0.0
    assert main(["train", "--data", data, "--out", str(tmp_path / "bad"), "--tasks", "u,nope", "--device", "cpu",
                 "--no-progress"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0] and "t, u" in err[0], err
    assert main(["train", "--data", data, "--out", out, "--resume", "--seed", "8", "--device", "cpu",
                 "--no-progress"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keeps the run's seed" in err[0], err
