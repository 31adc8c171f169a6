"""Faults at the command line, kept fixed: each case asserts the exit code, the one-line message and that
what was written before is intact.

Exit codes: 0 success, 1 the task failed, 2 bad input, 3 the run could not complete. Cases: read-only
outputs for collect, train, eval, plan, demo and rollout (refused before the run, as an unprivileged
process), a silent LLM server on loopback (retries printed, exit 3), an LLM failure against a failed
episode, bad numeric flags, perturbation specs the scene cannot honour, a blank instruction, `tasks
validate` on a missing file, a folder and a non-UTF-8 file, and OS errors that escape a run.
"""
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading

import pytest

from taskweave.cli import main

SEED_OK = ["--llm", "offline"]


def one_line(err: str) -> str:
    """The stderr of a refused command: exactly one non-empty line, returned."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def run_cli(capsys, argv):
    """(exit code, stdout, stderr) of `taskweave ARGV` in this process (a parser error's SystemExit too)."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(folder) -> dict:
    """{relative path: bytes} of every file under folder."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


# ---------------------------------------------------------------- read-only outputs

def _unprivileged_prefix():
    """(argv prefix that runs a command without the right to ignore file permissions, what it is), or
    (None, why not). Root is run as nobody when nobody can run this Python, else as root without
    capabilities (permission bits then apply to it too)."""
    if os.geteuid() != 0:
        return [], "this user"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None, "running as root and setpriv (util-linux) is not installed: cannot test read-only outputs"
    for prefix, what in (([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"], "nobody"),
                         ([setpriv, "--bounding-set=-all", "--inh-caps=-all"], "root without capabilities")):
        try:
            r = subprocess.run(prefix + [sys.executable, "-c", "import taskweave.cli"], capture_output=True,
                               timeout=60, cwd="/")
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return prefix, what
    return None, "setpriv could not start this Python as an unprivileged process"


CHILD = r"""
import contextlib, io, json, sys
from taskweave.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    results.append({"argv": argv, "rc": rc, "err": err.getvalue()})
print(json.dumps(results))
"""


def test_read_only_outputs_are_refused_before_the_run():
    prefix, who = _unprivileged_prefix()
    if prefix is None:
        pytest.skip(who)
    from taskweave.wiring import shipped_checkpoint
    base = tempfile.mkdtemp(prefix="tw-ro-")
    try:
        ro = os.path.join(base, "ro")
        os.makedirs(os.path.join(ro, "run"))
        with open(os.path.join(ro, "before.txt"), "w") as f:
            f.write("written before")
        with open(os.path.join(ro, "run", "config.json"), "w") as f:
            f.write('{"steps": 1}')
        for d in (os.path.join(ro, "run"), ro):
            os.chmod(d, 0o555)
        os.chmod(base, 0o755)
        before = snapshot(ro)
        cases = {
            "collect": ["collect", "--tasks", "BlockInBowl", "--episodes", "1", "--workers", "1",
                        "--out", f"{ro}/ds"],
            "train": ["train", "--data", f"{ro}/ds", "--out", f"{ro}/run", "--device", "cpu", "--no-progress"],
            "eval": ["eval", "--checkpoint", shipped_checkpoint(), "--tasks", "BlockInBowl", "--episodes", "1",
                     "--out", f"{ro}/eval"],
            "plan": ["plan", "--task", "BlockInBowl", "--planner", "openloop", *SEED_OK, "--out", f"{ro}/rec.json"],
            "demo": ["demo", "--task", "BlockInBowl", "--planner", "openloop", *SEED_OK, "--scripted",
                     "--out", f"{ro}/demo"],
            "rollout": ["rollout", "--task", "BlockInBowl", "--episodes", "1", "--video", f"{ro}/roll.mp4"],
        }
        r = subprocess.run(prefix + [sys.executable, "-c", CHILD, json.dumps(list(cases.values()))],
                           capture_output=True, text=True, timeout=240, cwd=base,
                           env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
        assert r.returncode == 0, r.stderr[-3000:]
        results = json.loads(r.stdout.strip().splitlines()[-1])
        for name, res in zip(cases, results):
            line = one_line(res["err"])
            assert res["rc"] == 2, (name, who, res)
            assert line.startswith(f"taskweave {name}: error: --") and ro in line, (name, line)
            assert "cannot write" in line and "Traceback" not in res["err"], (name, line)
        assert snapshot(ro) == before          # nothing written, nothing lost (no dataset, run or video begun)
    finally:
        for root, dirs, _ in os.walk(base):
            for d in dirs:
                os.chmod(os.path.join(root, d), stat.S_IRWXU)
        shutil.rmtree(base, ignore_errors=True)


def test_output_path_that_is_a_folder_or_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep")
    rc, _, err = run_cli(capsys, ["collect", "--tasks", "BlockInBowl", "--episodes", "1", "--out",
                                  str(tmp_path / "afile")])
    assert rc == 2 and "exists and is not a folder" in one_line(err)
    rc, _, err = run_cli(capsys, ["plan", "--task", "BlockInBowl", *SEED_OK, "--out", str(tmp_path)])
    assert rc == 2 and "is a folder, not a file" in one_line(err)
    assert (tmp_path / "afile").read_text() == "keep"


# ---------------------------------------------------------------- LLM failures and task failures

@pytest.fixture
def silent_server():
    """A real socket on loopback that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/v1"
    stop.set()
    t.join(timeout=2)
    for c in conns:
        c.close()
    srv.close()


def test_silent_llm_server_exits_3_with_each_retry_printed(silent_server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TASKWEAVE_LLM_TIMEOUT", raising=False)
    monkeypatch.delenv("TASKWEAVE_LLM_RETRIES", raising=False)
    keep = tmp_path / "notes.txt"
    keep.write_text("written before")
    rec_path = tmp_path / "rec.json"
    rc, out, err = run_cli(capsys, ["plan", "--task", "BlockInBowl", "--planner", "openloop", "--llm", "openai:m",
                                    "--llm-base-url", silent_server, "--llm-timeout", "1", "--llm-retries", "2",
                                    "--json", "--out", str(rec_path)])
    assert rc == 3, err[-2000:]
    rec = json.loads(out)                                  # the JSON is still printed
    assert rec["incomplete"] is True and rec["success"] is False
    assert "failed after 3 attempt(s)" in rec["error"] and "no reply within 1 s" in rec["error"]
    retries = [ln for ln in err.splitlines() if ln.startswith("LLM request to ")]
    assert [ln.split(": attempt ")[1].split(" ")[0] for ln in retries] == ["1/3", "2/3", "3/3"], err
    assert all("timeout: no reply within 1 s" in ln for ln in retries)
    assert all("retrying in" in ln for ln in retries[:2]) and retries[2].endswith("no retries left")
    assert json.loads(rec_path.read_text())["incomplete"] is True
    assert keep.read_text() == "written before"


def test_failed_episode_exits_1_and_llm_flags_need_openai(tmp_path, capsys):
    rc, out, err = run_cli(capsys, ["plan", "--task", "BlockInBowl", "--planner", "openloop", *SEED_OK,
                                    "--max-steps", "1", "--json"])
    rec = json.loads(out)
    assert rc == 1 and rec["success"] is False and rec["incomplete"] is False, err[-2000:]
    assert "budget" in rec["error"]
    rc, _, err = run_cli(capsys, ["plan", "--task", "BlockInBowl", *SEED_OK, "--llm-retries", "1"])
    assert rc == 2 and "apply to --llm openai:MODEL only" in one_line(err)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv,flag,what", [
    (["collect", "--tasks", "BlockInBowl", "--episodes", "1", "--out", "X", "--workers", "0"], "--workers", "positive"),
    (["collect", "--tasks", "BlockInBowl", "--episodes", "1", "--out", "X", "--workers", "-3"], "--workers", "positive"),
    (["collect", "--tasks", "BlockInBowl", "--episodes", "1", "--out", "X", "--val-episodes", "0"], "--val-episodes",
     "positive"),
    (["collect", "--tasks", "BlockInBowl", "--episodes", "1", "--out", "X", "--rgb", "0"], "--rgb", "positive"),
    (["collect", "--tasks", "BlockInBowl", "--episodes", "1", "--out", "X", "--rgb", "-64"], "--rgb", "positive"),
    (["eval", "--checkpoint", "C", "--tasks", "BlockInBowl", "--episodes", "0"], "--episodes", "positive"),
    (["eval", "--checkpoint", "C", "--tasks", "BlockInBowl", "--num-envs", "0"], "--num-envs", "positive"),
    (["eval", "--checkpoint", "C", "--tasks", "BlockInBowl", "--inference-steps", "-1"], "--inference-steps",
     "positive"),
    (["rollout", "--task", "BlockInBowl", "--seed", "-1"], "--seed", "seed"),
    (["plan", "--task", "BlockInBowl", "--seed", "-1"], "--seed", "seed"),
    (["demo", "--seed", "-1"], "--seed", "seed"),
    (["plan", "--task", "BlockInBowl", "--instruction", ""], "--instruction", "blank"),
    (["plan", "--task", "BlockInBowl", "--instruction", "   "], "--instruction", "blank"),
    (["demo", "--instruction", " \t "], "--instruction", "blank"),
    (["plan", "--task", "BlockInBowl", "--llm", "openai:m", "--llm-timeout", "0"], "--llm-timeout", "positive"),
    (["plan", "--task", "BlockInBowl", "--llm", "openai:m", "--llm-retries", "-1"], "--llm-retries", "non-negative"),
])
def test_bad_numbers_and_blank_text_are_refused_by_the_parser(capsys, argv, flag, what):
    rc, out, err = run_cli(capsys, argv)
    line = one_line(err)
    assert rc == 2 and not out
    assert line.startswith(f"taskweave {argv[0]}: error: argument {flag}") and what in line, line


