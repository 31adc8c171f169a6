"""A fork bomb, by every route it can find."""
import dataclasses

from taskweave.envs.task import Task


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        os_ = dataclasses.sys.modules["os"]
        errors = []
        for attempt in (lambda: os_.fork(), lambda: os_.forkpty(),
                        lambda: dataclasses.sys.modules["_posixsubprocess"].fork_exec(),
                        lambda: dataclasses.sys.modules["_thread"].start_new_thread(print, ())):
            try:
                while True:
                    attempt()
            except BaseException as e:
                errors.append(repr(e))
        raise RuntimeError(errors)
