"""Tries every way it knows to write outside the scratch directory."""
import dataclasses

from taskweave.envs.task import Task
from taskweave.sim.spec import SceneSpec


def all_subclasses(cls):
    seen, todo = [], [cls]
    while todo:
        c = todo.pop()
        for s in type.__subclasses__(c):
            if s not in seen:
                seen.append(s)
                todo.append(s)
    return seen


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        target = "@TARGET@"
        errors = []
        attempts = [
            lambda: open(target + "/builtin_open", "w").write("x"),
            lambda: [c for c in all_subclasses(object) if c.__name__ == "FileIO"][0](target + "/fileio", "w"),
            lambda: dataclasses.sys.modules["io"].open(target + "/io_open", "w").write("x"),
            lambda: dataclasses.sys.modules["io"].open("../" * 30 + target.lstrip("/") + "/relative", "w"),
            lambda: dataclasses.sys.modules["os"].open(target + "/os_open", 0o101),
            lambda: dataclasses.sys.modules["os"].mkfifo(target + "/fifo"),
            lambda: dataclasses.sys.modules["os"].mknod(target + "/node"),
            lambda: dataclasses.sys.modules["os"].mkdir(target + "/dir"),
            lambda: dataclasses.sys.modules["os"].symlink("/", "link"),
            lambda: dataclasses.sys.modules["shutil"].copy("/etc/hostname", target + "/copy"),
            lambda: dataclasses.sys.modules["os"].chdir(target),
        ]
        for attempt in attempts:
            try:
                attempt()
            except BaseException as e:
                errors.append(repr(e))
        raise RuntimeError(errors)
