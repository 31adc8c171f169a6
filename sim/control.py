"""Low-level end-effector delta control at a fixed rate, physics substeps beneath."""
from __future__ import annotations

import numpy as np

from taskweave.sim.backend import Backend
from taskweave.sim.spec import WORKSPACE_HIGH, WORKSPACE_LOW

MAX_DPOS = 0.03    # metres per control tick at |a| = 1
MAX_DYAW = 0.25    # radians per control tick at |a| = 1
YAW_LIMIT = 2.6    # |gripper yaw| the wrist can reach around its home
LEASH = 0.05       # the commanded target never runs further than this ahead of the TCP
ACTION_DIM = 5
GRIPPER_OPEN_WIDTH = 0.08
TCP_Z_MIN = 0.008


def leashed_target(target_pos, tcp_pos) -> np.ndarray:
    """target_pos pulled back to within LEASH of the measured TCP (the commanded target never runs further ahead)."""
    target, tcp = np.asarray(target_pos, dtype=float), np.asarray(tcp_pos, dtype=float)
    off = target - tcp
    dist = float(np.linalg.norm(off))
    return tcp + off * (LEASH / dist) if dist > LEASH else target


class EEDeltaController:
    """Turns actions (dx, dy, dz, dyaw, gripper) in [-1, 1] into TCP targets and steps physics.

    gripper > 0 closes the fingers (force-limited); gripper <= 0 opens them to 8 cm * -gripper.
    """

    def __init__(self, backend: Backend, control_hz: float = 10.0) -> None:
        if control_hz <= 0:
            raise ValueError(f"control_hz must be positive, got {control_hz}")
        self.backend = backend
        self.control_hz = float(control_hz)
        self.grip_closed = False

    @property
    def substeps(self) -> int:
        """Physics steps per control tick."""
        return max(1, int(round(1.0 / (self.control_hz * self.backend.dt))))

    def reset(self) -> None:
        """Hold the current TCP pose with the gripper open."""
        b = self.backend
        pos, _ = b.ee_pose()
        b.ee_target_pos = pos.copy()
        b.ee_target_yaw = b.ee_yaw()
        self.grip_closed = False

    def command(self, action) -> None:
        """Set new targets from one action without stepping physics."""
        b = self.backend
        a = np.clip(np.asarray(action, dtype=float).reshape(-1), -1.0, 1.0)
        if a.shape[0] != ACTION_DIM or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be {ACTION_DIM} finite numbers, got {action!r}")
        ee, _ = b.ee_pose()
        target = b.ee_target_pos + a[:3] * MAX_DPOS
        target = leashed_target(target, ee)
        lo = WORKSPACE_LOW.copy()
        lo[2] = TCP_Z_MIN
        target = np.clip(target, lo, WORKSPACE_HIGH)
        yaw = float(np.clip(b.ee_target_yaw + a[3] * MAX_DYAW, -YAW_LIMIT, YAW_LIMIT))
        b.set_ee_target(target, yaw)
        self.grip_closed = bool(a[4] > 0.0)
        b.set_gripper(0.0 if self.grip_closed else GRIPPER_OPEN_WIDTH * float(-a[4]))

    def apply(self, action) -> None:
        """Command one action and advance physics by one control tick."""
        self.command(action)
        self.backend.step(self.substeps)
