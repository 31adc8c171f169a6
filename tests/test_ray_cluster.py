"""The rollout executor on a real Ray cluster (issue 14, items 2-4): a head node (`ray start --head`, bound to
127.0.0.1, 2 CPUs) and a second worker node (`ray start --address`) on this machine; the CLI joins it with
`--ray 127.0.0.1:PORT`. Collection, evaluation and `taskweave rollout` give the same episodes as the local
executor; a Ray worker killed in the middle of an episode and a driver killed with SIGKILL lose and duplicate
nothing.

Stopping: `ray stop` would stop every Ray instance of this user, so the fixture stops exactly what it started:
each `ray start` runs in a session of its own (its daemons share its process group), the worker processes
its raylets spawned (each in a session of its own) are found as their descendants; all of them get SIGTERM,
then SIGKILL after a grace period, and the test checks that none is left.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

pytest.importorskip("ray")

from test_rollouts import assert_same_dataset, dataset_arrays, local_datasets, tiny_checkpoint  # noqa: E402,F401

from taskweave.policies.collect import collect  # noqa: E402
from conftest import wait_for

# token authentication with a token of this test alone (nodes and drivers get it from the environment; nothing
# is read from or written to ~/.ray)
ENV = {**os.environ, "TASKWEAVE_LIBRARY": "/nonexistent", "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}


def free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def proc_table() -> dict:
    """pid -> (ppid, pgid, state, cmdline) of every process."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            f = open(f"/proc/{p}/stat", "rb").read().rsplit(b")", 1)[1].split()
            cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out[int(p)] = (int(f[1]), int(f[2]), f[0].decode(), cmd)
    return out


def cluster_pids(groups: set) -> set:
    """The live processes of the started process groups and all their descendants."""
    table = proc_table()
    found = {p for p, (_, g, st, _) in table.items() if g in groups and st not in "ZX"}
    grew = True
    while grew:
        more = {p for p, (pp, _, st, _) in table.items() if pp in found and p not in found and st not in "ZX"}
        found |= more
        grew = bool(more)
    return found


def alive(pids: set) -> set:
    table = proc_table()
    return {p for p in pids if p in table and table[p][2] not in "ZX"}


