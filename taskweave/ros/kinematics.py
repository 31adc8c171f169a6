"""The robot's proprioception from `/joint_states`: forward kinematics of the sim's Panda (no rclpy import here).

The TCP is the origin of the URDF link `sim.robot.TCP_LINK` (`panda_grasptarget`, fixed 0.105 m below
the hand), robot base at the world origin: MuJoCo puts its `tcp` site there and PyBullet reads that
link's frame, so `PandaKinematics` (pybullet_data's `franka_panda/panda.urdf`, PyBullet in DIRECT mode,
its own physics client) gives the same pose as `Backend.ee_pose()` for the same arm joints. The
17-d proprio is laid out as `envs.observation.proprio_features` (`PROPRIO_LAYOUT`).
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from taskweave.envs.observation import PROPRIO_DIM
from taskweave.sim import robot as R
from taskweave.sim.geometry import quat_matrix


class JointStateError(ValueError):
    """A JointState the proprio cannot be built from (a joint missing, positions not finite, sizes differ)."""


def joint_vector(names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
    """(9,) the 7 arm joints then the 2 finger joints of a JointState, picked by name (any order, extras ignored)."""
    names, positions = list(names), list(positions)
    if len(names) != len(positions):
        raise JointStateError(f"joint_states has {len(names)} names but {len(positions)} positions")
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in R.ARM_JOINTS + R.FINGER_JOINTS if n not in index]
    if missing:
        raise JointStateError(f"joint_states lacks {missing} (got {names})")
    q = np.array([positions[index[n]] for n in R.ARM_JOINTS + R.FINGER_JOINTS], dtype=float)
    if not np.all(np.isfinite(q)):
        raise JointStateError(f"joint_states positions are not finite: {q.tolist()}")
    return q


class PandaKinematics:
    """Forward kinematics of the sim's Panda: arm joints -> TCP pose, and joint states -> the 17-d proprio."""

    def __init__(self) -> None:
        import pybullet as p
        from pybullet_utils.bullet_client import BulletClient

        from taskweave.sim.pybullet_backend import _quiet_stdout, joint_index
        with _quiet_stdout():
            self._client = BulletClient(connection_mode=p.DIRECT)
        c = self._client
        self._robot = c.loadURDF(R.PANDA_URDF, [0, 0, 0], [0, 0, 0, 1], useFixedBase=True)
        joints = joint_index(c, self._robot)
        self._arm = [joints[n] for n in R.ARM_JOINTS]
        self._tcp = joints["link:" + R.TCP_LINK]
        self._lock = threading.Lock()   # one physics client: one query at a time

    def tcp_pose(self, arm_q: Sequence[float]) -> tuple:
        """TCP position (3,) and wxyz quaternion (4,) for the 7 arm joint angles."""
        q = np.asarray(arm_q, dtype=float).reshape(-1)
        if q.shape != (7,):
            raise JointStateError(f"need 7 arm joint angles, got {q.shape[0]}")
        with self._lock:
            c = self._client
            for j, v in zip(self._arm, q):
                c.resetJointState(self._robot, j, float(v))
            ls = c.getLinkState(self._robot, self._tcp, computeForwardKinematics=True)
        x, y, z, w = ls[5]
        return np.array(ls[4], dtype=float), np.array([w, x, y, z], dtype=float)

    def proprio(self, joints9: Sequence[float]) -> np.ndarray:
        """(17,) joints (7), TCP xyz, TCP rotation 6-D (first two matrix columns), finger width (sum of both)."""
        return self.proprio_and_tcp(joints9)[0]

    def proprio_and_tcp(self, joints9: Sequence[float]) -> tuple:
        """((17,) proprio, (TCP position, wxyz quaternion)) of 7 arm + 2 finger joint positions."""
        q = np.asarray(joints9, dtype=float).reshape(-1)
        if q.shape != (9,):
            raise JointStateError(f"need 7 arm + 2 finger joint positions, got {q.shape[0]}")
        pos, quat = self.tcp_pose(q[:7])
        rot = quat_matrix(quat)
        out = np.concatenate([q[:7], pos, rot[:, 0], rot[:, 1], [q[7] + q[8]]]).astype(np.float32)
        if out.shape != (PROPRIO_DIM,):
            raise JointStateError(f"proprio of size {out.shape[0]}, not {PROPRIO_DIM}")
        return out, (pos, quat)

    def proprio_from_joint_state(self, names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
        """(17,) proprio of a sensor_msgs/JointState's names and positions."""
        return self.proprio(joint_vector(names, positions))

    def close(self) -> None:
        """Disconnect the physics client."""
        with self._lock:
            if self._client is not None:
                try:
                    self._client.disconnect()
                except Exception:  # noqa: BLE001 - already gone
                    pass
                self._client = None
