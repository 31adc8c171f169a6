"""Generated tasks: the static policy rejects hostile modules, and the sandbox contains them anyway."""
from __future__ import annotations

import dis
import importlib.util
import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from taskweave.generation.sandbox import child, guard
from taskweave.generation.sandbox.launcher import run_sandboxed
from taskweave.generation.sandbox.static import StaticPolicyError, check_source, enforce_source

HOSTILE = Path(__file__).parent / "data" / "hostile"
FAST = {"timeout_s": 6, "memory_mb": 512}
INSPECT = {"kind": "inspect", "seeds": [0]}
HAVE_TASK = importlib.util.find_spec("taskweave.envs.task") is not None
needs_task = pytest.mark.skipif(not HAVE_TASK, reason="taskweave.envs.task (the Task base class) is not written yet")

BENIGN = '''"""Put the block in the bowl."""
from __future__ import annotations

import math

import numpy as np

from taskweave.envs.task import P, Layout, SceneSpec, Task, block, bowl, pick_colors

CLEARANCE = 0.06
TILT = math.pi / 8


class BlockToBowl(Task):
    """One block, one bowl."""

    name = "BlockToBowl"
    description = "put the block in the bowl"

    def build(self, rng):
        lay = Layout(rng)
        cb, cw = pick_colors(rng, 2)
        objs = [bowl(f"{cw}_bowl", cw, lay.spot(CLEARANCE)), block(f"{cb}_block", cb, lay.spot(), rng=rng)]
        self.instruction = f"put the {cb} block in the {cw} bowl"
        self.goals = [P("inside", f"{cb}_block", f"{cw}_bowl")]
        print("built with tilt", round(float(np.cos(TILT)), 3))
        return SceneSpec(objects=objs)
'''


def hostile(name: str, **subs) -> str:
    """A hostile module's source with its placeholders filled in."""
    text = (HOSTILE / f"{name}.py").read_text()
    for key, value in subs.items():
        text = text.replace(f"@{key}@", str(value))
    return text


def run_hostile(name: str, **subs):
    return run_sandboxed(hostile(name, **subs), INSPECT, skip_static_check=True, **FAST)


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    return d


def assert_contained(res, outside: Path) -> None:
    assert not res.ok, res
    assert sorted(p.name for p in outside.iterdir()) == [], "something was written outside the sandbox"
    assert not os.path.exists(res.isolation["scratch"]), "scratch directory was not removed"


# ---- static policy ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.stem for p in HOSTILE.glob("*.py")))
def test_hostile_modules_are_rejected_statically(name, tmp_path):
    source = hostile(name, TARGET=tmp_path, PORT=9, VICTIM=1, SECRET=tmp_path / "secret")
    errors = [v for v in check_source(source, f"{name}.py") if v.severity == "error"]
    assert errors, f"{name} passed the static policy"
    assert all(v.line >= 0 and v.col >= 0 and v.message for v in errors)
    with pytest.raises(StaticPolicyError) as info:
        run_sandboxed(source, INSPECT)
    assert info.value.violations and name in str(info.value) or "violation" in str(info.value)


@needs_task
def test_benign_module_passes_the_static_policy():
    assert check_source(BENIGN, "benign.py") == []


