"""Shared test settings: headless rendering and small helpers."""
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

BACKENDS = ("mujoco", "pybullet")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are dispatch-bound: one torch thread is faster and immune to spin-waiting on a busy machine
    (modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def wait_for(cond, timeout: float, what: str, proc=None):
    """Poll cond() until it returns something true (returned), failing if proc ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