@pytest.mark.parametrize("spec,says", [
    ("move:nosuchobj@1", "no object 'nosuchobj' in the BlockInBowl scene"),
    ("knock@99", "fires before skill 99, but an episode has at most 40 skills"),
    ("remove:ghost@0", "no object 'ghost'"),
])
def test_perturbations_the_scene_cannot_honour_are_bad_input(tmp_path, capsys, spec, says):
    rec_path = tmp_path / "rec.json"
    rec_path.write_text("a record written before")
    rc, out, err = run_cli(capsys, ["plan", "--task", "BlockInBowl", "--planner", "openloop", *SEED_OK,
                                    "--perturb", spec, "--out", str(rec_path)])
    line = one_line(err)
    assert rc == 2 and line.startswith("taskweave plan: error: perturbation") and says in line, line
    assert " 1. " not in out                               # refused at reset: no skill ran
    assert rec_path.read_text() == "a record written before"


def test_tasks_validate_names_a_missing_file_a_folder_and_a_non_utf8_file(tmp_path, capsys):
    rc, _, err = run_cli(capsys, ["tasks", "validate", str(tmp_path / "missing.py")])
    assert rc == 2 and one_line(err).endswith(f"{tmp_path / 'missing.py'}: no such file")
    rc, _, err = run_cli(capsys, ["tasks", "validate", str(tmp_path)])
    assert rc == 2 and f"{tmp_path}: is a folder" in one_line(err)
    bad = tmp_path / "latin1.py"
    bad.write_bytes(b"# caf\xe9\nTASK = 1\n")
    rc, _, err = run_cli(capsys, ["tasks", "validate", str(bad)])
    line = one_line(err)
    assert rc == 2 and f"{bad}: not UTF-8 text" in line and "0xe9" in line
    assert bad.read_bytes() == b"# caf\xe9\nTASK = 1\n"


# ---------------------------------------------------------------- errors that escape a run

@pytest.mark.parametrize("code,rc", [(errno.ENOSPC, 3), (errno.EACCES, 2)])
def test_os_error_during_a_run_is_one_line_naming_the_path(monkeypatch, capsys, code, rc):
    import taskweave.commands.rollout as rollout

    def broken(env, seed, on_tick=None):
        raise OSError(code, os.strerror(code), "/data/out/episode.bin")

    monkeypatch.setattr(rollout, "run_oracle_episode", broken)
    got, _, err = run_cli(capsys, ["rollout", "--task", "BlockInBowl", "--episodes", "1"])
    line = one_line(err)
    assert got == rc and line == f"taskweave rollout: error: {os.strerror(code)}: /data/out/episode.bin"


def test_unavailable_physics_backend_exits_3(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "taskweave.sim.pybullet_backend", None)   # the import fails
    rc, _, err = run_cli(capsys, ["rollout", "--task", "BlockInBowl", "--backend", "pybullet", "--episodes", "1"])
    line = one_line(err)
    assert rc == 3 and line.startswith("taskweave rollout: error: physics backend 'pybullet' is unavailable"), line
