"""What a robot-input policy reads over ROS 2: camera images and joint states (no rclpy import here).

A robot-input checkpoint (obs_mode "robot") sees its cameras' frames and the 17-d proprio of
`envs.observation.proprio_features`, nothing of the simulator's ground truth. `RobotInputs` keeps the
newest frame of each camera and the newest joint state, each with its arrival time, and assembles the
policy's observation from them:

- images (`sensor_msgs/Image`): `rgb8` or `bgr8` (8 bits per channel, rows `step` bytes apart); any
  other encoding is refused with an error (the camera then has no frame until a good one arrives).
  A frame of another size is resized to the checkpoint's `image_shape` by area averaging (a box
  filter: each output pixel is the mean of the input pixels it covers, so upscaling repeats pixels
  like nearest) without keeping the aspect ratio: set the camera driver to the trained aspect;
- joint states (`sensor_msgs/JointState`): the 7 arm joints and the 2 finger joints by name
  (`sim.robot.ARM_JOINTS`, `FINGER_JOINTS`; other joints are ignored, a missing one is an error);
  the TCP pose comes from them by forward kinematics of the sim's Panda (`ros.kinematics`).
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence

import numpy as np

from taskweave.envs.observation import camera_key
from taskweave.ros.kinematics import JointStateError, PandaKinematics, joint_vector

ENCODINGS = ("rgb8", "bgr8")
DEFAULT_CAMERA_TOPICS = "front=/camera/image_raw,wrist=/wrist_camera/image_raw"


class ImageError(ValueError):
    """An image the policy cannot read (encoding, size, byte count)."""


def parse_camera_topics(text: str) -> dict:
    """{camera: topic} from 'camera=topic,camera=topic' (the policy node's `camera_topics` parameter)."""
    out = {}
    for item in str(text).replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        camera, sep, topic = item.partition("=")
        camera, topic = camera.strip(), topic.strip()
        if not sep or not camera or not topic.startswith("/"):
            raise ValueError(f"camera_topics entries are camera=/topic, got {item!r}")
        if camera in out:
            raise ValueError(f"camera_topics names {camera!r} twice")
        out[camera] = topic
    return out


def decode_image(encoding: str, height: int, width: int, step: int, data) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a sensor_msgs/Image's fields (rgb8 or bgr8)."""
    enc = str(encoding).lower()
    if enc not in ENCODINGS:
        raise ImageError(f"image encoding {encoding!r} is not supported (only {', '.join(ENCODINGS)})")
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageError(f"image of size {width}x{height}")
    if step < width * 3:
        raise ImageError(f"image step {step} is less than width * 3 = {width * 3}")
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if buf.size < step * height:
        raise ImageError(f"image has {buf.size} bytes, {width}x{height} with step {step} needs {step * height}")
    rgb = buf[:step * height].reshape(height, step)[:, :width * 3].reshape(height, width, 3)
    return np.array(rgb[..., ::-1] if enc == "bgr8" else rgb, dtype=np.uint8, order="C")   # a writable copy


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) box-filter weights: output cell i averages the input cells overlapping [i, i+1) * n_in/n_out."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


_WEIGHTS: dict = {}


def fit_image(rgb: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """rgb resized to shape (H, W, 3) by area averaging (unchanged when it already has that size)."""
    h, w = int(shape[0]), int(shape[1])
    if rgb.shape[:2] == (h, w):
        return rgb
    key = (rgb.shape[0], rgb.shape[1], h, w)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = (_area_weights(rgb.shape[0], h), _area_weights(rgb.shape[1], w))
    wy, wx = _WEIGHTS[key]
    img = rgb.astype(np.float32)
    rows = np.tensordot(wy, img, axes=(1, 0))                 # (h, W, 3)
    out = np.einsum("jx,hxc->hjc", wx, rows)                   # (h, w, 3)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class RobotInputs:
    """The newest frame per camera and joint state, and the policy observation assembled from them."""

    def __init__(self, cameras: Sequence[str], image_shape: Sequence[int], kinematics: Optional[PandaKinematics] = None):
        self.cameras = tuple(cameras)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.kinematics = kinematics or PandaKinematics()
        self._lock = threading.Lock()
        self.frames: dict = {}        # camera -> (rgb (H, W, 3) uint8 at image_shape, arrival time)
        self.joints = None            # (q (9,), arrival time)
        self.joint_count = 0          # joint states accepted so far (a new one is a new observation)
        self.errors: list = []        # (input, message) of refused messages, newest last (at most 20 kept)

    def _refuse(self, what: str, message: str) -> str:
        self.errors = (self.errors + [(what, message)])[-20:]
        return message

    def on_image(self, camera: str, encoding: str, height: int, width: int, step: int, data, now: float) -> Optional[str]:
        """Store one camera frame; returns why it was refused (that camera then has no frame), or None."""
        try:
            rgb = fit_image(decode_image(encoding, height, width, step, data), self.image_shape)
        except ImageError as e:
            with self._lock:
                self.frames.pop(camera, None)
                return self._refuse(camera_key(camera), str(e))
        with self._lock:
            self.frames[camera] = (rgb, now)
        return None

    def on_joint_state(self, names: Sequence[str], positions: Sequence[float], now: float) -> Optional[str]:
        """Store one joint state; returns why it was refused (there is then no joint state), or None."""
        try:
            q = joint_vector(names, positions)
        except JointStateError as e:
            with self._lock:
                self.joints = None
                return self._refuse("joint_states", str(e))
        with self._lock:
            self.joints, self.joint_count = (q, now), self.joint_count + 1
        return None

    def observation(self, now: float, timeout: float) -> tuple:
        """({'rgb:<camera>': (H, W, 3) uint8, 'proprio': (17,)}, tcp (pos, wxyz)) of the newest inputs, or
        (None, why) when one is missing or older than timeout seconds."""
        with self._lock:
            joints, frames = self.joints, dict(self.frames)
        if joints is None:
            return None, "no joint_states"
        if now - joints[1] > timeout:
            return None, "joint_states too old"
        obs = {}
        for c in self.cameras:
            if c not in frames:
                return None, f"no {c} camera frame"
            if now - frames[c][1] > timeout:
                return None, f"{c} camera frame too old"
            obs[camera_key(c)] = frames[c][0]
        obs["proprio"], tcp = self.kinematics.proprio_and_tcp(joints[0])
        return obs, tcp

    def close(self) -> None:
        """Release the kinematics' physics client."""
        self.kinematics.close()
