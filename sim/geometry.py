"""All rotation and pose maths in one place: quaternions (w, x, y, z unless named _xyzw), yaw, angle wrap.

Every layer (backends, skills, symbolic state, observations, ROS) takes its yaw formulas from here.
"""
from __future__ import annotations

import math

import numpy as np


def wrap_angle(a: float) -> float:
    """An angle wrapped to [-pi, pi)."""
    return (a + math.pi) % (2 * math.pi) - math.pi


def yaw_quat(yaw: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of a rotation by yaw about z."""
    return np.array([np.cos(yaw / 2.0), 0.0, 0.0, np.sin(yaw / 2.0)])


def quat_yaw(q):
    """Yaw (rotation about z) of a wxyz quaternion: a float, or an array for (..., 4) quaternions."""
    q = np.asarray(q, dtype=float)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    yaw = np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return float(yaw) if yaw.ndim == 0 else yaw


def top_down_yaw(q) -> float:
    """Heading of the frame's x axis about world z for a wxyz quaternion (the yaw of a top-down gripper)."""
    w, x, y, z = (float(v) for v in q)
    return math.atan2(2.0 * (x * y + w * z), w * w + x * x - y * y - z * z)


def top_down_yaw_xyzw(x: float, y: float, z: float, w: float) -> float:
    """`top_down_yaw` for a ROS-ordered (x, y, z, w) quaternion."""
    return top_down_yaw((w, x, y, z))


def top_down_quat(yaw: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of a gripper pointing down, rotated by yaw about world z: R = Rz(yaw) Rx(pi)."""
    return np.array([0.0, np.cos(yaw / 2.0), np.sin(yaw / 2.0), 0.0])


def top_down_quat_xyzw(yaw: float) -> tuple:
    """`top_down_quat` in ROS (x, y, z, w) order."""
    w, x, y, z = (float(v) for v in top_down_quat(yaw))
    return (x, y, z, w)


def quat_up_z(q):
    """z component of the body's local z axis in the world (1 upright, -1 upside down); float or array."""
    q = np.asarray(q, dtype=float)
    up = 1.0 - 2.0 * (q[..., 1] ** 2 + q[..., 2] ** 2)
    return float(up) if up.ndim == 0 else up


def quat_matrix(q) -> np.ndarray:
    """3x3 rotation matrix of a wxyz quaternion (normalised first)."""
    w, x, y, z = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def look_at_axes(pos, target, up=(0.0, 0.0, 1.0)) -> tuple:
    """Camera right (x) and up (y) axes for a camera at pos looking at target (OpenGL convention)."""
    pos, target, up = (np.asarray(v, dtype=float) for v in (pos, target, up))
    f = target - pos
    f /= np.linalg.norm(f)
    x = np.cross(f, up)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(f, np.array([1.0, 0.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(x, f)
    return x, y, f


def container_boxes(size) -> list:
    """(center, half_extents) of the floor and four walls of an open container."""
    hx, hy, h = (float(s) for s in size)
    t = 0.006  # wall and floor half thickness
    return [
        ((0.0, 0.0, -h / 2 + t), (hx, hy, t)),
        ((hx - t, 0.0, 0.0), (t, hy, h / 2)),
        ((-hx + t, 0.0, 0.0), (t, hy, h / 2)),
        ((0.0, hy - t, 0.0), (hx, t, h / 2)),
        ((0.0, -hy + t, 0.0), (hx, t, h / 2)),
    ]
