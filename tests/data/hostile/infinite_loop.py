"""Never returns from build."""
from taskweave.envs.task import Task


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        n = 0
        while True:
            n += 1