def test_static_policy_rules():
    def rules(src):
        return {(v.rule, v.severity) for v in check_source(src, "t.py")}
    head = "from taskweave.envs.task import Task\n"
    task = "class T(Task):\n    def build(self, rng):\n        return None\n"
    assert ("star-import", "error") in rules("from math import *\n" + head + task)
    assert ("import", "error") in rules("import json\n" + head + task)
    assert ("module-level", "error") in rules(head + task + "print('hi')\n")
    assert ("module-level", "error") not in rules(head + "import math\nX = 2 * math.pi\nY = (1, -2.5)\n" + task)
    assert ("task-class", "error") in rules(head + task + task.replace("class T", "class U"))
    assert ("task-class", "error") in rules(head + "class T(Task):\n    pass\n")
    assert ("infinite-loop", "error") in rules(head + task.replace("return None", "while True:\n            pass"))
    loop = "while True:\n            "
    assert ("infinite-loop", "warning") in rules(head + task.replace("return None", loop + "return 1"))
    assert not {r for r, _ in rules(head + task.replace("return None", "while True:\n            break"))}
    assert ("dunder", "error") in rules(head + task.replace("None", "'{0.__class__}'.format(rng)"))
    assert ("private", "error") in rules(head + "import numpy as np\n" + task.replace("None", "np._core"))
    assert ("internals", "error") in rules(head + task.replace("None", "rng.gi_frame"))
    assert ("metaclass", "error") in rules(head + task.replace("(Task)", "(Task, metaclass=type)"))
    assert ("internals", "error") in rules(head + "import numpy as np\n" + task.replace("None", "np.save('x', 1)"))
    assert ("internals", "error") in rules("from typing import functools\n" + head + task)
    assert ("internals", "error") in rules(head + "import dataclasses\n" + task.replace("None", "dataclasses.abc"))
    assert check_source(head + "__all__ = ['T']\n" + task) == []
    documented = task.replace("(Task):\n", '(Task):\n    """Overrides __init__? No."""\n\n')
    assert check_source('"""Mentions __init__."""\n' + head + documented) == []
    ok = head + "class T(Task):\n    def __init__(self):\n        super().__init__()\n\n    def build(self, rng):\n" \
        "        return None\n"
    assert check_source(ok, "t.py") == []
    warnings = enforce_source(head + task.replace("return None", "while 1:\n            raise ValueError"))
    assert warnings[0].severity == "warning"
    assert check_source("def (:\n")[0].rule == "syntax"
    assert check_source("x = " + "(" * 500 + ")" * 500)[0].rule == "syntax"


@pytest.mark.parametrize("factory", [guard.install_guard, child.json_writer])
def test_guard_and_answer_writer_use_no_patchable_globals(factory):
    """Everything the audit hook and the answer encoder consult is bound in closures: task code cannot patch it."""
    names = []
    for const in factory.__code__.co_consts:
        todo = [const] if isinstance(const, types.CodeType) else []
        while todo:
            code = todo.pop()
            names += [i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")]
            todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    assert names == []


def test_answer_writer_matches_json():
    enc = child.json_writer()
    value = {"a": [1, 2.5, None, True, False, "é\"\n"], "b": {"c": (3, -0.0)}, "nan": float("nan"), 7: "dropped"}
    assert json.loads(enc(value)) == {"a": [1, 2.5, None, True, False, "é\"\n"], "b": {"c": [3, -0.0]}, "nan": None}
    assert json.loads(enc({"x": object()})) == {"x": "<unserialisable>"}


# ---- runtime containment ------------------------------------------------------------------
@needs_task
def test_benign_module_runs_and_returns_data():
    res = run_sandboxed(BENIGN, {"kind": "inspect", "seeds": [0, 1, 0]}, **FAST)
    assert res.ok, (res.error, res.stderr, res.result)
    assert res.returncode == 0 and res.killed_by is None and res.blocked == []
    out = res.result
    assert out["name"] == "BlockToBowl" and out["task_class"] == "BlockToBowl"
    first, second, again = out["builds"]
    assert first == again and first != second             # seeded, deterministic
    assert first["instruction"].startswith("put the ")
    assert first["goals"][0][0] == "inside" and len(first["goals"][0][1]) == 2
    names = [o["name"] for o in first["scene"]["objects"]]
    assert set(first["goals"][0][1]) == set(names)
    assert "built with tilt 0.924" in res.stdout
    json.dumps(out)                                          # plain data all the way down


@needs_task
def test_benign_module_with_dataclasses_and_namedtuples():
    source = (Path(__file__).parent / "data" / "benign" / "stack_by_size.py").read_text()
    assert check_source(source, "stack_by_size.py") == []
    res = run_sandboxed(source, {"kind": "inspect", "seeds": [3]}, **FAST)
    assert res.ok, (res.error, res.stderr, res.result)
    build = res.result["builds"][0]
    assert [g[0] for g in build["goals"]] == ["on", "on"]
    assert build["scene"]["zones"][0]["name"] == "target_zone"


@needs_task
def test_task_errors_come_back_with_the_task_line():
    line = "        lay = Layout(rng)\n"
    source = BENIGN.replace(line, line + "        raise ValueError('no room')\n")
    res = run_sandboxed(source, INSPECT, **FAST)
    assert not res.ok and res.killed_by is None and res.returncode == 1
    err = res.result["builds"][0]["error"]
    assert err["type"] == "ValueError" and err["message"] == "no room"
    assert "raise ValueError('no room')" in err["traceback"]


@pytest.mark.parametrize("name", ["fs_write", "spawn", "import_os", "import_sys", "dunder_import", "getattr_builtins",
                                  "subclasses_chain", "frames", "ctypes_escape", "forge_result", "hide_tracks"])
def test_hostile_writes_and_commands_are_contained(name, outside):
    res = run_hostile(name, TARGET=outside)
    assert_contained(res, outside)
    assert res.killed_by is None and res.result is not None
    assert res.result.get("builds") != []                  # forge_result's fake answer did not get through
    assert res.result.get("error") or any("error" in b for b in res.result.get("builds", [])) or res.blocked


def test_network_is_unreachable(outside):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    try:
        res = run_hostile("network", PORT=listener.getsockname()[1])
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert not res.ok and res.killed_by is None
    assert any("socket" in b for b in res.blocked) or "Unreachable" in json.dumps(res.result)


def test_infinite_loop_is_killed_by_the_timeout():
    res = run_sandboxed(hostile("infinite_loop"), INSPECT, skip_static_check=True, timeout_s=3, memory_mb=512)
    assert not res.ok and res.killed_by == "timeout" and res.result is None
    assert res.duration_s < 3 + 2.5


def test_memory_bomb_is_stopped_by_the_memory_limit():
    res = run_sandboxed(hostile("memory_bomb"), INSPECT, skip_static_check=True, timeout_s=10, memory_mb=384)
    assert not res.ok and res.killed_by == "memory", (res.returncode, res.stderr[-500:])


def _processes_mentioning(text: str) -> list:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(pid))
    return found


