"""The taskweave command line: listing, oracle rollouts, videos, and errors that name the problem."""
import json
import os
import subprocess
import sys

import pytest

from taskweave.cli import main


def test_tasks_lists_every_task(capsys):
    assert main(["tasks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 12 and all(r["description"] for r in rows)


def test_rollout_json_and_video(tmp_path, capsys):
    video = tmp_path / "roll.mp4"
    assert main(["rollout", "--task", "StackOnBlock", "--backend", "mujoco", "--episodes", "2", "--json",
                 "--video", str(video)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 2 and out["success_rate"] == 1.0
    assert [e["seed"] for e in out["per_episode"]] == [0, 1]
    assert video.stat().st_size > 10_000
    import imageio.v2 as imageio
    frames = imageio.mimread(str(video))
    assert len(frames) > 20 and frames[0].shape == (256, 256, 3)


def test_unknown_task_exits_2_naming_it(capsys):
    assert main(["rollout", "--task", "StackTowr", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'StackTowr'" in err and "StackTower" in err


def test_unknown_backend_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["rollout", "--task", "StackTower", "--backend", "gazebo"])
    assert e.value.code == 2
    assert "gazebo" in capsys.readouterr().err


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "taskweave.cli", "tasks"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "MUJOCO_GL": "egl"})
    assert r.returncode == 0 and "TowerOfHanoi" in r.stdout


def test_demo_decides_by_majority_by_default_and_names_a_missing_rgb_policy(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    assert main(["demo", "--llm", "offline", "--scripted", "--out", str(out)]) == 0
    trace = json.load(open(out / "trace.json"))
    assert trace["episode"]["success"] and trace["episode"]["extra"]["decide_mode"] == "majority"
    assert "--decide majority" in capsys.readouterr().out
    assert main(["demo", "--llm", "offline", "--scripted", "--decide", "votes", "--out", str(tmp_path / "v")]) == 0
    assert json.load(open(tmp_path / "v" / "trace.json"))["episode"]["extra"]["decide_mode"] == "votes"
    import taskweave.wiring as wiring
    monkeypatch.setattr(wiring, "SHIPPED", {**wiring.SHIPPED, "rgb": "no_such_policy.pt"})
    assert main(["demo", "--llm", "offline", "--policy", "rgb", "--out", str(tmp_path / "r")]) == 2
    assert "no shipped rgb policy" in capsys.readouterr().err
