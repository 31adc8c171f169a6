"""Shared test settings: headless rendering and small helpers."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

BACKENDS = ("mujoco", "pybullet")
