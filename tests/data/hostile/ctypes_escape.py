"""Reaches the already-loaded ctypes and calls libc's system()."""
import dataclasses

from taskweave.envs.task import Task


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        ctypes = dataclasses.sys.modules["ctypes"]
        errors = []
        for attempt in (lambda: ctypes.CDLL(None).system(b"touch @TARGET@/ctypes"),
                        lambda: ctypes.cdll.LoadLibrary("libc.so.6").system(b"touch @TARGET@/ctypes2"),
                        lambda: ctypes.memmove(0, 0, 8)):
            try:
                attempt()
            except BaseException as e:
                errors.append(repr(e))
        raise RuntimeError(errors)
