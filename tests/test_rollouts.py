"""The rollout executor (issue 14): inline and local pools give the same results, a worker killed mid-job only
costs that job (it runs again, its result is handed out once), Ray missing is one line naming the pip command;
collection, evaluation (per-episode seeded sampling, issue 12 item 5) and `taskweave rollout` give the same
episodes whatever runs them. The Ray cluster cases are in tests/test_ray_cluster.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from taskweave.cli import main
from taskweave.policies.collect import SPLIT_SEED_BASE, collect
from taskweave.sim.errors import RunError, UserError
from taskweave.sim.rollouts import ExecutorError, make_executor

ENV = {**os.environ, "TASKWEAVE_LIBRARY": "/nonexistent", "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- jobs (module level: picklable)
def square(x: int) -> tuple:
    return x * x, os.getpid()


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def die_once(x: int, flag: str) -> int:
    """Job 3 kills its worker the first time (mid-job: after some work), then succeeds."""
    time.sleep(0.05)
    if x == 3 and not os.path.exists(flag):
        open(flag, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def always_die(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def user_error(x: int) -> int:
    raise UserError(f"bad job {x}")


# ----------------------------------------------------------------------------- the executor
def test_inline_and_local_pool_map_the_same_and_run_in_workers():
    jobs = [(i,) for i in range(7)]
    with make_executor(1) as inline, make_executor(2) as pool:
        a, b = inline.map(square, jobs), pool.map(square, jobs)
        assert inline.kind == "inline" and pool.kind == "local" and pool.parallelism == 2
    assert [r for r, _ in a] == [r for r, _ in b] == [i * i for i in range(7)]
    assert {p for _, p in a} == {os.getpid()} and os.getpid() not in {p for _, p in b}


def test_a_worker_killed_mid_job_reruns_it_and_every_result_comes_once(tmp_path, capsys):
    flag = str(tmp_path / "died")
    with make_executor(2) as ex:
        got = list(ex.imap_unordered(die_once, [(i, flag) for i in range(10)], window=4))
        retried = ex.retried
    assert os.path.exists(flag), "the worker was killed"
    assert sorted(i for i, _ in got) == list(range(10)) and sorted(r for _, r in got) == list(range(10))
    assert retried >= 1 and "a worker process died; re-running" in capsys.readouterr().err


def test_a_job_that_keeps_killing_its_worker_is_a_run_error():
    with make_executor(2) as ex:
        with pytest.raises(RunError, match="died under job always_die.*3 times"):
            ex.map(always_die, [(1,)])


def test_a_jobs_own_exception_reaches_the_caller_as_it_is():
    for workers in (1, 2):
        with make_executor(workers) as ex:
            with pytest.raises(UserError, match="bad job 5"):
                ex.map(user_error, [(5,)])


def test_ray_without_ray_installed_is_one_line_naming_the_pip_command(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"   # `import ray` raises ImportError, as when it is missing
            "from taskweave.cli import main\n"
            "sys.exit(main(['rollout', '--task', 'PlaceInZone', '--episodes', '1', '--ray', 'auto']))")
    p = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr
    assert len(err) == 1 and "pip install 'taskweave[ray]'" in err[0] and "ray==2.60.0" in err[0], err


def test_bad_ray_addresses_are_user_errors():
    pytest.importorskip("ray")
    with pytest.raises(ExecutorError, match="HOST:PORT"):
        make_executor(1, "nonsense")
    with pytest.raises(ExecutorError, match="no Ray cluster answers"):
        make_executor(1, "127.0.0.1:1")


# ----------------------------------------------------------------------------- same seeds, same results
def dataset_arrays(path: str) -> dict:
    """Every stored array of a dataset plus its episode list (task, seed, split, length)."""
    root = zarr.open_group(os.path.join(path, "data.zarr"), mode="r")
    out = {name: arr[:] for name, arr in root.arrays()}
    for gname, group in root.groups():
        out.update({f"{gname}/{name}": arr[:] for name, arr in group.arrays()})
    meta = json.load(open(os.path.join(path, "meta.json")))
    out["episodes"] = [(e["task"], e["seed"], e["split"], e["length"]) for e in meta["episodes"]]
    return out


def assert_same_dataset(a: dict, b: dict) -> None:
    assert a["episodes"] == b["episodes"] and {"data/state", "data/action", "meta/episode_ends"} <= set(a)
    assert sorted(a) == sorted(b)
    for k in a:
        if k != "episodes":
            assert np.array_equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def local_datasets(tmp_path_factory):
    """The same collection inline and on 2 local workers (shared with the Ray tests' reference)."""
    root = tmp_path_factory.mktemp("same")
    out = {}
    for w in (1, 2):
        path = str(root / f"w{w}")
        collect(["PlaceInZone", "BlockInBowl"], 3, "mujoco", path, val_episodes=1, workers=w, progress=False)
        out[w] = path
    return out


def test_collection_is_the_same_on_one_and_two_workers(local_datasets):
    a, b = dataset_arrays(local_datasets[1]), dataset_arrays(local_datasets[2])
    assert_same_dataset(a, b)
    assert [e[:3] for e in a["episodes"]][:4] == [("PlaceInZone", 0, "train"), ("PlaceInZone", 1, "train"),
                                                  ("PlaceInZone", 2, "train"),
                                                  ("PlaceInZone", SPLIT_SEED_BASE["val"], "val")]


def test_rollout_cli_gives_the_same_episodes_on_one_and_two_workers(tmp_path, capsys):
    runs = []
    for w in ("1", "2"):
        assert main(["rollout", "--task", "PlaceInZone", "--episodes", "3", "--seed", "5", "--json",
                     "--workers", w]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert [r["seed"] for r in runs[0]["per_episode"]] == [5, 6, 7]
    drop = ("wall_time",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in runs[0]["per_episode"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in runs[1]["per_episode"]]
    assert runs[1]["executor"].startswith("local pool (2")


@pytest.fixture(scope="module")
def tiny_checkpoint(local_datasets, tmp_path_factory):
    from taskweave.policies.diffusion.configuration import DiffusionConfig
    from taskweave.policies.train import train
    cfg = DiffusionConfig(down_dims=(16, 32), diffusion_step_embed_dim=16, state_hidden_dim=32, state_feature_dim=16,
                          text_embed_dim=16, skill_cond_dim=8, task_embed_dim=4, batch_size=8, steps=3,
                          checkpoint_every=3, log_every=1, num_inference_steps=2, use_ema=False)
    out = str(tmp_path_factory.mktemp("ck") / "run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(local_datasets[1], out, cfg, device="cpu", progress=False, log=lambda *a, **k: None)
    finally:
        torch.set_num_threads(threads)
    return out


def episodes_of(r: dict) -> dict:
    return {t: [(e["seed"], e["success"], e["action_sha256"], [(s["call"], s["ticks"], s["failure"])
                                                               for s in e["skills"]]) for e in v["per_episode"]]
            for t, v in r["tasks"].items()}


def test_eval_does_not_depend_on_task_order_or_workers(tiny_checkpoint):
    from taskweave.policies.evaluate import evaluate
    kw = dict(episodes=3, split="val", num_envs=2, device="cpu", max_ticks=5, progress=False)
    ab = evaluate(tiny_checkpoint, ["PlaceInZone", "BlockInBowl"], workers=1, **kw)
    ba = evaluate(tiny_checkpoint, ["BlockInBowl", "PlaceInZone"], workers=2, **kw)
    assert episodes_of(ab) == episodes_of(ba)
    assert ab["tasks"]["PlaceInZone"]["seeds"] == [SPLIT_SEED_BASE["val"] + i for i in range(3)]
    digests = [e[2] for rows in episodes_of(ab).values() for e in rows]
    assert len(set(digests)) == len(digests), "each episode's actions (its own seeded noise) differ"
    assert ab["sampling"].startswith("per-episode") and "local pool" in ba["executor"]
    for t in ab["tasks"].values():
        assert 0.0 <= t["ci95"][0] <= t["success_rate"] <= t["ci95"][1] <= 1.0
    assert all(0.0 <= v["ci95"][0] <= v["ci95"][1] <= 1.0 for v in ab["skills"].values())


def test_per_env_generators_make_a_sample_independent_of_its_batch(tiny_checkpoint):
    from taskweave.policies.runner import PolicyRunner
    alone = PolicyRunner.from_checkpoint(tiny_checkpoint, num_envs=1, device="cpu", seed=0)
    pair = PolicyRunner.from_checkpoint(tiny_checkpoint, num_envs=2, device="cpu", seed=0)
    dim = alone.config.state_dim
    state = np.random.default_rng(0).normal(size=(2, dim)).astype(np.float32)
    text = alone.skills[0]
    alone.seed_envs([42])
    pair.seed_envs([7, 42])
    a = alone.act({"state": state[1:]}, [text], [0])[0]
    b = pair.act({"state": state}, [text, text], [0, 0])[1]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    pair.seed_envs([7, 43])
    pair.reset()
    c = pair.act({"state": state}, [text, text], [0, 0])[1]
    assert not np.allclose(a, c, atol=1e-3), "another seed, other noise"


def test_eval_cli_defaults_to_50_episodes_and_refuses_an_unknown_task(tiny_checkpoint, capsys):
    from taskweave.cli import build_parser
    args = build_parser("eval").parse_args(["eval", "--checkpoint", "x", "--tasks", "A"])
    assert args.episodes == 50 and args.workers == 1 and args.ray is None
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--tasks", "NoSuchTask", "--device", "cpu"]) == 2
    assert "NoSuchTask" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--tasks", "StackOnBlock", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'StackOnBlock' was not in the training data" in err[0]


def test_eval_end_to_end_with_a_planner_supplying_the_skills(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", "--checkpoint", tiny_checkpoint, "--tasks", "PlaceInZone", "--episodes", "2", "--split", "val",
               "--planner", "openloop", "--llm", "offline", "--max-ticks", "4", "--device", "cpu", "--workers", "2",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    r = json.loads((out / "eval.json").read_text())
    assert r["planner"] == "openloop" and r["skills_from"] == "planner" and "local pool" in r["executor"]
    t = r["tasks"]["PlaceInZone"]
    assert t["seeds"] == [SPLIT_SEED_BASE["val"], SPLIT_SEED_BASE["val"] + 1] and t["skill_attempts"] >= 2
    assert all(s["call"].startswith(("pick(", "place(")) for e in t["per_episode"] for s in e["skills"])
    assert "openloop planner" in (out / "eval.md").read_text()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--tasks", "StackOnBlock", "--planner", "tree",
                 "--llm", "offline", "--device", "cpu"]) == 2
    assert "'StackOnBlock' was not in the training data" in capsys.readouterr().err
