"""The robot-input policy: cameras (front, wrist) + proprioception + a MiniLM skill sentence, and a done head."""
from __future__ import annotations

import hashlib
import os
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from taskweave.envs import make_env
from taskweave.envs.observation import PROPRIO_DIM, proprio_features, skill_sentence
from taskweave.policies.diffusion import load_checkpoint, load_policy, make_policy, save_checkpoint
from taskweave.policies.diffusion.configuration import ConfigError, DiffusionConfig, policy_inputs, robot_config
from taskweave.policies.diffusion.modeling import done_targets
from taskweave.policies.diffusion.text_encoder import (MINILM_SHA256, MiniLMEncoder, TextEncoderError,
                                                       make_text_encoder, minilm_zip_path)
from taskweave.policies.diffusion.vision import (RgbCameraEncoder, ResNet18GN, SpatialSoftmax, VisionEncoder,
                                                 feature_map_size)
from taskweave.sim import robot as R
from taskweave.sim.geometry import quat_matrix
from taskweave.sim.skill_types import SkillCall

A = 5  # action dim


def tiny_robot_config(**kw) -> DiffusionConfig:
    base = dict(proprio_dim=PROPRIO_DIM, action_dim=A, image_shape=(40, 40, 3), crop_size=36, vision_width=8,
                num_keypoints=4, rgb_feature_dim=8, down_dims=(16, 32), diffusion_step_embed_dim=16,
                skill_cond_dim=8, done_hidden_dim=16, obs_horizon=2, pred_horizon=8, action_horizon=4,
                num_train_timesteps=20, num_inference_steps=4)
    return robot_config(**{**base, **kw})


def tiny_stats() -> dict:
    return {"proprio": {"min": -torch.ones(PROPRIO_DIM) * 3, "max": torch.ones(PROPRIO_DIM) * 3},
            "action": {"min": -torch.ones(A), "max": torch.ones(A)}}


def robot_batch(cfg, texts, b=4, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, w, _ = cfg.image_shape
    batch = {f"rgb:{c}": torch.randint(0, 256, (b, cfg.obs_horizon, h, w, 3), generator=g, dtype=torch.uint8)
             for c in cfg.cameras}
    batch["proprio"] = torch.rand(b, cfg.obs_horizon, PROPRIO_DIM, generator=g) * 2 - 1
    batch["action"] = torch.rand(b, cfg.pred_horizon, A, generator=g) * 2 - 1
    batch["skill_id"] = torch.arange(b) % len(texts)
    batch["done"] = torch.from_numpy(np.stack([done_targets(i * 3, 12, cfg.pred_horizon) for i in range(b)]))
    return batch


# ----------------------------------------------------------------------------- vision
def test_resnet18_groupnorm_shapes_and_no_batchnorm():
    net = ResNet18GN(width=8)
    out = net(torch.randn(2, 3, 84, 84))
    assert out.shape == (2, 64, feature_map_size(84), feature_map_size(84)) == (2, 64, 3, 3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3, "ResNet-18: stem, 8 basic blocks of 2 convolutions, 3 projections"
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 for m in norms)
    assert {m.num_groups for m in ResNet18GN(width=64).modules() if isinstance(m, nn.GroupNorm)} == {4, 8, 16, 32}
    policy = make_policy(tiny_robot_config(), ["pick the red block"], stats=tiny_stats())
    kinds = {type(m).__name__ for m in policy.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)


def test_fewer_resnet_stages_keep_a_finer_keypoint_map():
    for stages, side in ((1, 14), (2, 7), (3, 4), (4, 2)):
        out = ResNet18GN(width=8, stages=stages)(torch.randn(1, 3, 56, 56))
        assert out.shape[-2:] == (side, side) == (feature_map_size(56, stages),) * 2
        assert out.shape[1] == 8 * 2 ** (stages - 1)
    with pytest.raises(ConfigError, match="vision_stages"):
        robot_config(vision_stages=5)
    with pytest.raises(ConfigError, match="crop_size"):
        robot_config(vision_stages=4, crop_size=32, image_shape=(40, 40, 3))
    assert robot_config(vision_stages=2, crop_size=32, image_shape=(40, 40, 3)).crop_size == 32


def test_film_makes_the_keypoints_depend_on_the_text_and_starts_as_identity():
    torch.manual_seed(0)
    plain, film = ResNet18GN(width=8, stages=2), ResNet18GN(width=8, stages=2, film_dim=5)
    film.load_state_dict({**plain.state_dict(), **{k: v for k, v in film.state_dict().items() if "films" in k}})
    x, a, b = torch.randn(2, 3, 40, 40), torch.randn(2, 5), torch.randn(2, 5)
    assert torch.allclose(film(x, a), plain(x)), "zero-initialised FiLM is the identity"
    with pytest.raises(ValueError, match="condition"):
        film(x)
    for lin in film.films:
        nn.init.normal_(lin.weight, std=0.5)
    assert not torch.allclose(film(x, a), film(x, b)), "another text must change the feature maps"
    enc = VisionEncoder(["front", "wrist"], crop_size=36, width=8, num_keypoints=4, out_dim=6, stages=2, film_dim=5)
    frames = {c: torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8) for c in ("front", "wrist")}
    enc.eval()
    assert enc(frames, a).shape == (2, 12)


