"""GenSim-style generation: validation CLI, offline generation end to end, duplicates, repair loop, library envs."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from taskweave.cli import main as cli_main
from taskweave.generation import library as gl
from taskweave.generation import prompts as gp
from taskweave.generation.library import TaskLibrary, find_duplicate, register_library
from taskweave.generation.offline import OfflineTaskComposer, compose_module
from taskweave.generation.pipeline import STAGES, GenerationPipeline
from taskweave.generation.task import scene_from_data
from taskweave.generation.validate import validate_source
from taskweave.envs import get_task
from taskweave.envs.task import TaskError

TASKS = Path(__file__).parent / "data" / "tasks"
FAST = {"seeds": 1, "backends": ("mujoco",)}


def run_cli(argv, capsys) -> tuple:
    rc = cli_main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---- taskweave tasks validate -----------------------------------------------------------------
def test_handwritten_task_passes_validate_on_both_backends(capsys):
    rc, out, err = run_cli(["tasks", "validate", str(TASKS / "stack_in_zone.py"), "--json"], capsys)
    rep = json.loads(out)
    assert rc == 0, (rep["reason"], err)
    assert rep["accepted"] and rep["stage"] == "accepted" and rep["task"]["name"] == "StackInZone"
    assert set(rep["oracle"]) == {"mujoco", "pybullet"}
    for o in rep["oracle"].values():
        assert len(o["seeds"]) == 4 and o["successes"] >= 3 == o["required"]
    assert "StackInZone" not in [t.name for t in __import__("taskweave.envs.tasks", fromlist=["x"]).BUILTIN_TASKS]


def test_broken_task_is_rejected_with_the_reason(capsys):
    rc, out, err = run_cli(["tasks", "validate", str(TASKS / "broken_too_wide.py")], capsys)
    assert rc == 1
    assert "REJECTED" in out and "oracle" in err
    assert "wider than the gripper" in err                 # the cause, not just "failed"


def test_validate_usage_errors(tmp_path, capsys):
    assert run_cli(["tasks", "validate", str(tmp_path / "missing.py")], capsys)[0] == 2
    assert run_cli(["tasks", "validate", str(TASKS / "stack_in_zone.py"), "--seeds", "0"], capsys)[0] == 2


def test_static_contract_and_determinism_stages():
    good = (TASKS / "stack_in_zone.py").read_text()
    cheat = good.replace("    def build(self, rng):", "    def success(self, state):\n        return True\n\n"
                         "    def build(self, rng):")
    rep = validate_source(cheat, "cheat.py", **FAST)
    assert not rep.accepted and rep.stage == "static" and "task-contract" in rep.violations[0]
    assert validate_source("class (:\n", "bad.py", **FAST).stage == "parse"
    noisy = good.replace("rng=rng)", "rng=np.random.default_rng())").replace(
        "from __future__ import annotations\n", "from __future__ import annotations\n\nimport numpy as np\n")
    rep = validate_source(noisy, "noisy.py", **FAST)
    assert rep.stage == "inspect" and "not deterministic" in rep.reason
    missing = good.replace('P("on", f"{ct}_block"', 'P("on", f"{ct}_cube"')
    rep = validate_source(missing, "missing.py", **FAST)
    assert rep.stage == "inspect" and "not in the scene" in rep.reason and "_cube" in rep.feedback()


def test_untrusted_scene_data_is_checked():
    ok = {"objects": [{"name": "a", "shape": "box", "size": [0.02, 0.02, 0.02], "color": "red", "pos": [0.5, 0, 0.02]}],
          "zones": []}
    assert scene_from_data(ok).objects[0].name == "a"
    for bad in ({"objects": "x"}, {"objects": [dict(ok["objects"][0], name="a b")], "zones": []},
                {"objects": [dict(ok["objects"][0], size=[float("nan")] * 3)], "zones": []},
                {"objects": [dict(ok["objects"][0], color="octarine")], "zones": []}):
        with pytest.raises(TaskError):
            scene_from_data(bad)


# ---- duplicates and diversity -------------------------------------------------------------------
def test_duplicates_are_rejected_by_description_and_goal_structure():
    builtins = gl.builtin_records()
    clone = {"name": "PutBlockInBowl", "description": "put the named block in the bowl, with a distractor",
             "instruction": "put the red block in the blue bowl", "signature": ["inside(block,container)"],
             "assets": ["block", "container"]}
    dup = find_duplicate(clone, builtins)
    assert dup and dup["name"] == "BlockInBowl" and "goal structure" in dup["why"]
    new = dict(clone, name="ZoneStack", description="put a base block in a zone and stack a block on it",
               signature=["inside(block,zone)", "on(block,block)"], assets=["block", "zone"])
    assert find_duplicate(new, builtins) is None
    assert find_duplicate(dict(new, name="BlockInBowl"), builtins)["why"].startswith("same name")
    assert 0.3 < gl.diversity(builtins) <= 1.0 and gl.diversity(builtins[:1]) == 0.0


class ScriptedLLM:
    """A fake LLM answering each stage from a script (the last reply repeats); it keeps every prompt."""

    def __init__(self, **replies):
        self.replies = {k: list(v) for k, v in replies.items()}
        self.prompts = []
        self.constraints = {}

    def complete(self, messages, n=1, temperature=0.0, top_p=1.0, max_tokens=None, stop=None, tag="",
                 constraint=None):
        stage = gp.stage_of(messages)
        self.prompts.append((stage, messages[-1]["content"]))
        self.constraints[stage] = constraint
        queue = self.replies[stage]
        text = queue.pop(0) if len(queue) > 1 else queue[0]
        return SimpleNamespace(texts=[text] * n, prompt_tokens=10, completion_tokens=5)


def _script(proposal: dict, *codes: str) -> ScriptedLLM:
    fence = lambda lang, text: f"```{lang}\n{text}\n```"  # noqa: E731
    return ScriptedLLM(propose=[fence("json", json.dumps(proposal))], reference=[fence("json", '["PlaceInZone"]')],
                       implement=[fence("python", codes[0])], repair=[fence("python", c) for c in codes[1:]] or ["?"],
                       reflect=[fence("json", '{"new": true, "useful": true, "reason": "ok"}')])


def test_repair_loop_feeds_the_error_back(tmp_path):
    good = (TASKS / "stack_in_zone.py").read_text()
    broken = good.replace('P("on", f"{ct}_block"', 'P("on", f"{ct}_cube"')
    llm = _script({"name": "StackInZone", "description": "stack in zone"}, broken, good)
    pipe = GenerationPipeline(llm, TaskLibrary(tmp_path / "lib"), str(tmp_path / "run"), seeds=1,
                              backends=("mujoco",), progress=False)
    summary = pipe.run(1)
    repairs = [p for s, p in llm.prompts if s == "repair"]
    assert len(repairs) == 1
    assert "not in the scene" in repairs[0] and "_cube" in repairs[0] and broken.strip() in repairs[0]
    assert summary["stats"]["repaired"] == 1 and summary["accepted_tasks"] == ["Gen_StackInZone"]
    implement = next(p for s, p in llm.prompts if s == "implement")
    assert "class PlaceInZone(Task)" in implement            # the reference stage's pick, as code
    # JSON stages ask for constrained output; code stages are free text (validated, run only in the sandbox)
    assert llm.constraints["propose"].kind == "json_schema" and "goal_sketch" in llm.constraints["propose"].schema[
        "properties"]
    assert "PlaceInZone" in llm.constraints["reference"].schema["items"]["enum"]
    assert llm.constraints["reflect"].schema["required"] == ["new", "useful", "reason"]
    assert llm.constraints["implement"] is None and llm.constraints["repair"] is None


def test_duplicate_candidate_is_rejected_after_validation(tmp_path):
    clone = '''"""A renamed PlaceInZone."""
from taskweave.envs.task import P, Layout, SceneSpec, Task, block, pick_colors, zone


class MoveBlockToZone(Task):
    """One block into one zone."""

    name = "MoveBlockToZone"
    description = "put the named block inside the named coloured zone"

    def build(self, rng):
        lay = Layout(rng)
        cz, cb = pick_colors(rng, 2)
        zones = [zone(f"{cz}_zone", cz, lay.spot(0.07))]
        self.instruction = f"put the {cb} block in the {cz} zone"
        self.goals = [P("inside", f"{cb}_block", f"{cz}_zone")]
        return SceneSpec(objects=[block(f"{cb}_block", cb, lay.spot(), rng=rng)], zones=zones)
'''
    llm = _script({"name": "MoveBlockToZone", "description": "move a block to a zone"}, clone)
    pipe = GenerationPipeline(llm, TaskLibrary(tmp_path / "lib"), str(tmp_path / "run"), seeds=1,
                              backends=("mujoco",), progress=False)
    s = pipe.run(1)["stats"]
    assert s["counts"]["oracle_passed"] == 1 and s["counts"]["novel"] == 0 and s["rejected_at"] == {"novel": 1}
    outcome = json.loads((tmp_path / "run" / "candidates.jsonl").read_text().splitlines()[0])
    assert outcome["duplicate"]["name"] == "PlaceInZone" and "duplicate" in outcome["reason"]
    assert TaskLibrary(tmp_path / "lib").names() == []


# ---- offline generation end to end ----------------------------------------------------------------
def test_offline_composer_is_deterministic_and_says_what_it_is():
    lib = [{k: r[k] for k in ("name", "description", "signature", "assets")} for r in gl.builtin_records()]
    prompt = gp.PROPOSE_EXPLORE.substitute(api="", library=gp.as_json(lib), bad_section="", previous_section="")
    a = OfflineTaskComposer(seed=3).complete(gp.messages(prompt)).text
    b = OfflineTaskComposer(seed=3).complete(gp.messages(prompt)).text
    assert a == b and gp.extract_json(a)["name"] not in {r["name"] for r in lib}
    assert "not by a language model" in compose_module("X", ("zonestack",), "d")
    assert "not a language model" in OfflineTaskComposer.disclaimer


def test_generate_offline_end_to_end_and_load_as_envs(tmp_path, capsys):
    lib, run = tmp_path / "lib", tmp_path / "run"
    rc, out, err = run_cli(["generate", "--mode", "explore", "--n", "2", "--llm", "offline", "--library", str(lib),
                            "--out", str(run), "--seed", "1", "--seeds", "2", "--json"], capsys)
    assert rc == 0, err
    summary = json.loads(out)
    saved = json.loads((run / "stats.json").read_text())
    assert saved["stats"] == summary["stats"]
    counts = [summary["stats"]["counts"][s] for s in STAGES]
    assert counts[0] == 2 and all(a >= b for a, b in zip(counts, counts[1:], strict=False)), counts
    assert summary["stats"]["accepted"] >= 1 and len(summary["accepted_tasks"]) == summary["stats"]["accepted"]
    assert (run / "candidates.jsonl").read_text().count("\n") == 2
    assert summary["stats"]["repaired"] >= 1             # seed 1: the composer's first draft is flawed, then fixed
    meta = TaskLibrary(lib).meta(summary["accepted_tasks"][0])
    for key in ("name", "description", "assets", "parents", "mode", "llm", "prompt_hashes", "code_sha256"):
        assert meta[key] not in (None, ""), key
    names = register_library(str(lib))
    assert sorted(names) == sorted(summary["accepted_tasks"])
    env = gym.make(f"taskweave/{names[0]}-v0")
    obs, _ = env.reset(seed=5)
    assert env.unwrapped.instruction and env.unwrapped.task.goals
    check_env(env.unwrapped, skip_render_check=True)
    env.close()
    task = get_task(names[0])                              # cached: no new sandbox call for a seen seed
    task._run_inspect = lambda seeds: pytest.fail("inspect was not cached")
    assert task.reset(5) and task.goals
    path = Path(TaskLibrary(lib).path) / names[0][len("Gen_"):] / "task.py"
    path.write_text(path.read_text() + "\n# edited after validation\n")
    with pytest.raises(TaskError, match="changed since it was validated"):
        get_task(names[0])
