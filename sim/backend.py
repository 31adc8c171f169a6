"""The physics-backend interface that MuJoCo and PyBullet both implement."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import numpy as np

from taskweave.sim.errors import RunError, UserError
from taskweave.sim.geometry import top_down_quat, top_down_yaw

from taskweave.sim.robot import FINGER_MAX, HOME_Q
from taskweave.sim.spec import SceneSpec

BACKENDS = ("mujoco", "pybullet")

# Segmentation ids: 0 nothing/world, 1 table, 2 robot, 3 + i the i-th object of the spec.
SEG_NONE, SEG_TABLE, SEG_ROBOT, SEG_OBJECT0 = 0, 1, 2, 3


class UnknownBackendError(UserError, ValueError):
    """A backend name that is not one of BACKENDS."""


class BackendUnavailableError(RunError, ImportError):
    """A known backend whose engine cannot be loaded here (its package is missing or broken)."""


@dataclass
class Frame:
    """What a camera sees: rgb (H, W, 3) uint8, depth (H, W) metres, segmentation (H, W) int32."""

    rgb: Optional[np.ndarray] = None
    depth: Optional[np.ndarray] = None
    segmentation: Optional[np.ndarray] = None


class Backend(ABC):
    """A tabletop world with one Panda: load a SceneSpec, step, sense, command, snapshot."""

    name: str = "abstract"

    def __init__(self) -> None:
        self.spec: Optional[SceneSpec] = None
        self.ee_target_pos = np.array([0.45, 0.0, 0.3])
        self.ee_target_yaw = 0.0
        self.gripper_target = FINGER_MAX
        self.arm_target = HOME_Q.copy()

    # ---- scene -------------------------------------------------------------------------
    @abstractmethod
    def load(self, spec: SceneSpec) -> None:
        """Build the scene from spec, robot at its home posture, gripper open."""

    @property
    @abstractmethod
    def dt(self) -> float:
        """Physics timestep in seconds."""

    @abstractmethod
    def step(self, n: int = 1) -> None:
        """Advance physics n timesteps under the current commands."""

    @abstractmethod
    def close(self) -> None:
        """Release engine resources."""

    # ---- robot -------------------------------------------------------------------------
    @abstractmethod
    def joint_positions(self) -> np.ndarray:
        """Arm joint angles (7,) followed by the two finger positions (2,)."""

    @abstractmethod
    def joint_velocities(self) -> np.ndarray:
        """Arm and finger joint velocities (9,)."""

    @abstractmethod
    def ee_pose(self) -> tuple:
        """TCP position (3,) and quaternion (w, x, y, z) in the world frame."""

    def ee_yaw(self) -> float:
        """Yaw of the top-down gripper about world z."""
        return top_down_yaw(self.ee_pose()[1])

    def gripper_width(self) -> float:
        """Distance between the fingers (0 closed, 0.08 open)."""
        q = self.joint_positions()
        return float(q[7] + q[8])

    @abstractmethod
    def _solve_ik(self, pos: np.ndarray, quat: np.ndarray) -> tuple:
        """Joint targets (7,) for a TCP pose and the residual position error in metres."""

    @abstractmethod
    def _apply_commands(self) -> None:
        """Push arm_target and gripper_target to the engine's actuators."""

    def set_ee_target(self, pos, yaw: float = 0.0) -> float:
        """Command a top-down TCP pose; returns the IK position residual (metres)."""
        pos = np.asarray(pos, dtype=float)
        self.ee_target_pos = pos.copy()
        self.ee_target_yaw = float(yaw)
        q, err = self._solve_ik(pos, top_down_quat(yaw))
        self.arm_target = q
        self._apply_commands()
        return err

    def set_gripper(self, width: float) -> None:
        """Command the finger opening (0 closed .. 0.08 open); force-limited when closing."""
        self.gripper_target = float(np.clip(width / 2.0, 0.0, FINGER_MAX))
        self._apply_commands()

    # ---- objects -----------------------------------------------------------------------
    @abstractmethod
    def object_pose(self, name: str) -> tuple:
        """Position (3,) and quaternion (w, x, y, z) of a named object."""

    @abstractmethod
    def object_poses(self) -> np.ndarray:
        """(N, 7) array: position and wxyz quaternion of every object in spec order."""

    @abstractmethod
    def object_velocity(self, name: str) -> np.ndarray:
        """Linear (3,) and angular (3,) velocity of a named object."""

    @abstractmethod
    def set_object_pose(self, name: str, pos, quat=None) -> None:
        """Place a free object at a pose with zero velocity (scene setup and perturbations)."""

    @abstractmethod
    def contacts(self, name: str) -> set:
        """Names of bodies touching the object: other objects, 'table', 'robot', finger link names."""

    @abstractmethod
    def all_contacts(self) -> dict:
        """For every object in contact: the set of names it touches."""

    def finger_contact(self, name: str) -> tuple:
        """Whether the left and right fingers touch the object."""
        c = self.contacts(name)
        return ("panda_leftfinger" in c, "panda_rightfinger" in c)

    def _check_object(self, name: str) -> int:
        assert self.spec is not None, "backend has no scene loaded"
        for i, o in enumerate(self.spec.objects):
            if o.name == name:
                return i
        raise KeyError(f"no object named {name!r} in scene (objects: {', '.join(self.spec.object_names)})")

    # ---- sensing -----------------------------------------------------------------------
    @abstractmethod
    def render(self, camera: str = "front", width: int = 128, height: int = 128,
               depth: bool = False, segmentation: bool = False) -> Frame:
        """Render one camera of the spec."""

    # ---- state -------------------------------------------------------------------------
    @abstractmethod
    def snapshot(self):
        """An opaque copy of the whole physics state and the current commands."""

    @abstractmethod
    def restore(self, snap) -> None:
        """Return exactly to a snapshot taken from this backend and scene."""

    def _command_state(self) -> dict:
        return {"ee_pos": self.ee_target_pos.copy(), "ee_yaw": self.ee_target_yaw,
                "grip": self.gripper_target, "arm": self.arm_target.copy()}

    def _set_command_state(self, c: dict) -> None:
        self.ee_target_pos = c["ee_pos"].copy()
        self.ee_target_yaw = c["ee_yaw"]
        self.gripper_target = c["grip"]
        self.arm_target = c["arm"].copy()
        self._apply_commands()


def make_backend(name: str) -> Backend:
    """A fresh backend by name: 'mujoco' or 'pybullet'."""
    try:
        if name == "mujoco":
            from taskweave.sim.mujoco_backend import MujocoBackend
            return MujocoBackend()
        if name == "pybullet":
            from taskweave.sim.pybullet_backend import PybulletBackend
            return PybulletBackend()
    except ImportError as e:
        raise BackendUnavailableError(f"physics backend {name!r} is unavailable: {e}") from e
    raise UnknownBackendError(f"unknown backend {name!r} (choose one of: {', '.join(BACKENDS)})")
