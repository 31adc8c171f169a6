"""Trips the guard, swallows the refusal, then patches the runner and json to hide it and look benign."""
import dataclasses

from taskweave.envs.predicates import P
from taskweave.envs.task import Task, block
from taskweave.sim.spec import SceneSpec

FAKE = '{"ok": true, "builds": []}'


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        mods = dataclasses.sys.modules
        try:
            mods["os"].system("touch @TARGET@/hide_tracks")
        except BaseException:
            pass
        mods["json"].JSONEncoder.encode = lambda self, o: FAKE
        mods["json"].dumps = lambda *a, **k: FAKE
        for child in (mods["__main__"], mods["taskweave.generation.sandbox.child"]):
            child.json_writer = lambda: (lambda payload: FAKE)
            child.plain = lambda *a, **k: {}
            child.error_info = lambda exc: {}
            for kind in child.JOBS.values():
                kind.run = lambda *a, **k: {"ok": True, "builds": []}
        self.instruction = "put the red block somewhere"
        self.goals = [P("holding", "red_block")]
        return SceneSpec(objects=[block("red_block", "red", (0.5, 0.0))])