def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    res = run_hostile("fork_bomb")
    assert not res.ok and res.killed_by in (None, "timeout")
    assert _processes_mentioning(res.isolation["scratch"]) == []          # the whole group is gone
    assert res.duration_s < FAST["timeout_s"] + 2.5


def test_processes_outside_the_sandbox_cannot_be_killed():
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        res = run_hostile("kill_host", VICTIM=victim.pid)
        assert victim.poll() is None, "the sandbox killed a host process"
        assert not res.ok
    finally:
        victim.kill()
        victim.wait()


def test_files_outside_the_sandbox_cannot_be_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-7f3a")
    res = run_hostile("read_secret", SECRET=secret)
    leaked = res.stdout + res.stderr + json.dumps(res.result)
    assert "TOP-SECRET-7f3a" not in leaked
    assert not res.ok


def test_network_namespace_alone_blocks_loopback():
    """The OS layer by itself, without the in-child guard: the child's loopback is not the host's."""
    from taskweave.generation.sandbox.launcher import network_isolation
    prefix = [p for p in network_isolation() if p != "os.unshare"]
    if not prefix:
        pytest.skip("no usable network namespace here (unshare missing or not permitted)")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    code = f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n" \
           "    print('connected')\nexcept OSError as e:\n    print('refused', e)\n"
    try:
        out = subprocess.run(prefix + [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=20)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert "refused" in out.stdout, out


@needs_task
def test_in_child_privilege_drop_fallback(monkeypatch):
    """Without setpriv the child drops to nobody itself, after importing what it needs."""
    from taskweave.generation.sandbox import launcher
    if os.geteuid() != 0:
        pytest.skip("only root drops privileges")
    monkeypatch.setattr(launcher, "privilege_drop", lambda: {"uid": 65534, "gid": 65534, "prefix": (), "caps": None})
    res = run_sandboxed(BENIGN, INSPECT, **FAST)
    assert res.ok and res.isolation["uid"] == 65534, (res.error, res.stderr, res.result)
