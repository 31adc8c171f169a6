"""Tries to reach a listener on the host's loopback interface."""
import dataclasses

from taskweave.envs.task import Task
from taskweave.sim.spec import SceneSpec


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        errors = []
        mods = dataclasses.sys.modules
        attempts = [
            lambda: mods["socket"].create_connection(("127.0.0.1", @PORT@), timeout=1),
            lambda: mods["_socket"].socket().connect(("127.0.0.1", @PORT@)),
            lambda: __import__("socket").create_connection(("127.0.0.1", @PORT@), timeout=1),
        ]
        for attempt in attempts:
            try:
                attempt()
            except BaseException as e:
                errors.append(repr(e))
        raise RuntimeError(errors)
