"""The fault suite: concurrent runs, kill -9, damaged and mismatched data. Each case checks the exit code, the
one-line message and that what was written before is intact (issue 13, items 1, 2 and 5)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from taskweave.cli import main
from taskweave.policies.collect import collect
from taskweave.policies.dataset import DatasetError, DatasetWriter, DemoDataset
from taskweave.policies.diffusion.checkpoint import load_checkpoint, save_checkpoint
from taskweave.policies.diffusion.configuration import DiffusionConfig
from taskweave.policies.train import train
from taskweave.sim.locks import LOCK_NAME, FolderLock, LockError
from conftest import wait_for

TASK = "BlockInBowl"
ENV = {**os.environ, "TASKWEAVE_LIBRARY": "/nonexistent", "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest: tiny models run on one thread


def tiny_config(**kw) -> DiffusionConfig:
    base = dict(down_dims=(16, 32), diffusion_step_embed_dim=16, state_hidden_dim=32, state_feature_dim=16,
                text_embed_dim=16, skill_cond_dim=8, task_embed_dim=4, batch_size=8, steps=2, checkpoint_every=2,
                log_every=1, num_inference_steps=2, use_ema=False)
    base.update(kw)
    return DiffusionConfig(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """Two MuJoCo oracle episodes of one short task (the source every case copies)."""
    out = str(tmp_path_factory.mktemp("faults") / "ds")
    collect([TASK], 2, "mujoco", out, val_episodes=0, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("faults") / "run")
    train(dataset, out, tiny_config(), device="cpu", progress=False, log=lambda *a, **k: None)
    return out


def digest(path: str) -> dict:
    """sha256 of every file under path (relative name -> hash), the lock file excluded."""
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            if name != LOCK_NAME:
                p = os.path.join(folder, name)
                out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def one_error_line(capsys, command: str) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"taskweave {command}: error: "), err
    return err[0]




def lock_holder(folder: str):
    try:
        raw = open(os.path.join(folder, LOCK_NAME), encoding="utf-8").read()
        return json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return None


def committed(folder: str) -> list:
    try:
        return json.load(open(os.path.join(folder, "progress.json")))["episodes"]
    except (OSError, ValueError, KeyError):
        return []


def children(pid: int) -> list:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                fields = open(f"/proc/{p}/stat", "rb").read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(p))
    return out


def running(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def collect_cli(out: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "taskweave.cli", "collect", "--tasks", TASK, "--val-episodes",
                             "1", "--out", out, *extra], env=ENV, cwd=os.path.dirname(out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ----------------------------------------------------------------------------- locks
def test_second_collect_on_one_out_refuses_naming_the_holder(tmp_path, capsys):
    out = str(tmp_path / "ds")
    first = collect_cli(out, "--episodes", "2", "--workers", "1")
    try:
        holder = wait_for(lambda: (lock_holder(out) or {}).get("pid") == first.pid and lock_holder(out), 60,
                          "the first collect to take the lock", first)
        rc = main(["collect", "--tasks", TASK, "--episodes", "2", "--val-episodes", "1", "--workers", "1",
                   "--out", out])
        line = one_error_line(capsys, "collect")
        assert first.poll() is None, "the first run must still hold the lock when the second one asks"
    finally:
        stdout, stderr = first.communicate(timeout=120)
    assert rc == 2
    assert f"pid {first.pid} on {holder['host']}, started {holder['started']}" in line and "collect" in line
    assert "--episodes 2" in line and out in line
    assert first.returncode == 0, stderr
    ds = DemoDataset(out, None)   # checksums verified: the first run's data is whole
    assert [e["seed"] for e in ds.meta["episodes"]] == [e["seed"] for e in committed(out)] and len(ds.episodes) == 3
    assert lock_holder(out) is None, "a clean exit leaves an empty holder record"


def test_killed_holder_lock_is_taken_over_by_exactly_one_of_two_takers(tmp_path):
    d = str(tmp_path / "folder")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        from taskweave.sim.locks import FolderLock
        FolderLock({d!r}, "holder").acquire()
        child = os.fork()                     # an orphan-to-be must not keep the lock alive
        if child == 0:
            time.sleep(60); os._exit(0)
        print(child, flush=True); time.sleep(60)""")], stdout=subprocess.PIPE, text=True, env=ENV)
    child = int(holder.stdout.readline())
    try:
        stale = lock_holder(d)
        with pytest.raises(LockError, match=f"in use by pid {holder.pid} on "):
            FolderLock(d, "test").acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert running(child) and lock_holder(d) == stale, "killed: its record stays, its forked child lives on"
        go = tmp_path / "go"
        takers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import os, time
            from taskweave.sim.locks import FolderLock, LockError
            while not os.path.exists({str(go)!r}): time.sleep(0.005)
            try:
                lock = FolderLock({d!r}, "taker", log=lambda m: print("NOTE", m)).acquire()
            except LockError as e:
                print("LOST", e)
            else:
                print("WON", os.getpid(), flush=True); time.sleep(2); lock.release()""")],
            stdout=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
        time.sleep(0.5)
        go.touch()
        outs = [t.communicate(timeout=30)[0] for t in takers]
    finally:
        os.kill(child, signal.SIGKILL)
    won = [o for o in outs if "WON" in o]
    lost = [o for o in outs if o.startswith("LOST")]
    assert len(won) == 1 and len(lost) == 1, outs
    assert f"took over the stale lock of {d} left by pid {holder.pid}" in won[0]
    winner = int(won[0].split("WON")[1].split()[0])
    assert f"in use by pid {winner} " in lost[0] and "taker" in lost[0] and len(lost[0].strip().splitlines()) == 1
    assert lock_holder(d) is None


def test_a_refusal_during_a_takeover_names_the_new_holder_not_the_dead_one(tmp_path):
    """The takeover race CI hit: the winner holds flock but has not yet replaced the dead run's record; the
    loser waits for the new record instead of naming the dead pid."""
    d = tmp_path / "folder"
    d.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (d / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "then",
                                           "command": "gone", "purpose": "collect"}))
    winner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, time
        from taskweave.sim.locks import FolderLock
        fd = os.open({str(d / LOCK_NAME)!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)          # granted; the dead run's record is still in the file
        print("HELD", flush=True); time.sleep(0.4)
        lock = FolderLock({str(d)!r}, "winner", log=lambda m: None)
        lock._fd = fd; lock._write_record()
        print("WROTE", flush=True); time.sleep(30)""")], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert winner.stdout.readline().strip() == "HELD"
        with pytest.raises(LockError) as err:
            FolderLock(str(d), "loser").acquire()
        assert f"in use by pid {winner.pid} " in str(err.value) and "winner" in str(err.value), str(err.value)
        assert "is gone" not in str(err.value)
    finally:
        winner.kill()
        winner.wait()


