"""Training on two processes through the real launcher (issue 14, item 5): `torchrun --nnodes 1 --nproc-per-node 2
-m taskweave.policies.train ...` with gloo on CPU; the ranks end with identical weights (RUN/ranks.json, checked
against the checkpoint), and a run resumed under torchrun ends where a straight run does."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from test_policy_training import tiny_config, write_demos

from taskweave.policies.diffusion.checkpoint import load_checkpoint
from taskweave.policies.train import weights_digest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TASKWEAVE_LIBRARY": "/nonexistent"}


def torchrun(data: str, out: str, *flags: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "taskweave.policies.train",
           "--data", data, "--out", out, "--device", "cpu", "--no-progress", *flags]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def digests(out: str) -> list:
    return json.load(open(os.path.join(out, "ranks.json")))["weights_sha256"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    write_demos(root / "demos")
    tiny_config(steps=4, batch_size=8, checkpoint_every=2, log_every=1, use_ema=False).save(str(root / "cfg.json"))
    return str(root / "demos"), str(root / "cfg.json")


def test_torchrun_two_gloo_ranks_identical_weights_and_resume(demos, tmp_path):
    data, cfg = demos
    run = str(tmp_path / "run")
    p = torchrun(data, run, "--config", cfg)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    d = digests(run)
    assert len(d) == 2 and d[0] == d[1], "both ranks hold the same weights"
    ckpt = load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))
    assert ckpt["step"] == 4 and weights_digest(ckpt["model"]) == d[0], "rank 0 saved the weights both ranks have"
    assert json.load(open(os.path.join(run, "run_info.json")))["world_size"] == 2
    assert "weights identical on the 2 ranks" in p.stdout

    p = torchrun(data, run, "--resume", "--steps", "6")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "resumed" in p.stdout and load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))["step"] == 6
    steps = [json.loads(ln)["step"] for ln in open(os.path.join(run, "metrics.jsonl"))]
    assert steps == [1, 2, 3, 4, 5, 6]

    straight = str(tmp_path / "straight")
    p = torchrun(data, straight, "--config", cfg, "--steps", "6")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert digests(run) == digests(straight), "4 steps + a resume to 6 under torchrun = 6 steps straight"


def test_a_world_without_a_rendezvous_is_one_line(demos, tmp_path):
    data, cfg = demos
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    p = subprocess.run([sys.executable, "-m", "taskweave.policies.train", "--data", data, "--out",
                        str(tmp_path / "r"), "--config", cfg, "--device", "cpu", "--no-progress"], env=env,
                       capture_output=True, text=True, timeout=120)
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(err) == 1 and "MASTER_ADDR" in err[0] and "torchrun" in err[0], p.stderr
