"""The Franka Panda description shared by both engines (pybullet_data's URDF)."""
from __future__ import annotations

import os

import numpy as np
import pybullet_data

PANDA_DIR = os.path.join(pybullet_data.getDataPath(), "franka_panda")
PANDA_URDF = os.path.join(PANDA_DIR, "panda.urdf")
ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
HAND_LINK = "panda_hand"
TCP_LINK = "panda_grasptarget"
FINGER_LINKS = ("panda_leftfinger", "panda_rightfinger")
# A camera fixed to the hand link (its frame: z toward the fingertips, fingers open along y), both engines.
WRIST_CAMERA = "wrist"
WRIST_CAMERA_POS = (0.07, 0.0, 0.02)       # hand frame, metres: beside the hand, off the finger plane
WRIST_CAMERA_TARGET = (0.0, 0.0, 0.16)     # hand frame: just beyond the fingertips (TCP at z = 0.105)
WRIST_CAMERA_UP = (1.0, 0.0, 0.0)          # hand frame
WRIST_CAMERA_FOVY = 75.0
# Elbow-up, gripper pointing down, TCP at about (0.45, 0, 0.30).
HOME_Q = np.array([0.0, -0.35, 0.0, -2.35, 0.0, 2.0, 0.785398])
ARM_EFFORT = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])
ARM_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
ARM_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
FINGER_MAX = 0.04          # metres per finger
FINGER_FORCE = 40.0        # newtons per finger when closing
FINGER_FRICTION = 1.0


def panda_urdf_text() -> str:
    """The URDF with package:// stripped so that MuJoCo resolves meshes from PANDA_DIR."""
    with open(PANDA_URDF, encoding="utf-8") as f:
        return f.read().replace("package://", "")


def wrist_camera_axes() -> tuple:
    """The wrist camera's position and right, up, forward axes in the hand frame (OpenGL convention)."""
    from taskweave.sim.geometry import look_at_axes
    x, y, f = look_at_axes(WRIST_CAMERA_POS, WRIST_CAMERA_TARGET, WRIST_CAMERA_UP)
    return np.array(WRIST_CAMERA_POS, dtype=float), x, y, f
