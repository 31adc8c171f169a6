"""Allocates until something gives."""
from taskweave.envs.task import Task


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        hoard = []
        while True:
            hoard.append(bytearray(50_000_000))