def test_aux_head_trains_on_the_offsets_and_is_not_an_input():
    cfg = tiny_robot_config(vision_stages=2, vision_film=True, aux_loss_weight=1.0)
    policy = make_policy(cfg, ["pick the red block", "pick the blue block"], stats=tiny_stats())
    batch = robot_batch(cfg, ["a", "b"])
    with pytest.raises(KeyError, match="aux_target"):
        policy.loss_terms(batch)
    batch["aux_target"] = torch.full((4, 6), 0.05)
    terms = policy.loss_terms(batch)
    assert terms["aux"] is not None and torch.isfinite(terms["aux"])
    assert torch.allclose(terms["loss"], terms["diffusion"] + terms["done"] + terms["aux"])
    opt = torch.optim.Adam(policy.aux_head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = policy.loss_terms(batch)["aux"]
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.1 * first, "the head fits its targets"
    policy.eval()  # inference needs no aux_target: the labels never go in
    obs = {k: v for k, v in batch.items() if k not in ("action", "done", "aux_target")}
    assert policy.predict(obs)["action"].shape == (4, cfg.pred_horizon, A)


def test_camera_encoder_random_crop_in_training_centre_crop_in_eval():
    enc = RgbCameraEncoder(crop_size=8, width=8, num_keypoints=4, out_dim=6)
    img = torch.arange(12 * 12, dtype=torch.float32).reshape(1, 1, 12, 12).expand(16, 3, 12, 12)
    enc.eval()
    assert torch.equal(enc.crop(img), img[:, :, 2:10, 2:10])
    enc.train()
    crops = enc.crop(img)
    corners = crops[:, 0, 0, 0]
    assert crops.shape == (16, 3, 8, 8) and len(set(corners.tolist())) > 1, "random windows vary across the batch"
    for k in range(16):
        r, c = divmod(int(corners[k]), 12)
        assert torch.equal(crops[k], img[k, :, r:r + 8, c:c + 8])
    enc = RgbCameraEncoder(crop_size=64, width=8, num_keypoints=4, out_dim=6)   # 2x2 keypoint maps
    frames = torch.randint(0, 256, (4, 72, 72, 3), dtype=torch.uint8)
    enc.eval()
    assert torch.equal(enc(frames), enc(frames)) and enc(frames).shape == (4, 6)
    torch.manual_seed(0)
    enc.train()
    assert not torch.equal(enc.keypoints_of(frames), enc.keypoints_of(frames)), "training crops are random"


def test_spatial_softmax_keypoints_lie_in_unit_square_and_find_the_peak():
    kp = SpatialSoftmax()(torch.randn(3, 5, 7, 9) * 10)
    assert kp.shape == (3, 10) and kp.min() >= -1 and kp.max() <= 1
    x = torch.zeros(1, 2, 7, 9)
    x[0, 0, 0, 8] = 50.0   # top right
    x[0, 1, 6, 0] = 50.0   # bottom left
    assert torch.allclose(SpatialSoftmax()(x), torch.tensor([[1.0, -1.0, -1.0, 1.0]]), atol=1e-4)


def test_vision_encoder_per_camera_or_shared_weights():
    frames = {c: torch.randint(0, 256, (3, 40, 40, 3), dtype=torch.uint8) for c in ("front", "wrist")}
    per = VisionEncoder(("front", "wrist"), 36, width=8, num_keypoints=4, out_dim=6).eval()
    shared = VisionEncoder(("front", "wrist"), 36, width=8, num_keypoints=4, out_dim=6, shared=True).eval()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(per) == 2 * n(shared) and per.encoder_for("front") is not per.encoder_for("wrist")
    assert shared.encoder_for("front") is shared.encoder_for("wrist")
    out = shared(frames)
    assert out.shape == per(frames).shape == (3, 12)
    assert torch.allclose(out[:, 6:], shared.encoder(frames["wrist"]), atol=1e-6), "camera order kept"
    with pytest.raises(KeyError, match="wrist"):
        per({"front": frames["front"]})


# ----------------------------------------------------------------------------- language
def test_minilm_weights_are_checked_and_embeddings_carry_meaning():
    with zipfile.ZipFile(minilm_zip_path()) as zf:
        assert hashlib.sha256(zf.read("model.safetensors")).hexdigest() == MINILM_SHA256
    assert MINILM_SHA256.startswith("53aa5117")
    enc = make_text_encoder("minilm", 384)
    assert make_text_encoder("minilm", 384) is enc, "one encoder (and string cache) per process"
    texts = ["pick the red block", "pick up the red cube", "place the blue block in the green bowl",
             "place the red block in the green bowl", "place the red block in the orange bowl"]
    e = enc.encode(texts)
    assert e.shape == (5, 384) and torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    cos = e @ e.T
    assert cos[0, 1] > cos[0, 2], "a paraphrase is nearer than another skill"
    assert cos[3, 4] > cos[3, 0] and cos[3, 2] > cos[0, 2]
    assert cos[3, 4] < 0.999, "object names change the embedding"
    assert torch.equal(enc.encode("pick up the red cube")[0], e[1]) and "pick up the red cube" in enc._cache
    assert enc.identity() == {"spec": "minilm", "model_id": "sentence-transformers/all-MiniLM-L6-v2",
                              "sha256": MINILM_SHA256, "dim": 384}
    with pytest.raises(TextEncoderError, match="sha256"):
        MiniLMEncoder(sha256="0" * 64).encode("pick the red block")
    with pytest.raises(TextEncoderError, match="sha256"):
        make_text_encoder("minilm", 384, sha256="1" * 64)
    with pytest.raises(TextEncoderError, match="384"):
        make_text_encoder("minilm", 256)


def test_minilm_matches_sentence_transformers(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    with zipfile.ZipFile(minilm_zip_path()) as zf:
        zf.extractall(tmp_path)
    texts = ["pick the red block", "place the red block in the green bowl", "rotate the cyan bar by -58 degrees"]
    ref = st.SentenceTransformer(str(tmp_path), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.abs(make_text_encoder("minilm", 384).encode(texts).numpy() - ref).max() < 1e-5


def test_skill_sentences_name_the_objects():
    env = make_env("BlockInBowl", "mujoco")
    env.reset(seed=3)
    try:
        assert env.skill_sentence("pick(pink_block)") == "pick the pink block"
        assert env.skill_sentence("place(pink_block, green_bowl)") == "place the pink block in the green bowl"
        assert env.skill_sentence("place(pink_block, red_block)") == "place the pink block on the red block"
    finally:
        env.close()
    s = lambda t: skill_sentence(SkillCall.parse(t))  # noqa: E731
    assert s("place(red_block, green_bowl)") == "place the red block in the green bowl"
    assert s("push(red_block, purple_zone)") == "push the red block to the purple zone"
    assert s("rotate(cyan_bar, -58.4)") == "rotate the cyan bar by -58 degrees"
    assert s("place(cyan_block, (0.450, -0.086, 0.0))") == "place the cyan block at x 0.45 y -0.09"


# ----------------------------------------------------------------------------- observations
@pytest.mark.parametrize("backend", ["mujoco", "pybullet"])
def test_robot_observation_has_cameras_and_proprio_only(backend):
    env = make_env("BlockInBowl", backend, obs_mode="robot", image_size=24)
    try:
        obs, _ = env.reset(seed=3)
        assert set(obs) == {"rgb:front", "rgb:wrist", "proprio"} == set(env.observation_space.spaces)
        assert obs["rgb:wrist"].shape == (24, 24, 3) and obs["rgb:wrist"].dtype == np.uint8
        b = env.backend
        p = obs["proprio"]
        assert p.shape == (PROPRIO_DIM,) and np.allclose(p[:7], b.joint_positions()[:7], atol=1e-5)
        pos, q = b.ee_pose()
        rot = quat_matrix(q)
        assert np.allclose(p[7:10], pos, atol=1e-5) and np.allclose(p[10:16], np.r_[rot[:, 0], rot[:, 1]], atol=1e-5)
        assert abs(p[16] - b.gripper_width()) < 1e-6 and np.allclose(proprio_features(b), p)
        for i, name in enumerate(env.object_names):  # clear the view: the centre ray should meet the bare table
            b.set_object_pose(name, (0.3 + 0.1 * i, 0.5, 0.1))
        for step in range(2):  # the wrist camera rides on the hand: its centre ray meets the table where geometry says
            pos, q = b.ee_pose()
            rot = quat_matrix(q)
            local, _, _, fwd = R.wrist_camera_axes()
            eye = pos - rot @ np.array([0.0, 0.0, 0.105]) + rot @ local   # hand origin 0.105 m behind the TCP
            expect = eye[2] / -(rot @ fwd)[2]
            got = b.render("wrist", 33, 33, depth=True).depth[16, 16]
            assert abs(got - expect) < 0.015, (step, got, expect)
            for _ in range(3):
                env.apply_action([0.0, 0.0, 0.0, 1.0, -1.0])  # swing the camera by turning the hand
    finally:
        env.close()


def test_policy_inputs_and_privileged_follow_the_config():
    assert policy_inputs(robot_config()) == {"policy_inputs": ["rgb:front", "rgb:wrist", "proprio", "text"],
                                             "privileged": False, "training_labels": ["action", "done"]}
    aux = policy_inputs(robot_config(aux_loss_weight=1.0))
    assert aux["privileged"] is False and aux["training_labels"] == ["action", "done", "aux:object-tcp",
                                                                     "aux:target-tcp"]
    assert policy_inputs(robot_config(cameras=["wrist"]))["policy_inputs"] == ["rgb:wrist", "proprio", "text"]
    assert policy_inputs(DiffusionConfig()) == {"policy_inputs": ["state", "text", "task_id"], "privileged": True,
                                                "training_labels": ["action"]}
    assert policy_inputs(DiffusionConfig(obs_mode="rgb"))["privileged"] is True
    with pytest.raises(ConfigError, match="text_encoder"):
        robot_config(text_encoder="builtin", text_embed_dim=256)
    with pytest.raises(ConfigError, match="text_embed_dim"):
        DiffusionConfig(text_encoder="minilm", text_embed_dim=256)
    with pytest.raises(ConfigError, match="cameras"):
        robot_config(cameras=[])
    with pytest.raises(ConfigError, match="cameras"):
        robot_config(cameras=["front", "front"])
    with pytest.raises(ConfigError, match="crop_size"):
        robot_config(crop_size=32, image_shape=(40, 40, 3))


# ----------------------------------------------------------------------------- the policy
def test_done_targets_mark_the_last_step_of_a_segment_and_beyond():
    assert done_targets(0, 5, 8).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert done_targets(-2, 3, 4).tolist() == [0, 0, 0, 0]
    assert done_targets(10, 5, 3).tolist() == [1, 1, 1]


def test_robot_policy_forward_loss_predict_and_done_head(tmp_path):
    texts = ["pick the red block", "place the red block in the green bowl"]
    cfg = tiny_robot_config()
    torch.manual_seed(0)
    policy = make_policy(cfg, texts, stats=tiny_stats())
    assert policy.task_embedding is None and policy.state_encoder is None and policy.rgb_encoder is None
    assert policy.policy_inputs == ["rgb:front", "rgb:wrist", "proprio", "text"] and policy.privileged is False
    assert torch.allclose(policy.skill_table, make_text_encoder("minilm", 384).encode(texts))
    batch = robot_batch(cfg, texts)
    terms = policy.loss_terms(batch)
    assert torch.isfinite(terms["diffusion"]) and torch.isfinite(terms["done"])
    assert torch.allclose(terms["loss"], terms["diffusion"] + cfg.done_loss_weight * terms["done"])
    terms["loss"].backward()
    for name in ("vision_encoder.encoders.front", "vision_encoder.encoders.wrist", "done_head", "unet", "skill_proj"):
        grads = [p.grad for n, p in policy.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    with pytest.raises(KeyError, match="done"):
        policy.loss_terms({k: v for k, v in batch.items() if k != "done"})
    with pytest.raises(KeyError, match="rgb:wrist"):
        policy.loss_terms({k: v for k, v in batch.items() if k != "rgb:wrist"})

    opt = torch.optim.Adam(policy.done_head.parameters(), lr=3e-2)   # the head learns its targets
    with torch.no_grad():
        cond = policy.global_condition(batch)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(policy.done_head(cond), batch["done"])
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]

    policy.eval()
    out = policy.predict(batch, generator=torch.Generator().manual_seed(1))
    assert out["action"].shape == (4, cfg.pred_horizon, A) and out["done"].shape == (4, cfg.pred_horizon)
    assert out["done"].min() >= 0 and out["done"].max() <= 1
    assert torch.equal(out["done_now"], out["done"][:, cfg.obs_horizon - 1])
    assert ((out["done"] > 0.5).float() == batch["done"]).float().mean() > 0.9
    assert torch.equal(out["action"], policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(1)))
    other = dict(batch, skill_embed=policy.skill_table[1 - batch["skill_id"]])
    del other["skill_id"]
    assert not torch.allclose(policy.predict_done(other), out["done"]), "the text conditions the done head"

    path = save_checkpoint(str(tmp_path / "robot.pt"), policy, step=3, skills=texts, tasks=[])
    ckpt = load_checkpoint(path)
    assert ckpt["policy_inputs"] == ["rgb:front", "rgb:wrist", "proprio", "text"] and ckpt["privileged"] is False
    assert ckpt["text_encoder"] == {"spec": "minilm", "model_id": "sentence-transformers/all-MiniLM-L6-v2",
                                    "sha256": MINILM_SHA256, "dim": 384}
    assert "/" not in str(ckpt["text_encoder"]["spec"]), "named by id and hash, not a path"
    loaded = load_policy(path)
    assert loaded.privileged is False and loaded.text_encoder_identity["sha256"] == MINILM_SHA256
    again = loaded.predict(batch, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(again["action"], out["action"], atol=1e-5)
    assert torch.allclose(again["done"], out["done"], atol=1e-6)


def test_robot_policy_select_action_on_a_real_robot_observation():
    cfg = tiny_robot_config()
    policy = make_policy(cfg, ["pick the pink block"], stats=tiny_stats()).eval()
    env = make_env("BlockInBowl", "mujoco", obs_mode="robot", image_size=40)
    try:
        obs, _ = env.reset(seed=3)
        for _ in range(cfg.action_horizon + 1):
            frame = {k: torch.as_tensor(np.asarray(v))[None] for k, v in obs.items()}
            a = policy.select_action({**frame, "skill_id": torch.tensor([0])}, generator=torch.Generator())
            assert a.shape == (1, A) and torch.isfinite(a).all()
            obs, *_ = env.step(np.clip(a[0].numpy(), -1, 1))
    finally:
        env.close()


def test_shipped_state_checkpoint_still_loads_and_reaches_for_the_block():
    from taskweave.policies.runner import PolicyRunner
    from taskweave.wiring import shipped_checkpoint

    path = shipped_checkpoint()
    ckpt = load_checkpoint(path)
    assert ckpt["config"].obs_mode == "state" and not ckpt["config"].done_head
    assert ckpt["policy_inputs"] == ["state", "text", "task_id"] and ckpt["privileged"] is True
    assert ckpt["text_encoder"]["spec"] == "builtin"
    runner = PolicyRunner.from_checkpoint(path, num_envs=1, device="cpu", seed=0)
    assert runner.policy.privileged is True and runner.policy.done_head is None
    env = make_env("BlockInBowl", "mujoco")
    try:
        env.reset(seed=1001)
        call = env.oracle_plan()[0]
        assert call.name == "pick"
        tcp = env.backend.ee_pose()[0]
        target = env.symbolic_state().objects[call.args[0]].pos
        moves = []
        for _ in range(runner.action_horizon):
            state = env.policy_state(call)[: runner.config.state_dim]
            a = runner.act({"state": state[None]}, [env.skill_text(call)], [runner.task_index("BlockInBowl")])[0]
            moves.append(a[:2])
            env.apply_action(a)
        d = np.sum(moves, axis=0)
        want = (target - tcp)[:2]
        assert d @ want / (np.linalg.norm(d) * np.linalg.norm(want)) > 0.7, "the arm heads for the block"
        assert np.linalg.norm(env.backend.ee_pose()[0][:2] - target[:2]) < np.linalg.norm(tcp[:2] - target[:2])
    finally:
        env.close()


def test_shipped_rgb_checkpoint_is_robot_input_and_reaches_a_block():
    from taskweave.policies.controllers import policy_observation
    from taskweave.policies.runner import PolicyRunner
    from taskweave.wiring import shipped_checkpoint

    path = shipped_checkpoint("rgb")
    assert path and os.path.getsize(path) < 20e6
    ckpt = load_checkpoint(path)
    assert ckpt["policy_inputs"] == ["rgb:front", "rgb:wrist", "proprio", "text"] and ckpt["privileged"] is False
    assert ckpt["config"].vision_film and ckpt["config"].done_head and ckpt["text_encoder"]["spec"] == "minilm"
    torch.set_num_threads(1)
    runner = PolicyRunner.from_checkpoint(path, num_envs=2, device="cpu", seed=0)
    cfg = runner.config
    envs = [make_env("BlockInBowl", "mujoco", obs_mode="robot", image_size=int(cfg.image_shape[0]),
                     cameras=cfg.cameras) for _ in range(2)]
    try:
        for env in envs:
            env.reset(seed=20_000_001)   # a test seed; the two envs differ only in which block the sentence names
        blocks = [n for n, o in envs[0].symbolic_state().objects.items() if o.shape != "container"]
        calls = [SkillCall("pick", (b,)) for b in blocks[:2]]
        texts = [envs[0].skill_sentence(c) for c in calls]
        start = envs[0].backend.ee_pose()[0]
        first = None
        for _ in range(12):   # the approach: over a second of control, before any grasp
            obs = [policy_observation(runner, e, c) for e, c in zip(envs, calls)]
            acts, _ = runner.act_done({k: np.stack([o[k] for o in obs]) for k in obs[0]}, texts)
            first = acts if first is None else first
            for e, a in zip(envs, acts):
                e.apply_action(a)
        assert not np.allclose(first[0], first[1], atol=1e-3), "the sentence must change the actions"
        for env in envs:   # only frames, proprio and text went in; it still finds a block from the cameras
            tcp = env.backend.ee_pose()[0]
            near = min(float(np.linalg.norm(env.symbolic_state().objects[b].pos[:2] - tcp[:2])) for b in blocks)
            assert near < 0.06 and tcp[2] < start[2] - 0.1, (near, tcp, start)
    finally:
        for env in envs:
            env.close()
