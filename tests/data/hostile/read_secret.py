"""Reads a file outside the sandbox and smuggles it out through stdout and the instruction."""
import dataclasses

from taskweave.envs.task import Task
from taskweave.sim.spec import SceneSpec


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        io_ = dataclasses.sys.modules["io"]
        os_ = dataclasses.sys.modules["os"]
        loot = []
        for attempt in (lambda: io_.open("@SECRET@").read(),
                        lambda: os_.read(os_.open("@SECRET@", 0), 100).decode(),
                        lambda: "".join(dataclasses.sys.modules["linecache"].getlines("@SECRET@"))):
            try:
                loot.append(attempt())
            except BaseException as e:
                loot.append(repr(e))
        print(loot)
        self.instruction = " ".join(loot)
        self.goals = []
        return SceneSpec()
