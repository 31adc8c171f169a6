"""The classic ().__class__.__base__.__subclasses__() walk to os.system."""
from taskweave.envs.task import Task


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        for cls in ().__class__.__base__.__subclasses__():
            if cls.__name__ == "_wrap_close":
                cls.__init__.__globals__["system"]("touch @TARGET@/subclasses")
        raise RuntimeError("walked the subclasses")
