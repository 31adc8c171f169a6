"""What every taskweave ROS 2 node shares: environment defaults, topic names and types, QoS, parameters.

Import `configure_ros_env` before `rclpy.init` (it only fills unset variables). The rest needs rclpy.
"""
from __future__ import annotations

import math
import os
import threading
from typing import Iterable, Optional

import numpy as np

from taskweave.sim.geometry import top_down_quat_xyzw, top_down_yaw_xyzw as yaw_from_quat_xyzw, wrap_angle  # noqa: F401 (re-exported for nodes)

DEFAULT_RMW = "rmw_fastrtps_cpp"

# topic -> (message type "pkg/Type", QoS kind); the node modules hold no other topic names.
TOPICS = {
    "/joint_states": ("sensor_msgs/JointState", "sensor"),
    "/camera/image_raw": ("sensor_msgs/Image", "sensor"),          # the front (scene) camera
    "/wrist_camera/image_raw": ("sensor_msgs/Image", "sensor"),    # the camera on the hand
    "/taskweave/object_poses": ("geometry_msgs/PoseArray", "sensor"),
    "/taskweave/ee_pose": ("geometry_msgs/PoseStamped", "sensor"),
    "/taskweave/symbolic_state": ("std_msgs/String", "sensor"),
    "/taskweave/ee_command": ("geometry_msgs/PoseStamped", "command"),
    "/taskweave/gripper_command": ("std_msgs/Float64", "command"),
    "/taskweave/skill_request": ("std_msgs/String", "request"),
    "/taskweave/skill_result": ("std_msgs/String", "request"),
    "/taskweave/current_skill": ("std_msgs/String", "latched"),
    "/taskweave/skill_done": ("std_msgs/String", "request"),       # the policy's done head ended its skill
    "/taskweave/instruction": ("std_msgs/String", "request"),
    "/taskweave/status": ("std_msgs/String", "latched"),
    "/taskweave/watchdog": ("std_msgs/String", "latched"),
}


def configure_ros_env(localhost_only: bool = False, domain_id: Optional[int] = None) -> dict:
    """Fill unset ROS variables with sane defaults (RMW, discovery range, domain); returns what it set."""
    env = os.environ
    set_ = {}

    def put(key, value, force=False):
        """Set one variable (unless already set and not forced)."""
        if force or not env.get(key):
            env[key] = str(value)
            set_[key] = str(value)

    put("RMW_IMPLEMENTATION", DEFAULT_RMW)
    if domain_id is not None:
        put("ROS_DOMAIN_ID", int(domain_id), force=True)
    if localhost_only:
        # Jazzy and later read ROS_AUTOMATIC_DISCOVERY_RANGE; Humble and Iron read ROS_LOCALHOST_ONLY.
        put("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        if env.get("ROS_DISTRO", "") in ("humble", "iron", "galactic", "foxy"):
            put("ROS_LOCALHOST_ONLY", "1")
    return set_


def qos(kind: str):
    """The QoS profile for a kind of topic: sensor (best effort), command, request, latched (transient local)."""
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                           qos_profile_sensor_data)
    if kind == "sensor":
        return qos_profile_sensor_data
    if kind == "command":   # only the newest command matters, but it must arrive
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    if kind == "request":   # never replay an old request to a late joiner
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    if kind == "latched":   # late joiners get the last value
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
    raise ValueError(f"unknown QoS kind {kind!r}")


def msg_class(type_name: str):
    """The rclpy message class for 'pkg/Type'."""
    import importlib
    pkg, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def make_pub(node, topic: str):
    """A publisher on one of TOPICS with its documented type and QoS."""
    type_name, kind = TOPICS[topic]
    return node.create_publisher(msg_class(type_name), topic, qos(kind))


def make_sub(node, topic: str, callback, callback_group=None, like: Optional[str] = None):
    """A subscription to one of TOPICS with its documented type and QoS (like: a topic of TOPICS whose type and
    QoS another topic name, e.g. a camera topic from a node parameter, takes)."""
    type_name, kind = TOPICS[like or topic]
    return node.create_subscription(msg_class(type_name), topic, callback, qos(kind),
                                    callback_group=callback_group)


# ---- parameters ------------------------------------------------------------------------
def declare_params(node, spec: dict) -> dict:
    """Declare {name: (default, description)} typed by their defaults; returns the current values."""
    from rcl_interfaces.msg import ParameterDescriptor
    for name, (default, desc) in spec.items():
        node.declare_parameter(name, default, ParameterDescriptor(description=desc))
    return {name: node.get_parameter(name).value for name in spec}


def overrides(spec: dict, values: dict) -> list:
    """rclpy Parameter overrides for the keys of values that spec declares (values coerced to the default's type)."""
    from rclpy.parameter import Parameter
    out = []
    for name, value in values.items():
        if name not in spec or value is None:
            continue
        default = spec[name][0]
        out.append(Parameter(name, value=type(default)(value)))
    return out


# ---- geometry (the maths lives in taskweave.sim.geometry) ---------------------------
def fill_pose(pose, pos, quat_wxyz) -> None:
    """Write a position and a (w, x, y, z) quaternion into a geometry_msgs/Pose."""
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in np.asarray(pos).reshape(-1)[:3])
    w, x, y, z = (float(v) for v in quat_wxyz)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = x, y, z, w


# ---- spinning --------------------------------------------------------------------------
def spin_nodes(nodes: Iterable, context=None, until=None, timeout_s: Optional[float] = None,
               num_threads: int = 4) -> None:
    """Spin nodes on a MultiThreadedExecutor until until() is true, timeout_s passes or shutdown."""
    import time

    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    ex = MultiThreadedExecutor(num_threads=num_threads, context=context)
    nodes = list(nodes)
    for n in nodes:
        ex.add_node(n)
    t_end = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while ex.context.ok():
            if until is not None and until():
                break
            if t_end is not None and time.monotonic() >= t_end:
                break
            ex.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for n in nodes:
            ex.remove_node(n)
        _drain(ex, time.monotonic() + 2.0)
        ex.shutdown(timeout_sec=2.0)


def _drain(ex, deadline: float) -> None:
    """Let callbacks already handed to the thread pool finish before shutdown destroys the guard condition.

    (rclpy's MultiThreadedExecutor.shutdown destroys it before joining its pool, so a queued handler
    raises InvalidHandle, printed as 'exception was never retrieved'.)
    """
    import time
    for f in list(getattr(ex, "_futures", [])):
        while not f.done() and time.monotonic() < deadline:
            time.sleep(0.005)


def run_single_node(make_node, args=None) -> int:
    """Console-script body: init rclpy, build one node, spin until Ctrl-C, shut down cleanly."""
    import rclpy
    configure_ros_env()
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        spin_nodes([node], num_threads=2)
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


class Latest:
    """A thread-safe holder of the newest value, with a condition to wait for a predicate on it."""

    def __init__(self):
        self._cond = threading.Condition()
        self.value = None
        self.count = 0

    def set(self, value) -> None:
        """Store a new value and wake waiters."""
        with self._cond:
            self.value = value
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float, stop: Optional[threading.Event] = None):
        """Wait until pred(value) is truthy; returns its result, or None on timeout or stop."""
        import time
        t_end = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.value is not None:
                    r = pred(self.value)
                    if r:
                        return r
                left = t_end - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return None
                self._cond.wait(min(left, 0.1))
