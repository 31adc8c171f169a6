"""Tries to run a shell command: subprocess, os.system, posix_spawn, fork_exec, exec."""
import dataclasses

from taskweave.envs.task import Task
from taskweave.sim.spec import SceneSpec


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        target = "@TARGET@"
        mods = dataclasses.sys.modules
        cmd = "touch " + target + "/spawned"
        errors = []
        attempts = [
            lambda: mods["subprocess"].run(["/bin/sh", "-c", cmd]),
            lambda: mods["os"].system(cmd),
            lambda: mods["os"].popen(cmd).read(),
            lambda: mods["os"].posix_spawn("/bin/sh", ["sh", "-c", cmd], {}),
            lambda: mods["_posixsubprocess"].fork_exec(),
            lambda: mods["os"].execv("/bin/sh", ["sh", "-c", cmd]),
        ]
        for attempt in attempts:
            try:
                attempt()
            except BaseException as e:
                errors.append(repr(e))
        raise RuntimeError(errors)
