"""CPU tests of the diffusion-policy parts: config, normaliser, text encoder, networks, policy, checkpoints."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from taskweave.policies.diffusion.checkpoint import CheckpointError, load_checkpoint, load_policy, save_checkpoint
from taskweave.policies.diffusion.configuration import ConfigError, DiffusionConfig
from taskweave.policies.diffusion.modeling import ConditionalUnet1D, DiffusionPolicy, RgbEncoder
from taskweave.policies.diffusion.normalize import MinMaxNormalizer
from taskweave.policies.diffusion.text_encoder import (BuiltinTextEncoder, TextEncoderError, make_text_encoder)

STATE_DIM, ACTION_DIM = 11, 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest: tiny models run on one thread


def tiny_config(**kw) -> DiffusionConfig:
    base = dict(down_dims=(16, 32), diffusion_step_embed_dim=16, state_hidden_dim=32, state_feature_dim=16,
                text_embed_dim=32, skill_cond_dim=8, task_embed_dim=4, state_dim=STATE_DIM, action_dim=ACTION_DIM,
                num_tasks=3, num_skills=4, rgb_channels=(16, 16), num_keypoints=8, rgb_feature_dim=16)
    base.update(kw)
    return DiffusionConfig(**base)


def make_batch(cfg: DiffusionConfig, b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"state": torch.rand(b, cfg.obs_horizon, cfg.state_dim, generator=g),
             "action": torch.rand(b, cfg.pred_horizon, cfg.action_dim, generator=g) * 2 - 1,
             "skill_id": torch.randint(0, cfg.num_skills, (b,), generator=g),
             "task_id": torch.randint(0, cfg.num_tasks, (b,), generator=g)}
    if cfg.obs_mode == "rgb":
        batch["rgb"] = torch.randint(0, 256, (b, cfg.obs_horizon, *cfg.image_shape), generator=g, dtype=torch.uint8)
    return batch


def make_policy(cfg: DiffusionConfig, seed: int = 0) -> DiffusionPolicy:
    torch.manual_seed(seed)
    stats = {"state": {"min": torch.zeros(cfg.state_dim), "max": torch.ones(cfg.state_dim)},
             "action": {"min": -torch.ones(cfg.action_dim), "max": torch.ones(cfg.action_dim) * 0.5}}
    skills = BuiltinTextEncoder(cfg.text_embed_dim).encode([f"pick(block_{i})" for i in range(cfg.num_skills)])
    return DiffusionPolicy(cfg, skills, stats)


# ----------------------------------------------------------------------------- config
def test_config_defaults_follow_diffusion_policy():
    cfg = DiffusionConfig()
    assert (cfg.obs_horizon, cfg.pred_horizon, cfg.action_horizon) == (2, 16, 8)
    assert cfg.down_dims == (256, 512, 1024) and cfg.kernel_size == 5 and cfg.n_groups == 8
    assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type) == (100, "squaredcos_cap_v2", "epsilon")
    assert cfg.clip_sample and cfg.num_inference_steps == 10 and cfg.sampler == "ddim"
    assert (cfg.ema_power, cfg.ema_max_decay, cfg.lr, cfg.betas) == (0.75, 0.9999, 1e-4, (0.95, 0.999))
    assert (cfg.weight_decay, cfg.warmup_steps, cfg.lr_scheduler) == (1e-6, 500, "cosine")


def test_config_json_round_trip(tmp_path):
    cfg = tiny_config(obs_mode="rgb", image_shape=(24, 24, 3), crop_size=20, text_encoder="builtin")
    path = str(tmp_path / "cfg.json")
    cfg.save(path)
    loaded = DiffusionConfig.load(path)
    assert loaded == cfg and isinstance(loaded.down_dims, tuple) and loaded.image_shape == (24, 24, 3)
    assert json.load(open(path))["down_dims"] == [16, 32]


@pytest.mark.parametrize("data, field", [
    ({"obs_horizon": 0}, "obs_horizon"),
    ({"action_horizon": 20}, "action_horizon"),
    ({"down_dims": [30, 64]}, "down_dims"),
    ({"obs_mode": "depth"}, "obs_mode"),
    ({"lr": "fast"}, "lr"),
    ({"clip_sample": 1}, "clip_sample"),
    ({"sampler": "euler"}, "sampler"),
    ({"not_a_field": 1}, "not_a_field"),
])
def test_config_errors_name_the_field(data, field):
    with pytest.raises(ConfigError, match=field):
        DiffusionConfig.from_dict(data)


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        DiffusionConfig.load(str(bad))
    bad.write_text(json.dumps({"batch_size": -1}))
    with pytest.raises(ConfigError, match="bad.json.*batch_size"):
        DiffusionConfig.load(str(bad))


# ----------------------------------------------------------------------------- normaliser
def test_normalizer_maps_to_unit_range_and_round_trips():
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(500, 6)) * [1, 10, 0.01, 5, 1, 1]).astype(np.float32)
    data[:, 4] = 3.25  # a constant dimension
    norm = MinMaxNormalizer.from_data(data)
    x = torch.from_numpy(data)
    y = norm.normalize(x)
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    assert torch.allclose(y[:, [0, 1, 2, 3, 5]].min(0).values, torch.full((5,), -1.0))
    assert torch.allclose(y[:, [0, 1, 2, 3, 5]].max(0).values, torch.full((5,), 1.0))
    assert torch.all(y[:, 4] == 0)
    back = norm.unnormalize(y)
    assert torch.allclose(back, x, atol=1e-5, rtol=1e-6)
    assert torch.all(back[:, 4] == 3.25)  # the constant dimension comes back exactly
    again = MinMaxNormalizer.from_stats(norm.stats())
    assert torch.equal(again.normalize(x), y) and torch.equal(again.unnormalize(y), back)


def test_normalizer_stats_travel_in_state_dict():
    policy = make_policy(tiny_config())
    sd = policy.state_dict()
    assert torch.equal(sd["action_normalizer.max"], torch.full((ACTION_DIM,), 0.5))
    fresh = DiffusionPolicy(tiny_config())
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.stats()["action"]["min"], -torch.ones(ACTION_DIM))


# ----------------------------------------------------------------------------- text encoder
def test_builtin_text_encoder_is_stable_and_distinguishes_skills():
    texts = ["pick(red_block)", "pick(blue_block)", "place(red_block, green_bowl)",
             "place(green_bowl, red_block)", "push(red_block, (0.5, 0.1))", "pick(red_block_2)"]
    a = BuiltinTextEncoder(256).encode(texts)
    b = BuiltinTextEncoder(256).encode(texts)
    assert a.shape == (6, 256) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=1), torch.ones(6), atol=1e-5)
    sim = a @ a.T
    off = sim[~torch.eye(6, dtype=torch.bool)]
    assert off.max() < 0.9, "distinct skills must get distinct embeddings"
    # pinned values: changing the hashing silently breaks every trained checkpoint
    assert np.allclose(a[0, :4].numpy(), [0.07167082, -0.00764325, -0.04164892, -0.01155594], atol=1e-6)
    assert np.allclose(a[2, :4].numpy(), [-0.00559989, 0.02627353, -0.03896014, 0.03124435], atol=1e-6)


def test_make_text_encoder_specs_and_errors(tmp_path):
    assert make_text_encoder("builtin:48").dim == 48
    assert make_text_encoder("builtin", dim=64).encode(["pick(a)"]).shape == (1, 64)
    with pytest.raises(TextEncoderError, match="no/such/model"):
        make_text_encoder(str(tmp_path / "no/such/model"))
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(TextEncoderError, match="sentence-transformers"):
            make_text_encoder(str(tmp_path))


# ----------------------------------------------------------------------------- networks
def test_unet_keeps_shape_and_uses_condition():
    torch.manual_seed(0)
    net = ConditionalUnet1D(input_dim=5, global_cond_dim=12, diffusion_step_embed_dim=16, down_dims=(16, 32, 64))
    x = torch.randn(3, 16, 5)
    t = torch.tensor([0, 50, 99])
    c = torch.randn(3, 12)
    out = net(x, t, c)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, c + 1.0)), "FiLM condition must change the output"
    assert not torch.allclose(out, net(x, t + 1, c)), "timestep must change the output"


def test_rgb_encoder_random_crop_in_training_centre_crop_in_eval():
    enc = RgbEncoder(crop_size=8, channels=(16,), num_keypoints=4, out_dim=8)
    img = torch.arange(12 * 12, dtype=torch.float32).reshape(1, 1, 12, 12).expand(16, 3, 12, 12)
    enc.eval()
    assert torch.equal(enc.crop(img), img[:, :, 2:10, 2:10])
    enc.train()
    crops = enc.crop(img)
    assert crops.shape == (16, 3, 8, 8)
    corners = crops[:, 0, 0, 0]
    assert len(set(corners.tolist())) > 1, "random crop must vary across the batch"
    for k in range(16):  # every crop is a contiguous window of the image
        r, c = divmod(int(corners[k]), 12)
        assert torch.equal(crops[k], img[k, :, r:r + 8, c:c + 8])
    frames = torch.randint(0, 256, (2, 12, 12, 3), dtype=torch.uint8)
    assert enc(frames).shape == (2, 8)


@pytest.mark.parametrize("mode", ["state", "rgb"])
def test_policy_loss_and_sampling(mode):
    kw = dict(obs_mode="rgb", image_shape=(20, 20, 3), crop_size=16) if mode == "rgb" else {}
    cfg = tiny_config(**kw)
    policy = make_policy(cfg)
    batch = make_batch(cfg)
    loss = policy(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert policy.unet.final_conv[1].weight.grad.abs().sum() > 0
    policy.eval()
    chunk = policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(1))
    assert chunk.shape == (4, cfg.pred_horizon, ACTION_DIM)
    same = policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(1))
    other = policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(2))
    assert torch.equal(chunk, same) and not torch.allclose(chunk, other)
    # clip_sample keeps samples inside the action range seen in the data
    assert chunk.min() >= -1 - 1e-5 and chunk.max() <= 0.5 + 1e-5
    ddpm = policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(1), sampler="ddpm")
    assert ddpm.shape == chunk.shape and not torch.allclose(ddpm, chunk)
    by_embed = dict(batch, skill_embed=policy.skill_table[batch["skill_id"]])
    del by_embed["skill_id"]
    assert torch.equal(policy.predict_action_chunk(by_embed, generator=torch.Generator().manual_seed(1)), chunk)


def test_select_action_keeps_obs_history_and_receding_horizon(monkeypatch):
    cfg = tiny_config()
    policy = make_policy(cfg).eval()
    calls = []

    def fake_chunk(batch, generator=None):
        calls.append(batch["state"].clone())
        n = len(calls)
        return torch.arange(cfg.pred_horizon, dtype=torch.float32).reshape(1, -1, 1).expand(
            batch["state"].shape[0], -1, ACTION_DIM) + 100 * n

    monkeypatch.setattr(policy, "predict_action_chunk", fake_chunk)
    policy.reset()
    obs = lambda k: {"state": torch.full((2, STATE_DIM), float(k)), "skill_id": torch.tensor([0, 1]),  # noqa: E731
                     "task_id": torch.tensor([0, 2])}
    got = [policy.select_action(obs(k))[0, 0].item() for k in range(cfg.action_horizon + 1)]
    first = cfg.obs_horizon - 1
    assert got[:cfg.action_horizon] == [100 + first + i for i in range(cfg.action_horizon)]
    assert got[cfg.action_horizon] == 200 + first  # replanned after action_horizon steps
    assert len(calls) == 2
    assert torch.all(calls[0][:, 0] == 0) and torch.all(calls[0][:, 1] == 0)  # first obs repeated
    assert torch.all(calls[1][:, 0] == cfg.action_horizon - 1) and torch.all(calls[1][:, 1] == cfg.action_horizon)
    policy.reset()
    policy.select_action(obs(42))
    assert len(calls) == 3 and torch.all(calls[2] == 42)


# ----------------------------------------------------------------------------- checkpoints
def _train_steps(policy, n=3):
    from taskweave.policies.train import EMA
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    ema = EMA(policy.parameters(), max_decay=0.9, power=0.75)
    for k in range(n):
        opt.zero_grad()
        policy(make_batch(policy.config, seed=k)).backward()
        opt.step()
        ema.step(policy.parameters())
    return opt, ema


def test_checkpoint_round_trip_gives_identical_actions(tmp_path):
    cfg = tiny_config()
    policy = make_policy(cfg)
    opt, ema = _train_steps(policy)
    path = save_checkpoint(str(tmp_path / "ck" / "last.pt"), policy, step=3, skills=["a", "b", "c", "d"],
                           tasks=["t0", "t1", "t2"], ema=ema, optimizer=opt)
    assert sorted(os.listdir(tmp_path / "ck")) == ["last.pt"], "no temp files left behind"
    raw = load_policy(path, use_ema=False)
    policy.eval()
    for k, v in policy.state_dict().items():
        assert torch.equal(v, raw.state_dict()[k]), k
    batch = make_batch(cfg, seed=9)
    want = policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(5))
    got = raw.predict_action_chunk(batch, generator=torch.Generator().manual_seed(5))
    assert torch.equal(want, got)
    assert raw.skills == ["a", "b", "c", "d"] and raw.tasks == ["t0", "t1", "t2"] and raw.step == 3
    smooth = load_policy(str(tmp_path / "ck"), use_ema=True)  # folder form resolves last.pt
    for p, s in zip(smooth.parameters(), ema.shadow_params):
        assert torch.equal(p, s)
    assert not all(torch.equal(p, q) for p, q in zip(smooth.parameters(), raw.parameters()))
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3 and ckpt["config"] == cfg and ckpt["optimizer"]["state"]


def test_corrupt_checkpoints_raise_error_naming_the_file(tmp_path):
    policy = make_policy(tiny_config())
    good = save_checkpoint(str(tmp_path / "good.pt"), policy, step=1, skills=["a"] * 4, tasks=["t"] * 3)
    data = open(good, "rb").read()
    cases = {"truncated.pt": data[: len(data) // 2], "empty.pt": b""}
    flipped = bytearray(data)
    mid = data.index(b"data/0") + 400  # inside the first tensor's bytes
    flipped[mid] ^= 0xFF
    cases["flipped.pt"] = bytes(flipped)
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(str(tmp_path / name))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt.*missing"):
        load_checkpoint(str(tmp_path / "foreign.pt"))
    with pytest.raises(CheckpointError, match="nowhere.pt"):
        load_policy(str(tmp_path / "nowhere.pt"))
    with pytest.raises(CheckpointError, match="emptydir"):
        os.makedirs(tmp_path / "emptydir")
        load_checkpoint(str(tmp_path / "emptydir"))


def test_export_keeps_the_ema_policy_and_drops_training_state(tmp_path):
    """An exported checkpoint predicts exactly like the EMA policy it came from, without optimizer state."""
    import torch
    from taskweave.policies.diffusion.checkpoint import export_policy, load_checkpoint, load_policy, save_checkpoint
    from taskweave.policies.diffusion.configuration import DiffusionConfig
    from taskweave.policies.diffusion.modeling import DiffusionPolicy

    cfg = DiffusionConfig(down_dims=(16, 32), diffusion_step_embed_dim=16, state_dim=4, action_dim=2, num_tasks=1,
                          num_skills=1, state_feature_dim=16, state_hidden_dim=16).validate()
    policy = DiffusionPolicy(cfg)
    opt = torch.optim.AdamW(policy.parameters())
    src = save_checkpoint(str(tmp_path / "full.pt"), policy, step=7, skills=["pick(block)"], tasks=["T"],
                          optimizer=opt)
    dst = export_policy(src, str(tmp_path / "small.pt"), use_ema=False)
    assert load_checkpoint(dst)["optimizer"] is None
    a, b = load_policy(src), load_policy(dst)
    batch = {"state": torch.zeros(1, cfg.obs_horizon, 4), "skill_id": torch.zeros(1, dtype=torch.long),
             "task_id": torch.zeros(1, dtype=torch.long)}
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(a.predict_action_chunk(batch, generator=g1), b.predict_action_chunk(batch, generator=g2))
    assert b.step == 7 and b.skills == ["pick(block)"]


def test_select_device_is_one_picker_with_one_error(monkeypatch):
    """'auto' falls back to the CPU; unknown names and CUDA without a GPU raise a UserError naming value and choices."""
    from taskweave.policies.device import DeviceError, select_device
    from taskweave.policies.diffusion import make_policy
    from taskweave.sim.errors import UserError

    assert issubclass(DeviceError, UserError)
    assert select_device("cpu") == torch.device("cpu") == select_device(torch.device("cpu"))
    for bad in ("bogus", "cuda:x", "gpu", 3):
        with pytest.raises(DeviceError, match="choices: auto, cpu, cuda, cuda:N"):
            select_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu") == select_device("auto", local_rank=3)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=f"'{name}'.*no CUDA GPU"):
            select_device(name)
    cfg = DiffusionConfig(state_dim=3, action_dim=2, num_tasks=1, down_dims=(16, 32), text_embed_dim=8)
    with pytest.raises(DeviceError, match="bogus"):
        make_policy(cfg, ["pick(a)"], device="bogus")
    p = make_policy(cfg, ["pick(a)", "place(a, b)"], ["T"])
    assert p.skills == ["pick(a)", "place(a, b)"] and p.tasks == ["T"] and p.skill_table.shape == (2, 8)
