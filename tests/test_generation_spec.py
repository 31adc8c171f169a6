"""The JSON task spec implement stage: a strict format, a fixed-template module, the pipeline's repair loop."""
from __future__ import annotations

import json

import pytest

from taskweave.generation.library import TaskLibrary
from taskweave.generation.pipeline import GenerationPipeline
from taskweave.generation.spec import TASK_SPEC_SCHEMA, TaskSpecError, parse_task_spec, render_task_module
from taskweave.generation.validate import validate_source
from taskweave.planning.llm import LLMClient, LLMResponse

GOOD = {"name": "RedInBowlOnBlue", "description": "put the blue block in the bowl and the red block on it",
        "instruction": "put the blue block in the green bowl, then the red block on the blue block",
        "objects": [{"name": "red_block", "kind": "block", "color": "red"},
                    {"name": "blue_block", "kind": "block", "color": "blue"},
                    {"name": "green_bowl", "kind": "bowl", "color": "green"}],
        "zones": [], "goals": [{"predicate": "inside", "args": ["blue_block", "green_bowl"]},
                               {"predicate": "on", "args": ["red_block", "blue_block"]}]}


def _with(**changes):
    d = json.loads(json.dumps(GOOD))
    d.update(changes)
    return d


@pytest.mark.parametrize("spec, why", [
    ("{not json", "not JSON"),
    ([1, 2], "must be a JSON object"),
    (_with(name="lower"), "'name' must be CamelCase"),
    (_with(extra=1), "unknown task spec field"),
    (_with(objects=[{"name": "x_block", "kind": "lamp", "color": "red"}]), r"objects\[0\].kind"),
    (_with(objects=GOOD["objects"] + [{"name": "red_block", "kind": "block", "color": "red"}]), "used twice"),
    (_with(goals=[{"predicate": "on", "args": ["red_block", "ghost"]}]), "'ghost' is not an object or zone"),
    (_with(goals=[{"predicate": "inside", "args": ["red_block", "blue_block"]}]), "needs a bowl or a zone"),
    (_with(goals=[{"predicate": "on", "args": ["green_bowl", "red_block"]}]), "cannot be picked"),
    (_with(goals=[{"predicate": "fly", "args": ["red_block"]}]), r"goals\[0\].predicate"),
    (_with(instruction="x\ny is two lines"), "'instruction' must be one line"),
])
def test_a_spec_that_breaks_the_format_names_the_field(spec, why):
    with pytest.raises(TaskSpecError, match=why):
        parse_task_spec(spec)


def test_values_enter_the_module_only_as_literals_and_it_validates():
    # a sentence that looks like code stays a string literal
    spec = _with(description="ok'); import os; os.system('x') #")
    src = render_task_module(spec)
    assert "import os" not in src.split("description = ")[0] and src.count("\nimport") == 0
    assert "description = " + repr(spec["description"]) in src
    rep = validate_source(render_task_module(GOOD), "spec.py", seeds=4)
    assert rep.accepted, rep.summary()
    assert rep.task["goals"] == [["inside", ["blue_block", "green_bowl"]], ["on", ["red_block", "blue_block"]]] \
        or len(rep.task["goals"]) == 2


class ScriptedStages(LLMClient):
    """A test double answering each generation stage from a script (the stage is read from the prompt)."""

    constraint_kinds = frozenset({"json_schema"})

    def __init__(self, specs):
        super().__init__("scripted")
        self.specs, self.seen = list(specs), []

    def _complete(self, messages, n, temperature, top_p, max_tokens, stop, tag, constraint=None):
        user = messages[-1]["content"]
        stage = user.split("### STAGE: ", 1)[1].split()[0]
        self.seen.append((stage, constraint.schema if constraint is not None else None, max_tokens))
        if stage == "propose":
            text = json.dumps({"name": "RedInBowlOnBlue", "description": GOOD["description"], "assets": ["block"],
                               "goal_sketch": "inside then on", "parents": []})
        elif stage == "reference":
            text = "[]"
        elif stage in ("implement_spec", "repair_spec"):
            text = self.specs.pop(0)
        else:
            text = json.dumps({"new": True, "useful": True, "reason": "new combination"})
        return LLMResponse(texts=[text] * n, model="scripted")


def test_pipeline_takes_a_spec_through_repair_to_the_library(tmp_path):
    bad = json.dumps(_with(goals=[{"predicate": "on", "args": ["red_block", "ghost"]}]))
    llm = ScriptedStages([bad, json.dumps(GOOD)])
    lib = TaskLibrary(str(tmp_path / "lib"))
    pipe = GenerationPipeline(llm, lib, str(tmp_path / "run"), seeds=4, reflect_votes=1, progress=False,
                              implement="spec", log=lambda *a: None)
    summary = pipe.run(1)
    assert summary["implement"] == "spec" and summary["stats"]["accepted"] == 1, summary
    assert summary["stats"]["repairs"] == 1 and summary["stats"]["repaired"] == 1
    stages = [s for s, _, _ in llm.seen]
    assert stages[:4] == ["propose", "reference", "implement_spec", "repair_spec"]
    # the spec stages were constrained to the task spec schema, with a spec-sized budget
    assert all(schema == TASK_SPEC_SCHEMA and mt == 768 for s, schema, mt in llm.seen if s.endswith("_spec"))
    cand = json.loads((tmp_path / "run" / "candidates.jsonl").read_text().splitlines()[0])
    assert "'ghost' is not an object or zone" in cand["attempts"][0]["reason"]
    assert lib.names() == ["RedInBowlOnBlue"] and lib.meta("RedInBowlOnBlue")["implement"] == "spec"
