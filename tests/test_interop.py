"""Dataset export/import (LeRobotDataset v3.0, robomimic HDF5), ONNX policy export, TensorBoard logging."""
from __future__ import annotations

import glob
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import zarr

from taskweave.cli import main as cli
from taskweave.policies.dataset import DatasetWriter
from taskweave.policies.diffusion.checkpoint import load_policy, save_checkpoint
from taskweave.policies.diffusion.configuration import DiffusionConfig
from taskweave.policies.diffusion.modeling import DiffusionPolicy
from taskweave.policies.diffusion.text_encoder import BuiltinTextEncoder
from taskweave.policies.interop import InteropError, export_dataset, import_dataset

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
h5py = pytest.importorskip("h5py")
av = pytest.importorskip("av")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKILLS = ("pick(block)", "place(block, container)", "push(block, (x, y))")
# (task, seed, split, segments as (skill index, length)); splits interleaved, a skill repeated across segments
EPISODES = [("stack", 0, "train", [(0, 7), (1, 5)]), ("sort", 10_000_000, "val", [(2, 4), (2, 3), (0, 6)]),
            ("stack", 1, "train", [(0, 9)]), ("sort", 20_000_000, "test", [(1, 5), (0, 4)]),
            ("sort", 2, "train", [(2, 6), (1, 6)])]
