"""Climbs frames and code objects to reach the runner's locals and forge its answer."""
import dataclasses

from taskweave.envs.task import Task


def forge(frame):
    while frame is not None:
        if "finish" in frame.f_locals:
            frame.f_locals["finish"]({"ok": True, "builds": []}, 0)
        frame = frame.f_back


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        mods = dataclasses.sys.modules
        errors = []

        def gen():
            yield 1

        def caught():
            try:
                raise ValueError
            except ValueError as e:
                return e

        def on_alarm(signum, frame):
            forge(frame)

        attempts = [
            lambda: caught().__traceback__.tb_frame,
            lambda: gen().gi_frame,
            lambda: mods["sys"]._getframe(0),
            lambda: mods["inspect"].currentframe(),
            lambda: next(mods["traceback"].walk_tb(caught().__traceback__))[0],
            lambda: mods["signal"].signal(mods["signal"].SIGALRM, on_alarm) and mods["signal"].alarm(1),
            lambda: (lambda: 0).__code__.replace(co_code=b""),
            lambda: type(gen)(gen.__code__, {}),
            lambda: mods["marshal"].loads(mods["marshal"].dumps(1)),
        ]
        for attempt in attempts:
            try:
                forge(attempt())
            except BaseException as e:
                errors.append(repr(e))
        raise RuntimeError(errors)
