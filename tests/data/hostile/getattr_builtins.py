"""Fishes open() out of __builtins__ with getattr."""
from taskweave.envs.task import Task


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        b = __builtins__
        opener = b["open"] if isinstance(b, dict) and "open" in b else getattr(b, "open")
        opener("@TARGET@/getattr_open", "w").write("x")