class Cluster:
    """A head and a worker node started here; `stop()` ends exactly their processes."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="tw-ray-", dir="/tmp")   # short: Ray's socket paths must stay short
        port, client, agent_h, agent_w = free_ports(4)
        self.address = f"127.0.0.1:{port}"
        self.groups: set = set()
        common = ["--num-cpus", "2", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
        ray = os.path.join(os.path.dirname(sys.executable), "ray")   # the CLI of this interpreter's ray
        ray = ray if os.path.exists(ray) else "ray"
        self._start([ray, "start", "--head", "--port", str(port), "--ray-client-server-port", str(client),
                     "--dashboard-agent-listen-port", str(agent_h), "--include-dashboard", "false",
                     "--temp-dir", self.tmp, *common])
        self._start([ray, "start", "--address", self.address, "--dashboard-agent-listen-port", str(agent_w),
                     *common])

    def _start(self, cmd: list) -> None:
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        self.groups.add(p.pid)           # its daemons stay in this process group after it exits
        out, _ = p.communicate(timeout=180)
        if p.returncode != 0:
            self.stop()
            raise RuntimeError(f"{' '.join(cmd[:3])} failed ({p.returncode}):\n{out[-3000:]}")

    def workers_running_jobs(self) -> list:
        """Ray worker processes of this cluster executing a rollout job right now."""
        table = proc_table()
        return [p for p in cluster_pids(self.groups) if table.get(p, (0, 0, "", ""))[3].startswith("ray::_ray_call")]

    def stop(self) -> set:
        """SIGTERM, then SIGKILL, every process this cluster started; returns the pids still alive after."""
        pids = cluster_pids(self.groups)
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for p in alive(pids):
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while alive(pids) and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return alive(pids)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        left = c.stop()
        assert not left, f"processes of the test's Ray cluster still alive: {sorted(left)}"


def cli(*args: str, cwd: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "taskweave.cli", *args], env=ENV, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def run_cli(*args: str, cwd: str, timeout: float = 300) -> tuple:
    p = cli(*args, cwd=cwd)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def committed(folder: str) -> list:
    try:
        return json.load(open(os.path.join(folder, "progress.json")))["episodes"]
    except (OSError, ValueError, KeyError):
        return []




# ----------------------------------------------------------------------------- same seeds, same results
def test_collect_on_the_cluster_equals_local_one_and_two_workers(cluster, local_datasets, tmp_path):
    out = str(tmp_path / "ray")
    rc, stdout, err = run_cli("collect", "--tasks", "PlaceInZone,BlockInBowl", "--episodes", "3", "--val-episodes",
                              "1", "--out", out, "--ray", cluster.address, cwd=str(tmp_path))
    assert rc == 0, err
    assert f"Ray at {cluster.address} (4 CPUs, 2 node(s))" in stdout
    ray_run = dataset_arrays(out)
    for w in (1, 2):
        assert_same_dataset(ray_run, dataset_arrays(local_datasets[w]))


def test_rollout_and_eval_on_the_cluster_equal_local(cluster, tiny_checkpoint, tmp_path, capsys):
    from taskweave.cli import main
    from taskweave.policies.evaluate import evaluate
    args = ["rollout", "--task", "PlaceInZone", "--episodes", "4", "--seed", "3", "--json"]
    assert main(args) == 0
    local = capsys.readouterr().out
    rc, remote, err = run_cli(*args, "--ray", cluster.address, cwd=str(tmp_path))
    assert rc == 0, err
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(json.loads(local)["per_episode"]) == strip(json.loads(remote)["per_episode"])
    tasks = ["PlaceInZone", "BlockInBowl"]
    reference = evaluate(tiny_checkpoint, tasks, 3, split="val", num_envs=2, device="cpu", max_ticks=5,
                         progress=False)
    rc, _, err = run_cli("eval", "--checkpoint", tiny_checkpoint, "--tasks", ",".join(tasks), "--episodes", "3",
                         "--split", "val", "--num-envs", "2", "--max-ticks", "5", "--device", "cpu",
                         "--ray", cluster.address, "--out", str(tmp_path / "ray"), cwd=str(tmp_path))
    assert rc == 0, err
    remote = json.load(open(tmp_path / "ray" / "eval.json"))
    assert remote["executor"].startswith(f"Ray at {cluster.address}")
    rows = [{t: v["per_episode"] for t, v in r["tasks"].items()} for r in (reference, remote)]
    assert rows[0] == rows[1] and len(rows[0]["BlockInBowl"]) == 3


# ----------------------------------------------------------------------------- faults
def test_a_killed_ray_worker_and_a_killed_driver_lose_and_duplicate_nothing(cluster, tmp_path):
    tasks, n, val = "BlockInBowl,PlaceInZone", 6, 1
    reference = str(tmp_path / "local")
    collect(tasks.split(","), n, "mujoco", reference, val_episodes=val, workers=1, progress=False)
    out = str(tmp_path / "ray")
    args = ["collect", "--tasks", tasks, "--episodes", str(n), "--val-episodes", str(val), "--out", out,
            "--ray", cluster.address]
    proc = cli(*args, cwd=str(tmp_path))
    try:
        wait_for(lambda: len(committed(out)) >= 1, 180, "a committed episode", proc)
        busy = wait_for(cluster.workers_running_jobs, 60, "a Ray worker in the middle of an episode", proc)
        os.kill(busy[0], signal.SIGKILL)          # mid-episode: Ray runs that job again on another worker
        wait_for(lambda: not alive({busy[0]}), 10, "the killed worker to be gone")
        done_before = len(committed(out))
        wait_for(lambda: len(committed(out)) >= done_before + 2, 180, "more episodes after the worker kill", proc)
        proc.send_signal(signal.SIGKILL)          # then the driver itself
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = committed(out)
    assert 0 < len(before) < 2 * (n + val), "killed mid-run"
    rc, stdout, err = run_cli(*args, cwd=str(tmp_path))
    assert rc == 0, err
    assert f"took over the stale lock of {out}" in err and f"{len(before)} already present" in stdout
    episodes = [(e["task"], e["seed"]) for e in json.load(open(os.path.join(out, "meta.json")))["episodes"]]
    assert len(episodes) == len(set(episodes)) == 2 * (n + val), "every episode exactly once"
    assert_same_dataset(dataset_arrays(out), dataset_arrays(reference))
