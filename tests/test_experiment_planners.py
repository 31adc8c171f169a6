"""experiments/planners.py as a user runs it: one run per record file, a report regenerated from a shipped
replay file (no model), the --note paragraph and the after-a-failure section."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

from taskweave.sim.locks import FolderLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, "docs", "results", "planning_smollm2-135m_clea.jsonl")


@pytest.fixture(scope="module")
def planners():
    spec = importlib.util.spec_from_file_location("planners_experiment", os.path.join(ROOT, "experiments",
                                                                                      "planners.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_second_run_on_a_record_in_use_is_refused_and_loses_nothing(planners, tmp_path, capsys):
    record = tmp_path / "rec.jsonl"
    record.write_text('{"kept": 1}\n')
    part = tmp_path / "rec.jsonl.part999"       # the live part file of the run that holds the record
    part.write_text('{"live": 1}\n')
    with FolderLock.for_file(str(record), "experiments/planners.py --record"):
        rc = planners_cli(planners, ["--llm", "offline", "--tasks", "PlaceInZone", "--seeds", "1",
                                     "--planners", "openloop", "--conditions", "static", "--workers", "1",
                                     "--record", str(record), "--out", str(tmp_path / "out.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("planners.py: error: ") and str(record) in err[0] and f"pid {os.getpid()}" in err[0]
    assert part.read_text() == '{"live": 1}\n' and record.read_text() == '{"kept": 1}\n'   # not merged away
    assert not (tmp_path / "out.md").exists()
    # once the holder is done, the same run goes ahead and joins the left part file into the record
    rc = planners_cli(planners, ["--llm", "offline", "--tasks", "PlaceInZone", "--seeds", "1", "--planners",
                                 "openloop", "--conditions", "static", "--workers", "1", "--record", str(record),
                                 "--out", str(tmp_path / "out.md")])
    assert rc == 0 and not part.exists() and record.read_text() == '{"kept": 1}\n{"live": 1}\n'


def planners_cli(planners, argv):
    import sys
    old = sys.argv
    sys.argv = ["planners.py", *argv]
    try:
        return planners._cli()
    finally:
        sys.argv = old


def test_a_replayed_report_has_the_note_and_what_planners_did_after_a_failure(planners, tmp_path):
    out = tmp_path / "clea.md"
    note = "How this run was made: a test."
    rc = planners.main(["--llm", f"replay:{RECORD}", "--tasks", "StackOnBlock", "--seeds", "2", "--conditions",
                        "perturbed", "--planners", "clea,openloop", "--critic-votes", "5", "--workers", "1",
                        "--note", note, "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    rows = json.loads((tmp_path / "clea_episodes.json").read_text())
    assert note in text and "--note" not in text.split("```")[1]          # a paragraph, not part of the command
    clea = [r for r in rows if r["planner"] == "clea"]
    assert len(clea) == 2 and all(0 <= r["repeats_after_failure"] <= r["failures_followed"] <= r["failures"]
                                  for r in rows)
    sums = {k: sum(r[k] for r in clea) for k in ("failures", "failures_followed", "repeats_after_failure",
                                                 "critic_checks", "critic_rejections", "critic_accepted_failed")}
    # every skill CLEA ran was judged first (its replies are all readable), and each failed one was accepted
    assert sums["critic_accepted_failed"] == sums["failures"] > 0 and sums["critic_checks"] >= sums["failures"]
    line = next(ln for ln in text.splitlines() if ln.startswith("| perturbed | CLEA |") and "%)" in ln)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:4] == [str(sums["failures"]), str(sums["failures_followed"])]
    assert cells[4].startswith(f"{sums['repeats_after_failure']} (")
    assert cells[5:] == [str(sums[k]) for k in ("critic_checks", "critic_rejections", "critic_accepted_failed")]