def test_a_live_holder_the_filesystem_did_not_lock_out_is_refused(tmp_path):
    """A record naming a live process of this host while flock was granted: flock is not honoured here."""
    d = tmp_path / "nfs-like"
    d.mkdir()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        start = int(open(f"/proc/{sleeper.pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[19])
        rec = {"pid": sleeper.pid, "host": os.uname().nodename, "started": "then", "command": "sleep 30",
               "purpose": "train", "proc_start": start}
        (d / LOCK_NAME).write_text(json.dumps(rec))
        with pytest.raises(LockError, match="does not honour flock"):
            FolderLock(str(d), "test").acquire()
        assert json.loads((d / LOCK_NAME).read_text()) == rec, "the live holder's record is left alone"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_kill_9_during_collect_ends_its_workers_and_the_rerun_resumes(tmp_path, capsys):
    out = str(tmp_path / "ds")
    proc = collect_cli(out, "--episodes", "40", "--workers", "2")
    try:
        wait_for(lambda: len(committed(out)) >= 1, 90, "a committed episode", proc)
        workers = wait_for(lambda: children(proc.pid) if len(children(proc.pid)) >= 2 else None, 30,
                           "the pool workers", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = committed(out)
    t0 = time.monotonic()
    wait_for(lambda: not any(running(p) for p in workers), 5, f"the workers {workers} to exit")
    gone_after = time.monotonic() - t0
    assert lock_holder(out)["pid"] == proc.pid
    rc = main(["collect", "--tasks", TASK, "--episodes", "2", "--val-episodes", "1", "--workers", "1", "--out", out])
    io = capsys.readouterr()
    assert rc == 0, io.err
    assert f"took over the stale lock of {out} left by pid {proc.pid}" in io.err
    n_train = sum(e["split"] == "train" for e in before)
    kept = max(0, 2 - n_train) + max(0, 1 - (len(before) - n_train))
    assert f"kept {kept} new episodes" in io.out and f"{len(before)} already present" in io.out
    after = DemoDataset(out, None).meta["episodes"]   # every chunk checked against its CRC
    assert after[:len(before)] == before, "the episodes committed before the kill are kept as they were"
    assert len(after) >= 2 and gone_after < 5


# ----------------------------------------------------------------------------- damaged data
@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_damaged_chunk_is_an_error_naming_it(dataset, tmp_path, capsys, damage):
    ds = str(tmp_path / "ds")
    shutil.copytree(dataset, ds)
    key = "data/action" if damage == "delete" else "data/state"
    chunk = os.path.join(ds, "data.zarr", key, "c", "0", "0")
    if damage == "delete":
        os.remove(chunk)
    else:
        raw = open(chunk, "rb").read()
        open(chunk, "wb").write(raw[: len(raw) // 2])
    before = digest(ds)
    rc = main(["train", "--data", ds, "--out", str(tmp_path / "run"), "--device", "cpu", "--steps", "1",
               "--no-progress"])
    line = one_error_line(capsys, "train")
    assert rc == 2
    n = json.load(open(os.path.join(ds, "meta.json")))["num_steps"]
    why = "is missing (deleted)" if damage == "delete" else "is unreadable, truncated or corrupt"
    assert f"{ds}/data.zarr/{key}: chunk c/0/0 (rows 0..{n - 1}) {why}" in line
    assert digest(ds) == before, "the dataset is left as it was"
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
    assert not os.path.exists(os.path.join(dataset, "data.zarr", "data", "task_id", "c", "0")), \
        "an all-zero chunk zarr never stores is not mistaken for a deleted one"
    assert len(DemoDataset(dataset, None).episodes) == 2


def test_checksums_name_the_chunk_among_many_and_cover_frames(tmp_path):
    rng = np.random.default_rng(0)
    w = DatasetWriter(str(tmp_path), tasks=["t"], backend="synthetic", chunk_len=8, rgb_chunk_len=4)
    for seed in range(3):
        w.add_episode("t", seed, rng.random((10, 3), np.float32), rng.random((10, 2), np.float32), "pick(block)",
                      rgb=rng.integers(1, 255, (10, 4, 4, 3), dtype=np.uint8))
    w.finalize()
    state = tmp_path / "data.zarr" / "data" / "state" / "c"
    saved = (state / "2" / "0").read_bytes()
    (state / "2" / "0").unlink()
    with pytest.raises(DatasetError, match=r"data/state: chunk c/2/0 \(rows 16\.\.23\) is missing"):
        DemoDataset(str(tmp_path), None)
    (state / "2" / "0").write_bytes(saved)
    (state / "1" / "0").write_bytes((state / "0" / "0").read_bytes())   # a valid chunk with the wrong rows
    with pytest.raises(DatasetError, match=r"chunk c/1/0 \(rows 8\.\.15\) does not match the checksum"):
        DemoDataset(str(tmp_path), None)
    w2 = DatasetWriter(str(tmp_path))   # reopening does not repair a damaged store silently
    w2.finalize()
    with pytest.raises(DatasetError, match="chunk c/1/0"):
        DemoDataset(str(tmp_path), None)
    shutil.rmtree(tmp_path)   # a clean store for the frame check
    tmp_path.mkdir()
    w = DatasetWriter(str(tmp_path), tasks=["t"], backend="synthetic", chunk_len=8, rgb_chunk_len=4)
    w.add_episode("t", 0, np.ones((12, 3), np.float32), np.ones((12, 2), np.float32), "pick(block)",
                  rgb=rng.integers(1, 255, (12, 4, 4, 3), dtype=np.uint8))
    w.finalize()
    (tmp_path / "data.zarr" / "data" / "rgb" / "c" / "1" / "0" / "0" / "0").unlink()   # frames 4..7
    ds = DemoDataset(str(tmp_path), None, pred_horizon=4, action_horizon=2)
    assert ds[0]["rgb"].shape == (2, 4, 4, 3)   # frames 0..1 are whole
    with pytest.raises(DatasetError, match=r"data/rgb: chunk c/1/0/0/0 \(rows 4\.\.7\) is missing"):
        for i in range(len(ds)):
            ds[i]


# ----------------------------------------------------------------------------- mismatched data
def test_collect_from_another_engine_into_a_dataset_is_refused(dataset, tmp_path, capsys):
    ds = str(tmp_path / "ds")
    shutil.copytree(dataset, ds)
    before = digest(ds)
    rc = main(["collect", "--tasks", TASK, "--episodes", "3", "--val-episodes", "1", "--backend", "pybullet",
               "--workers", "1", "--out", ds])
    line = one_error_line(capsys, "collect")
    assert rc == 2 and "holds mujoco demonstrations; refusing to append pybullet ones" in line
    assert digest(ds) == before
    assert json.load(open(os.path.join(ds, "meta.json")))["backend"] == "mujoco"


def test_resume_with_another_dataset_is_refused(run, tmp_path, capsys):
    other = str(tmp_path / "other")
    collect(["StackOnBlock"], 1, "mujoco", other, val_episodes=0, workers=1, progress=False)
    before = digest(run)
    rc = main(["train", "--data", other, "--out", run, "--resume", "--device", "cpu", "--no-progress"])
    line = one_error_line(capsys, "train")
    info = json.load(open(os.path.join(run, "run_info.json")))
    assert rc == 2 and "--resume with another dataset: the run started on" in line
    assert info["dataset_fingerprint"] in line and other in line and "StackOnBlock" in line
    assert digest(run) == before, "the run is left as it was"


def _untrained_checkpoint(path: str, state_dim: int, tasks: list) -> str:
    from taskweave.policies.diffusion.modeling import DiffusionPolicy
    cfg = tiny_config(state_dim=state_dim, action_dim=5, num_tasks=len(tasks), num_skills=1, pred_horizon=8,
                      action_horizon=4)
    return save_checkpoint(path, DiffusionPolicy(cfg), step=0, skills=["pick(block)"], tasks=tasks)


@pytest.mark.parametrize("case", ["state_size", "unseen_task"])
def test_eval_refuses_a_checkpoint_that_does_not_fit(tmp_path, capsys, case):
    dim, tasks = (23, [TASK]) if case == "state_size" else (29, ["StackOnBlock"])
    ckpt = _untrained_checkpoint(str(tmp_path / "ck.pt"), dim, tasks)
    rc = main(["eval", "--checkpoint", ckpt, "--tasks", TASK, "--episodes", "1", "--num-envs", "1",
               "--device", "cpu", "--out", str(tmp_path / "ev")])
    line = one_error_line(capsys, "eval")
    assert rc == 2 and ckpt in line
    if case == "state_size":
        assert "trained on states of size 23, the env gives states of size 29" in line
    else:
        assert f"task '{TASK}' was not in the training data; known: ['StackOnBlock']" in line
    assert not (tmp_path / "ev" / "eval.json").exists()
    assert load_checkpoint(ckpt)["step"] == 0


def test_the_policy_controller_refuses_a_state_size_mismatch(tmp_path):
    from taskweave.policies.controllers import PolicyController
    from taskweave.policies.runner import PolicyRunner, RunnerError
    runner = PolicyRunner.from_checkpoint(_untrained_checkpoint(str(tmp_path / "ck.pt"), 23, [TASK]), device="cpu")
    with pytest.raises(RunnerError, match="trained on states of size 23, the env gives states of size 29"):
        PolicyController(runner)


# ----------------------------------------------------------------------------- kill -9 during a checkpoint write
HANG_ON_THIRD_SAVE = """
import sys, time, torch
real, calls = torch.save, []
def save(obj, fh, *a, **k):
    calls.append(1)
    if len(calls) == 3:   # step 4's first file: half written, then the process is killed
        fh.write(b"\\0" * 2_000_000); fh.flush()
        open(sys.argv[1], "w").close()
        time.sleep(120)
    return real(obj, fh, *a, **k)
torch.save = save
from taskweave.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_kill_9_during_a_checkpoint_write_is_cleaned_on_resume(dataset, tmp_path, capsys):
    out, cfg = str(tmp_path / "run"), str(tmp_path / "cfg.json")
    tiny_config(steps=4, checkpoint_every=2).save(cfg)
    script, ready = tmp_path / "hang.py", tmp_path / "ready"
    script.write_text(HANG_ON_THIRD_SAVE)
    argv = ["train", "--data", dataset, "--out", out, "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen([sys.executable, str(script), str(ready), *argv, "--config", cfg], env=ENV,
                            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(ready.exists, 120, "the third checkpoint write", proc)
        rc = main([*argv, "--resume"])   # while the run lives, its folder is locked
        line = one_error_line(capsys, "train")
        assert rc == 2 and f"{out} is in use by pid {proc.pid} on " in line and "train" in line
        step2 = digest(os.path.join(out, "checkpoints"))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    ckdir = os.path.join(out, "checkpoints")
    tmps = [f for f in os.listdir(ckdir) if f.startswith(".tmp-")]
    assert len(tmps) == 1 and tmps[0].endswith("step_0000004.pt") and os.path.getsize(os.path.join(ckdir, tmps[0]))
    assert load_checkpoint(os.path.join(ckdir, "last.pt"))["step"] == 2
    rc = main([*argv, "--resume"])
    io = capsys.readouterr()
    assert rc == 0, io.err
    assert f"took over the stale lock of {out} left by pid {proc.pid}" in io.out + io.err
    assert "removed 1 temporary file(s) (2.0 MB)" in io.out and "at step 2" in io.out
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.startswith(".tmp-")]
    assert load_checkpoint(os.path.join(ckdir, "last.pt"))["step"] == 4
    assert digest(ckdir)["step_0000002.pt"] == step2["step_0000002.pt"], "the step-2 checkpoint is intact"
    steps = [json.loads(ln)["step"] for ln in open(os.path.join(out, "metrics.jsonl"))]
    assert steps == [1, 2, 3, 4]


def test_a_dataset_from_before_checksums_is_read_with_a_warning_and_gets_them_on_reopen(dataset, tmp_path, capsys):
    ds = str(tmp_path / "ds")
    shutil.copytree(dataset, ds)
    for name in ("meta.json", "progress.json"):
        path = os.path.join(ds, name)
        doc = json.load(open(path))
        doc.pop("checksums")
        doc["format_version"] = 1
        json.dump(doc, open(path, "w"))
    assert len(DemoDataset(ds, None).episodes) == 2
    assert "written before checksums" in capsys.readouterr().err
    DatasetWriter(ds, backend="mujoco").finalize()
    meta = json.load(open(os.path.join(ds, "meta.json")))
    assert meta["format_version"] == 2 and set(meta["checksums"]) >= {"data/state", "data/action"}
    os.remove(os.path.join(ds, "data.zarr", "data", "state", "c", "0", "0"))
    with pytest.raises(DatasetError, match="data/state: chunk c/0/0"):
        DemoDataset(ds, None)
