"""Writes a fake successful answer straight to the result pipe, then exits before the runner can."""
import dataclasses

from taskweave.envs.task import Task

FAKE = '{"ok": true, "task_class": "Hostile", "name": "Hostile", "builds": []}'


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        mods = dataclasses.sys.modules
        fd = int(dataclasses.sys.argv[dataclasses.sys.argv.index("--result-fd") + 1])
        errors = []
        for attempt in (lambda: mods["os"].write(fd, FAKE.encode()),
                        lambda: mods["io"].FileIO(fd, "w").write(FAKE.encode()),
                        lambda: mods["os"].fdopen(fd, "w").write(FAKE),
                        lambda: mods["os"]._exit(0)):
            try:
                attempt()
            except BaseException as e:
                errors.append(repr(e))
        raise RuntimeError(errors)
