"""Tries to kill a process outside the sandbox (its own session, so a miss cannot hit the test run)."""
import dataclasses

from taskweave.envs.task import Task


class Hostile(Task):
    name = "Hostile"

    def build(self, rng):
        os_ = dataclasses.sys.modules["os"]
        sig = dataclasses.sys.modules["signal"]
        victim = @VICTIM@
        errors = []
        for attempt in (lambda: os_.kill(victim, 9), lambda: os_.killpg(os_.getpgid(victim), 9),
                        lambda: sig.pidfd_send_signal(os_.pidfd_open(victim), 9)):
            try:
                attempt()
            except BaseException as e:
                errors.append(repr(e))
        raise RuntimeError(errors)