RGB = (12, 10, 3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest: tiny models run on one thread


def write_dataset(path, rgb=True):
    """A small taskweave dataset: 5 episodes, 2 tasks, 3 skills, all three splits, frames when rgb."""
    rng = np.random.default_rng(0)
    w = DatasetWriter(str(path), tasks=["stack", "sort"], backend="mujoco", control_hz=10.0,
                      extra={"state_layout": "robot(7) + skill_features(4)"})
    for task, seed, split, segs in EPISODES:
        t = sum(n for _, n in segs)
        w.add_episode(task, seed, rng.standard_normal((t, 11)).astype(np.float32),
                      rng.uniform(-1, 1, (t, 5)).astype(np.float32), [SKILLS[k] for k, n in segs for _ in range(n)],
                      rgb=rng.integers(0, 256, (t, *RGB), dtype=np.uint8) if rgb else None, split=split,
                      segment_lengths=[n for _, n in segs], info={"seed_note": seed % 7})
    w.finalize()
    return str(path)


def load(path):
    root = zarr.open_group(os.path.join(path, "data.zarr"), mode="r")
    arrays = {k: root[k][:] for k in ("data/state", "data/action", "data/skill_id", "data/task_id",
                                      "meta/episode_ends", "meta/segment_ends")}
    if "rgb" in root["data"]:
        arrays["data/rgb"] = root["data/rgb"][:]
    meta = json.load(open(os.path.join(path, "meta.json")))
    return arrays, meta


def assert_same_dataset(a, b):
    (xa, ma), (xb, mb) = load(a), load(b)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype and np.array_equal(xa[k], xb[k]), k
    assert (ma["tasks"], ma["skills"], ma["obs"], ma["action_dim"]) == (mb["tasks"], mb["skills"], mb["obs"],
                                                                        mb["action_dim"])
    keep = ("task", "seed", "split", "start", "length", "num_segments", "info")
    assert [{k: e[k] for k in keep} for e in ma["episodes"]] == [{k: e[k] for k in keep} for e in mb["episodes"]]
    assert (ma["backend"], ma["control_hz"]) == (mb["backend"], mb["control_hz"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tw") / "demos")


@pytest.fixture(scope="module")
def lerobot_dir(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lr") / "lerobot")
    assert cli(["export-dataset", data, out, "--format", "lerobot"]) == 0
    return out


# ----------------------------------------------------------------------------- LeRobotDataset v3.0
def test_lerobot_round_trip_gives_the_same_arrays(lerobot_dir, tmp_path):
    back = str(tmp_path / "back")
    assert cli(["import-dataset", lerobot_dir, back, "--format", "lerobot"]) == 0
    assert_same_dataset(_src(lerobot_dir), back)


def _src(lerobot_dir):
    return json.load(open(os.path.join(lerobot_dir, "meta", "taskweave.json")))["exported_from"]


def test_lerobot_files_roll_over_at_episode_bounds_and_still_round_trip(data, tmp_path):
    out = str(tmp_path / "small_files")
    export_dataset(data, out, "lerobot", data_file_mb=1e-4, video_file_mb=0.02)
    assert len(glob.glob(os.path.join(out, "data", "chunk-000", "*.parquet"))) == 5  # one episode each (~100 B limit)
    videos = glob.glob(os.path.join(out, "videos", "observation.images.front", "chunk-000", "*.mp4"))
    assert 1 < len(videos) < 5
    eps = pq.read_table(os.path.join(out, "meta", "episodes", "chunk-000", "file-000.parquet")).to_pylist()
    assert [e["data/file_index"] for e in eps] == [0, 1, 2, 3, 4]
    assert any(e["videos/observation.images.front/from_timestamp"] > 0 for e in eps)  # files hold several episodes
    import_dataset(out, str(tmp_path / "back"), "lerobot")
    assert_same_dataset(data, str(tmp_path / "back"))


def test_lerobot_export_has_the_v3_layout_and_dtypes(lerobot_dir):
    """Checked with pyarrow against LeRobot v3.0 (lerobot.datasets.utils: paths, DEFAULT_FEATURES, stats keys)."""
    info = json.load(open(os.path.join(lerobot_dir, "meta", "info.json")))
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["total_episodes"] == 5
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["splits"] == {"train": "0:3", "val": "3:4", "test": "4:5"}  # written train, val, test
    f = info["features"]
    assert f["observation.state"] == {"dtype": "float32", "shape": [11],
                                      "names": [*(f"robot_{i}" for i in range(7)), *(f"skill_features_{i}" for i in range(4))]}
    assert f["action"]["shape"] == [5] and f["action"]["names"] == ["dx", "dy", "dz", "dyaw", "gripper"]
    cam = f["observation.images.front"]
    assert cam["dtype"] == "video" and cam["shape"] == list(RGB) and cam["info"]["video.fps"] == 10
    for k, t in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
                 ("task_index", "int64")):
        assert f[k] == {"dtype": t, "shape": [1], "names": None}

    table = pq.read_table(os.path.join(lerobot_dir, "data", "chunk-000", "file-000.parquet"))
    s = table.schema
    assert s.field("observation.state").type == pa.list_(pa.float32(), 11)
    assert s.field("action").type == pa.list_(pa.float32(), 5)
    assert s.field("timestamp").type == pa.float32() and s.field("task_index").type == pa.int64()
    assert table.column("index").to_pylist() == list(range(table.num_rows)) and table.num_rows == info["total_frames"]

    tasks = pq.read_table(os.path.join(lerobot_dir, "meta", "tasks.parquet"))
    assert tasks.column("task").to_pylist() == list(SKILLS) and tasks.column("task_index").to_pylist() == [0, 1, 2]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # pandas: indexed by task

    eps = pq.read_table(os.path.join(lerobot_dir, "meta", "episodes", "chunk-000", "file-000.parquet")).to_pylist()
    assert [e["taskweave/split"] for e in eps] == ["train", "train", "train", "val", "test"]
    assert [e["taskweave/index"] for e in eps] == [0, 2, 4, 1, 3]
    ep = eps[3]  # the val episode: skills pushed, pushed again (two segments), then pick
    assert ep["tasks"] == [SKILLS[2], SKILLS[0]] and ep["length"] == 13 and ep["taskweave/segment_ends"] == [4, 7, 13]
    rows = table.slice(ep["dataset_from_index"], ep["length"]).to_pydict()
    assert set(rows["episode_index"]) == {3} and rows["frame_index"] == list(range(13))
    assert rows["task_index"] == [2] * 7 + [0] * 6
    key = "videos/observation.images.front"
    starts = [e[f"{key}/from_timestamp"] for e in eps]
    assert starts == pytest.approx(np.concatenate([[0], np.cumsum([e["length"] for e in eps])[:-1]]) / 10)

    stats = json.load(open(os.path.join(lerobot_dir, "meta", "stats.json")))
    for k in ("observation.state", "action", "observation.images.front", "timestamp", "index"):
        assert set(stats[k]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}, k
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [info["total_frames"]]

    # the video holds the source frames, frame-exact at pts = frame / fps (lossless libx264rgb)
    src_rgb = zarr.open_group(os.path.join(_src(lerobot_dir), "data.zarr"), mode="r")["data/rgb"][:]
    with av.open(os.path.join(lerobot_dir, "videos", "observation.images.front", "chunk-000", "file-000.mp4")) as c:
        frames = {round(float(fr.pts * fr.time_base) * 10): fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)}
    first = int(round(ep[f"{key}/from_timestamp"] * 10))
    orig_start = 12  # the val episode is episode 1 of the source, after episode 0's 12 frames
    for i in range(13):
        assert np.array_equal(frames[first + i], src_rgb[orig_start + i])


def test_lerobot_import_reads_a_foreign_dataset_and_names_bad_fields(lerobot_dir, tmp_path, capsys):
    import shutil

    foreign = str(tmp_path / "foreign")
    shutil.copytree(lerobot_dir, foreign)
    os.unlink(os.path.join(foreign, "meta", "taskweave.json"))
    ep_path = os.path.join(foreign, "meta", "episodes", "chunk-000", "file-000.parquet")
    eps = pq.read_table(ep_path)
    pq.write_table(eps.select([c for c in eps.column_names if not c.startswith("taskweave/")]), ep_path)
    out = str(tmp_path / "imported")
    assert cli(["import-dataset", foreign, out, "--format", "lerobot", "--task", "other_robot"]) == 0
    _, meta = load(out)
    assert meta["tasks"] == ["other_robot"] and meta["backend"] == "lerobot"
    assert [e["split"] for e in meta["episodes"]] == ["train", "train", "train", "val", "test"]  # from info splits
    assert [e["num_segments"] for e in meta["episodes"]][3] == 2  # runs of one task: push+push is one run here

    info_path = os.path.join(foreign, "meta", "info.json")
    info = json.load(open(info_path))
    del info["features"]["action"]
    json.dump(info, open(info_path, "w"))
    capsys.readouterr()
    assert cli(["import-dataset", foreign, str(tmp_path / "x"), "--format", "lerobot"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and info_path in err and "features.action" in err
    assert not os.path.exists(tmp_path / "x")


def test_lerobot_import_names_a_missing_parquet_column(lerobot_dir, tmp_path):
    import shutil

    bad = str(tmp_path / "bad")
    shutil.copytree(lerobot_dir, bad)
    path = os.path.join(bad, "data", "chunk-000", "file-000.parquet")
    t = pq.read_table(path)
    pq.write_table(t.drop_columns(["task_index"]), path)
    with pytest.raises(InteropError, match=r"file-000\.parquet: no column 'task_index'"):
        import_dataset(bad, str(tmp_path / "x"), "lerobot")
    info_path = os.path.join(bad, "meta", "info.json")
    info = json.load(open(info_path))
    info["codebase_version"] = "v2.1"
    json.dump(info, open(info_path, "w"))
    with pytest.raises(InteropError, match="info.json: codebase_version 'v2.1'"):
        import_dataset(bad, str(tmp_path / "x"), "lerobot")
    assert not glob.glob(str(tmp_path / ".x*")) and not os.path.exists(tmp_path / "x")


def test_lerobot_import_reads_image_features(lerobot_dir, tmp_path):
    """Datasets recorded with dtype 'image' keep PNG bytes in the data parquet instead of mp4 files."""
    import io
    import shutil

    from PIL import Image

    src = str(tmp_path / "images")
    shutil.copytree(lerobot_dir, src)
    shutil.rmtree(os.path.join(src, "videos"))
    rgb = zarr.open_group(os.path.join(_src(lerobot_dir), "data.zarr"), mode="r")["data/rgb"][:]
    eps = pq.read_table(os.path.join(src, "meta", "episodes", "chunk-000", "file-000.parquet")).to_pylist()
    order = np.concatenate([np.arange(_span(e).start, _span(e).stop) for e in eps])  # source rows, written order
    pngs = []
    for frame in rgb[order]:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        pngs.append({"bytes": buf.getvalue(), "path": None})
    path = os.path.join(src, "data", "chunk-000", "file-000.parquet")
    pq.write_table(pq.read_table(path).append_column("observation.images.front", pa.array(pngs)), path)
    info_path = os.path.join(src, "meta", "info.json")
    info = json.load(open(info_path))
    info["features"]["observation.images.front"] = {"dtype": "image", "shape": list(RGB),
                                                    "names": ["height", "width", "channels"]}
    info["video_path"] = None
    json.dump(info, open(info_path, "w"))
    out = str(tmp_path / "back")
    import_dataset(src, out, "lerobot")
    assert_same_dataset(_src(lerobot_dir), out)


def _span(e) -> slice:
    """Rows of one written LeRobot episode in the source dataset (EPISODES order)."""
    starts = np.concatenate([[0], np.cumsum([sum(n for _, n in ep[3]) for ep in EPISODES])])
    i = e["taskweave/index"]
    return slice(starts[i], starts[i + 1])


@pytest.mark.parametrize("fmt", ["lerobot", "robomimic"])
def test_a_dataset_without_frames_round_trips(tmp_path, fmt):
    src = write_dataset(tmp_path / "state_only", rgb=False)
    out = str(tmp_path / ("exported" + (".hdf5" if fmt == "robomimic" else "")))
    res = export_dataset(src, out, fmt)
    if fmt == "lerobot":
        info = json.load(open(os.path.join(out, "meta", "info.json")))
        assert res["video"] is None and info["video_path"] is None and not os.path.exists(os.path.join(out, "videos"))
    import_dataset(out, str(tmp_path / "back"), fmt)
    assert_same_dataset(src, str(tmp_path / "back"))


# ----------------------------------------------------------------------------- robomimic
def test_robomimic_layout_and_round_trip(data, tmp_path):
    out = str(tmp_path / "demos.hdf5")
    assert cli(["export-dataset", data, out, "--format", "robomimic"]) == 0
    with h5py.File(out, "r") as f:
        g = f["data"]
        env = json.loads(g.attrs["env_args"])
        assert env["type"] == 2 and env["env_name"] == "taskweave/multitask"
        assert env["env_kwargs"]["backend"] == "mujoco" and env["env_kwargs"]["tasks"] == ["stack", "sort"]
        assert int(g.attrs["total"]) == sum(sum(n for _, n in e[3]) for e in EPISODES)
        d = g["demo_1"]
        assert int(d.attrs["num_samples"]) == 13 and d["actions"].shape == (13, 5) and d["actions"].dtype == np.float32
        assert d["obs/state"].shape == (13, 11) and d["obs/front_image"].shape == (13, *RGB)
        assert d["obs/front_image"].dtype == np.uint8 and d["next_obs/state"].shape == (13, 11)
        assert list(d["rewards"][()]) == [0.0] * 12 + [1.0] and list(d["dones"][()]) == [0] * 12 + [1]
        assert list(d["segment_ends"][()]) == [4, 7, 13]
        masks = {k: sorted(x.decode() for x in f[f"mask/{k}"][()]) for k in f["mask"]}
        assert masks == {"train": ["demo_0", "demo_2", "demo_4"], "valid": ["demo_1"], "test": ["demo_3"]}
    back = str(tmp_path / "back")
    assert cli(["import-dataset", out, back, "--format", "robomimic"]) == 0
    assert_same_dataset(data, back)


def test_robomimic_import_of_a_foreign_file(tmp_path, capsys):
    path = str(tmp_path / "lift.hdf5")
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        g = f.create_group("data")
        g.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for k, t in enumerate((9, 11, 10)):
            d = g.create_group(f"demo_{k}")
            d["actions"] = rng.uniform(-1, 1, (t, 7))
            d["obs/robot0_eef_pos"] = rng.standard_normal((t, 3))
            d["obs/object"] = rng.standard_normal((t, 10))
            d["obs/robot0_gripper_qpos"] = rng.standard_normal((t, 2))
            d["obs/agentview_image"] = rng.integers(0, 256, (t, 8, 8, 3), dtype=np.uint8)
            d["obs/robot0_eye_in_hand_image"] = rng.integers(0, 256, (t, 8, 8, 3), dtype=np.uint8)
        f["mask/train"] = np.array([b"demo_0", b"demo_2"])
        f["mask/valid"] = np.array([b"demo_1"])
    out = str(tmp_path / "imported")
    assert cli(["import-dataset", path, out, "--format", "robomimic"]) == 2  # two cameras: which one?
    assert "--camera" in capsys.readouterr().err
    assert cli(["import-dataset", path, out, "--format", "robomimic", "--camera", "agentview"]) == 0
    x, meta = load(out)
    with h5py.File(path, "r") as f:
        d = f["data/demo_1"]
        want = np.concatenate([d["obs/object"][()], d["obs/robot0_eef_pos"][()], d["obs/robot0_gripper_qpos"][()]], 1)
        assert np.array_equal(x["data/state"][9:20], want.astype(np.float32))
        assert np.array_equal(x["data/rgb"][9:20], d["obs/agentview_image"][()])
    assert meta["tasks"] == ["Lift"] and meta["skills"] == ["Lift"] and meta["obs"]["state"] == [15]
    assert [e["split"] for e in meta["episodes"]] == ["train", "val", "train"]
    assert meta["extra"]["obs_keys"] == ["object", "robot0_eef_pos", "robot0_gripper_qpos"]
    out2 = str(tmp_path / "eef_only")
    assert cli(["import-dataset", path, out2, "--format", "robomimic", "--obs-keys", "robot0_eef_pos",
                "--camera", "agentview"]) == 0
    assert load(out2)[1]["obs"]["state"] == [3]

    with h5py.File(path, "a") as f:
        del f["data/demo_2/actions"]
    capsys.readouterr()
    assert cli(["import-dataset", path, str(tmp_path / "x"), "--format", "robomimic", "--camera", "agentview"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: data/demo_2: no 'actions'" in err
    assert not os.path.exists(tmp_path / "x") and not glob.glob(str(tmp_path / ".x*"))


# ----------------------------------------------------------------------------- outputs: complete or absent
def test_existing_output_is_refused_unless_force_and_a_failed_export_leaves_nothing(data, tmp_path, monkeypatch,
                                                                                     capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli(["export-dataset", data, str(out), "--format", "lerobot"]) == 2
    assert "--force" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert cli(["export-dataset", data, os.path.join(data, "inside"), "--format", "lerobot"]) == 2
    assert not os.path.exists(os.path.join(data, "inside"))

    from taskweave.policies.interop import video

    calls = {"n": 0}
    real = video.Mp4Writer.write

    def failing(self, frames):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(self, frames)

    monkeypatch.setattr(video.Mp4Writer, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        export_dataset(data, str(out), "lerobot", force=True)
    assert sorted(os.listdir(tmp_path)) == ["out"] and (out / "keep.txt").read_text() == "mine"
    monkeypatch.setattr(video.Mp4Writer, "write", real)
    assert cli(["export-dataset", data, str(out), "--format", "lerobot", "--force"]) == 0
    assert sorted(os.listdir(out)) == ["data", "meta", "videos"] and sorted(os.listdir(tmp_path)) == ["out"]

    h5 = tmp_path / "d.hdf5"
    h5.write_bytes(b"old")
    assert cli(["export-dataset", data, str(h5), "--format", "robomimic"]) == 2 and h5.read_bytes() == b"old"


# ----------------------------------------------------------------------------- training on an import
def tiny_config(**kw) -> DiffusionConfig:
    base = dict(down_dims=(16, 32), diffusion_step_embed_dim=16, state_hidden_dim=32, state_feature_dim=16,
                text_embed_dim=32, skill_cond_dim=8, task_embed_dim=4, rgb_channels=(16, 16), num_keypoints=8,
                rgb_feature_dim=16, crop_size=8, batch_size=8, steps=3, log_every=1, checkpoint_every=3,
                warmup_steps=0, num_inference_steps=4, num_train_timesteps=20)
    base.update(kw)
    return DiffusionConfig(**base)


def test_train_accepts_an_imported_dataset_and_logs_to_tensorboard(lerobot_dir, tmp_path, capsys):
    imported = str(tmp_path / "imported")
    assert cli(["import-dataset", lerobot_dir, imported, "--format", "lerobot"]) == 0
    cfg_path = str(tmp_path / "cfg.json")
    tiny_config(obs_mode="rgb").save(cfg_path)
    run = str(tmp_path / "run")
    capsys.readouterr()
    assert cli(["train", "--data", imported, "--out", run, "--config", cfg_path, "--device", "cpu",
                "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "done: step 3" in out and os.path.exists(os.path.join(run, "checkpoints", "last.pt"))
    assert len(open(os.path.join(run, "metrics.jsonl")).read().splitlines()) == 3
    if importlib.util.find_spec("tensorboard") is not None:
        tb_dir = os.path.join(run, "tensorboard")
        assert f"tensorboard: logging to {tb_dir}" in out
        assert glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(tb_dir)
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]


# ----------------------------------------------------------------------------- ONNX
def tiny_checkpoint(path, obs_mode="state", prediction_type="epsilon", done_head=False) -> str:
    extra = dict(obs_mode="rgb", image_shape=(10, 10, 3)) if obs_mode == "rgb" else {}
    cfg = tiny_config(state_dim=11, action_dim=5, num_tasks=2, num_skills=3, prediction_type=prediction_type,
                      done_head=done_head, done_hidden_dim=16, **extra)
    torch.manual_seed(0)
    stats = {"state": {"min": -torch.ones(11), "max": torch.ones(11)},
             "action": {"min": -torch.ones(5) * 0.5, "max": torch.ones(5)}}
    policy = DiffusionPolicy(cfg, BuiltinTextEncoder(32).encode(list(SKILLS)), stats)
    with torch.no_grad():  # a trained-looking network: random, non-zero output layers
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_checkpoint(str(path), policy, step=7, skills=list(SKILLS), tasks=["stack", "sort"])


@pytest.mark.parametrize("obs_mode,prediction_type,done_head", [("state", "epsilon", False),
                                                                ("rgb", "v_prediction", True)])
def test_onnx_export_matches_torch(tmp_path, obs_mode, prediction_type, done_head, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    ckpt = tiny_checkpoint(tmp_path / "policy.pt", obs_mode, prediction_type, done_head)
    out = str(tmp_path / "policy.onnx")
    check = obs_mode == "state"  # the command's own onnxruntime check once; this test compares itself below
    assert cli(["export-policy", ckpt, out] + ([] if check else ["--no-check"])) == 0
    assert ("max |onnxruntime - torch|" if check else "unchecked") in capsys.readouterr().out
    meta = json.load(open(tmp_path / "policy.json"))
    assert meta["skills"] == list(SKILLS) and meta["tasks"] == ["stack", "sort"] and meta["num_inference_steps"] == 4

    policy = load_policy(ckpt, "cpu")
    b = 5  # not the batch size the graph was traced with
    g = torch.Generator().manual_seed(3)
    obs = {"state": torch.rand(b, 2, 11, generator=g) * 2 - 1}
    if obs_mode == "rgb":
        obs["rgb"] = torch.randint(0, 256, (b, 2, 10, 10, 3), generator=g, dtype=torch.uint8)
    obs.update(skill_id=torch.tensor([0, 1, 2, 1, 0]), task_id=torch.tensor([0, 1, 1, 0, 1]))
    noise = torch.randn(b, 16, 5, generator=torch.Generator().manual_seed(11))
    want = policy.predict_action_chunk(dict(obs), generator=torch.Generator().manual_seed(11)).numpy()
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(obs) + ["noise"] == list(meta["inputs"])
    got = sess.run(None, {**{k: v.numpy() for k, v in obs.items()}, "noise": noise.numpy()})
    assert got[0].shape == (b, 16, 5) and np.abs(got[0] - want).max() < 1e-4
    assert np.abs(want).max() > 0.1 and np.abs(got[0] - want.mean(0)).max() > 1e-3  # observation-dependent chunks
    assert [o.name for o in sess.get_outputs()] == (["action", "done"] if done_head else ["action"])
    if done_head:
        with torch.no_grad():
            assert np.abs(got[1] - policy.predict_done(dict(obs)).numpy()).max() < 1e-4

    with torch.no_grad():
        cond = policy.global_condition(dict(obs))
        x = torch.randn(b, 16, 5, generator=g)
        t = torch.tensor([0, 5, 19, 3, 11])
        eps = policy.unet(x, t, cond).numpy()
    den = ort.InferenceSession(str(tmp_path / "policy.denoiser.onnx"), providers=["CPUExecutionProvider"])
    got_eps = den.run(None, {"sample": x.numpy(), "timestep": t.numpy(), "global_cond": cond.numpy()})[0]
    assert np.abs(got_eps - eps).max() < 1e-4
    enc = ort.InferenceSession(str(tmp_path / "policy.encoder.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(enc.run(None, {k: v.numpy() for k, v in obs.items()})[0] - cond.numpy()).max() < 1e-4

    assert cli(["export-policy", ckpt, out]) == 2  # exists: refused without --force


def test_policy_speed_prints_onnxruntime_beside_torch(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location("policy_speed", os.path.join(ROOT, "benchmarks", "policy_speed.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = str(tmp_path / "tiny.json")
    tiny_config().save(cfg)
    args = ["--config", cfg, "--batch-sizes", "1,2", "--repeats", "1", "--train-batch", "2", "--train-steps", "1", "--threads", "1",
            "--onnx", "on", "--json"]
    assert bench.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["onnxruntime_latency"]
    assert [r["batch"] for r in rows] == [1, 2] and all(r["median_ms"] > 0 for r in rows)
    assert "torch/onnxruntime DDIM-4 latency, batch 1" in report["ratios"] and report["device"]
