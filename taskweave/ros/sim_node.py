"""`taskweave-sim-node`: a TaskEnv on MuJoCo or PyBullet behind ROS 2 topics, with a command watchdog.

Every control tick it publishes joint states, the TCP pose, object poses, the symbolic state JSON
(see `state_json`) and optionally camera images (rgb8, `image_size` square): `publish_images` the
`camera` frames on `/camera/image_raw`; `publish_cameras` what a robot-input policy sees, the `camera`
frames on `/camera/image_raw` and the wrist camera's (`sim.robot.WRIST_CAMERA`) on
`/wrist_camera/image_raw`, so the sim graph drives an RGB policy through the driver topics. It follows absolute TCP targets on
`/taskweave/ee_command` + a finger width on `/taskweave/gripper_command` through the same
end-effector delta controller the policy was trained with, and runs scripted skills on request
(`/taskweave/skill_request` -> `/taskweave/skill_result`), one control tick at a time.

Watchdog states: idle (no command yet: hold), active (fresh commands), stale (no command for
`command_timeout` s: the arm holds its current pose, the gripper keeps its state), skill (a
scripted skill drives the arm).
"""
from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

from geometry_msgs.msg import Pose, PoseArray, PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from taskweave.envs import make_env
from taskweave.envs.observation import SKILL_FEATURE_DIM, robot_features, skill_features, skill_text
from taskweave.envs.skill_check import skill_succeeded
from taskweave.envs.skill_loop import ScriptedController, start_run
from taskweave.envs.symbolic import state_to_text
from taskweave.ros.common import (declare_params, fill_pose, make_pub, make_sub, run_single_node, wrap_angle,
                                  yaw_from_quat_xyzw)
from taskweave.ros.params import SIM_PARAMETERS
from taskweave.ros.state_json import encode_state, parse_skill, symbolic_to_dict
from taskweave.sim.control import GRIPPER_OPEN_WIDTH, MAX_DPOS, MAX_DYAW
from taskweave.sim.robot import ARM_JOINTS, FINGER_JOINTS, WRIST_CAMERA
from taskweave.sim.skill_types import SkillResult

GRIPPER_CLOSED_WIDTH = 0.001   # a commanded width at or below this closes the fingers with force


def width_to_grip(width: float) -> float:
    """The controller's gripper action for a finger width: +1 closes (force-limited), -w/0.08 opens to w."""
    if width <= GRIPPER_CLOSED_WIDTH:
        return 1.0
    return -float(np.clip(width / GRIPPER_OPEN_WIDTH, 0.0, 1.0))


class SimNode(Node):
    """Publishes the simulated robot and scene; follows TCP commands; runs scripted skills."""

    def __init__(self, context=None, parameter_overrides=None, cli_args=None, env=None):
        """env: an already reset TaskEnv to wrap instead of building one from the parameters (it must not
        have rendered yet: the physics thread owns the engine and its GL context)."""
        super().__init__("taskweave_sim", context=context, parameter_overrides=parameter_overrides or [],
                         cli_args=cli_args)
        p = self.params = declare_params(self, SIM_PARAMETERS)
        self.lock = threading.RLock()   # held while the physics ticks; readers in other threads take it
        if env is None:
            env = make_env(p["task"], p["backend"], control="ee_delta", obs_mode="state",
                           control_hz=p["control_rate"], camera=p["camera"], max_steps=10**9)
            env.reset(seed=p["seed"])
            self._own_env = True
        else:
            self._own_env = False
        self.env = env
        self.pubs = {t: make_pub(self, t) for t in (
            "/joint_states", "/taskweave/object_poses", "/taskweave/ee_pose", "/taskweave/symbolic_state",
            "/taskweave/skill_result", "/taskweave/watchdog")}
        self.cameras = {}             # topic -> camera rendered on it every tick
        if p["publish_images"] or p["publish_cameras"]:
            self.cameras["/camera/image_raw"] = p["camera"]
        if p["publish_cameras"]:
            self.cameras["/wrist_camera/image_raw"] = WRIST_CAMERA
        for topic in self.cameras:
            self.pubs[topic] = make_pub(self, topic)
        make_sub(self, "/taskweave/ee_command", self._on_ee_command)
        make_sub(self, "/taskweave/gripper_command", self._on_gripper)
        make_sub(self, "/taskweave/skill_request", self._on_skill_request)
        make_sub(self, "/taskweave/current_skill", self._on_current_skill)
        self.target = None            # (pos (3,), yaw) of the newest ee_command
        self.grip_width = None        # newest gripper command
        self.last_cmd = None          # monotonic time of the newest ee_command
        self.watchdog = "idle"
        self._last_wd_pub = 0.0
        self.scripted = ScriptedController()
        self.skill = None             # the SkillRun of the running scripted skill
        self.skill_req = None
        self.requests = []
        self.current = ""             # skill named on /taskweave/current_skill
        self.current_call = None      # ... parsed once when it changes, not on every tick
        self.current_before = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="taskweave-sim", daemon=True)
        self.thread.start()
        self.get_logger().info(f"sim: {p['task']} on {p['backend']} seed {p['seed']}, "
                               f"{p['control_rate']:g} Hz x{p['time_scale']:g}")

    # ---- inputs ----------------------------------------------------------------
    def _on_ee_command(self, msg) -> None:
        o, q = msg.pose.position, msg.pose.orientation
        yaw = yaw_from_quat_xyzw(q.x, q.y, q.z, q.w) if (q.x or q.y or q.z or q.w) else None
        with self.lock:
            pos = np.array([o.x, o.y, o.z])
            self.target = (pos, self.env.backend.ee_target_yaw if yaw is None else yaw)
            self.last_cmd = time.monotonic()

    def _on_gripper(self, msg) -> None:
        with self.lock:
            self.grip_width = float(msg.data)

    def _on_skill_request(self, msg) -> None:
        try:
            req = json.loads(msg.data)
            req = req if isinstance(req, dict) else {"skill": str(req)}
        except ValueError:
            req = {"skill": msg.data}
        with self.lock:
            self.requests.append(req)

    def _on_current_skill(self, msg) -> None:
        with self.lock:
            if msg.data != self.current:
                self.current, self.current_call = msg.data, parse_skill(msg.data)
                self.current_before = self.env.symbolic_state()

    # ---- the control tick ------------------------------------------------------
    def _run(self) -> None:
        """The physics thread: every engine call (stepping, rendering) happens here, one tick per period.

        EGL rendering contexts belong to one thread, so the sim cannot tick in executor callbacks.
        """
        period = 1.0 / (self.params["control_rate"] * self.params["time_scale"])
        errors = 0
        first = True
        next_t = time.monotonic()
        try:
            while not self._stop.wait(max(0.0, next_t - time.monotonic())):
                next_t = max(next_t + period, time.monotonic())   # an overrun drops ticks, never bursts
                try:
                    if first:
                        with self.lock:
                            self.publish_state()
                        first = False
                    else:
                        self.tick()
                except Exception as e:  # a bad tick must not end the loop silently, nor spam the log
                    if not self.context.ok():
                        return
                    errors += 1
                    if errors <= 3:
                        self.get_logger().error(f"sim tick failed: {type(e).__name__}: {e}")
        finally:
            with self.lock:
                if self._own_env:   # renderers must be released by the thread that made them
                    self.env.close()

    def tick(self) -> None:
        """One control tick: scripted skill, command following or watchdog hold; then publish."""
        with self.lock:
            self._start_requests()
            if self.skill is not None:
                self._skill_tick()
            else:
                self.env.apply_action(self._command_action())
            self.publish_state()

    def _command_action(self) -> np.ndarray:
        b, ctrl = self.env.backend, self.env.controller
        a = np.zeros(5)
        a[4] = width_to_grip(self.grip_width) if self.grip_width is not None else (1.0 if ctrl.grip_closed else -1.0)
        fresh = self.last_cmd is not None and time.monotonic() - self.last_cmd <= self.params["command_timeout"]
        if fresh and self.target is not None:
            self._set_watchdog("active")
            pos, yaw = self.target
            d = (pos - b.ee_target_pos) / MAX_DPOS
            n = float(np.max(np.abs(d)))
            a[:3] = d / n if n > 1.0 else d
            a[3] = np.clip(wrap_angle(yaw - b.ee_target_yaw) / MAX_DYAW, -1.0, 1.0)
            return a
        if self.last_cmd is not None and self.watchdog != "stale":
            ee, _ = b.ee_pose()   # freeze: hold where the TCP is now, not where it was heading
            b.set_ee_target(ee, b.ee_yaw())
            self.target = None
            self._set_watchdog("stale")
            self.get_logger().warning("ee_command stale: holding the arm")
        elif self.last_cmd is None:
            self._set_watchdog("idle")
        return a

    def _start_requests(self) -> None:
        """Start queued skill requests through the env's skill loop (one at a time; others are `busy`)."""
        while self.requests:
            req = self.requests.pop(0)
            if self.skill is not None:
                self._result(req, SkillResult(False, "busy", f"{self.skill.call} is still running"))
                continue
            run = start_run(self.env, str(req.get("skill", "")), self.scripted)
            if run.done:                   # an invalid or refused call: counted by the loop, answered at once
                self._result(req, run.result, run)
                continue
            self.skill, self.skill_req = run, req
            self._set_watchdog("skill")

    def _skill_tick(self) -> None:
        """One control tick of the running scripted skill."""
        run = self.skill
        result = run.advance(self.scripted)
        if result is None:
            return
        self.skill, req = None, self.skill_req
        self.target, self.last_cmd, self.grip_width = None, None, None   # never resume an old command
        self._set_watchdog("idle")
        self._result(req, result, run)

    def _result(self, req: dict, result, run=None) -> None:
        d = {"id": req.get("id"), "skill": str(req.get("skill", "")), **result.to_dict(), "seq": int(self.env.steps),
             "progress": self.env.progress(), "task_success": self.env.is_success()}
        if run is not None and run.before is not None:
            d["postcondition"] = self.env.skill_succeeded(run.call, run.before)
        self._publish_str("/taskweave/skill_result", encode_state(d))

    def _set_watchdog(self, state: str) -> None:
        now = time.monotonic()
        if state != self.watchdog or now - self._last_wd_pub > 0.5:
            self.watchdog = state
            self._last_wd_pub = now
            self._publish_str("/taskweave/watchdog", json.dumps(self._watchdog_dict()))

    def _watchdog_dict(self) -> dict:
        age = None if self.last_cmd is None else round(time.monotonic() - self.last_cmd, 3)
        return {"state": self.watchdog, "age": age, "timeout": self.params["command_timeout"]}

    # ---- outputs ---------------------------------------------------------------
    def publish_state(self) -> None:
        """Publish joints, poses, the symbolic JSON and (if enabled) the camera images."""
        env, b = self.env, self.env.backend
        stamp = self.get_clock().now().to_msg()
        frame = self.params["frame_id"]
        js = JointState()
        js.header.stamp = stamp
        js.name = list(ARM_JOINTS + FINGER_JOINTS)
        js.position = [float(v) for v in b.joint_positions()]
        js.velocity = [float(v) for v in b.joint_velocities()]
        self.pubs["/joint_states"].publish(js)
        ee_pos, ee_q = b.ee_pose()
        ps = PoseStamped()
        ps.header.stamp, ps.header.frame_id = stamp, frame
        fill_pose(ps.pose, ee_pos, ee_q)
        self.pubs["/taskweave/ee_pose"].publish(ps)
        pa = PoseArray()
        pa.header.stamp, pa.header.frame_id = stamp, frame
        for row in b.object_poses():
            pose = Pose()
            fill_pose(pose, row[:3], row[3:])
            pa.poses.append(pose)
        self.pubs["/taskweave/object_poses"].publish(pa)
        st = env.symbolic_state()
        env.check_rules(st)   # the task's rules, also while the policy (not a SkillRun) drives the arm
        d = {"stamp": time.time(), "seq": int(env.steps), "task": env.task.name, "seed": env.seed_value,
             "backend": env.backend_name, "instruction": env.instruction, **symbolic_to_dict(st),
             "text": state_to_text(st, env.instruction, env.task.rules, [v["rule"] for v in env.violations]),
             "progress": env.task.progress(st), "success": bool(env.task.success(st) and not env.violations),
             "violations": list(env.violations),
             "robot": robot_features(b, env.controller.grip_closed),
             "ee_target": [*b.ee_target_pos, b.ee_target_yaw], "skill": self.current,
             "skill_features": [0.0] * SKILL_FEATURE_DIM, "skill_text": "",
             "skill_succeeded": False, "busy": self.skill is not None,
             "watchdog": self._watchdog_dict(), "skill_count": env.skill_count}
        call = self.current_call
        if call is not None:
            d["skill_features"] = skill_features(call, b, st)
            d["skill_text"] = skill_text(call, st)
            try:
                d["skill_succeeded"] = skill_succeeded(call, st, self.current_before)
            except (KeyError, IndexError, TypeError, ValueError):
                d["skill_succeeded"] = False
        self._publish_str("/taskweave/symbolic_state", encode_state(d))
        s = self.params["image_size"]
        for topic, camera in self.cameras.items():
            rgb = np.ascontiguousarray(b.render(camera, s, s).rgb, dtype=np.uint8)
            img = Image()
            img.header.stamp, img.header.frame_id = stamp, camera
            img.height, img.width = rgb.shape[:2]
            img.encoding, img.is_bigendian, img.step = "rgb8", 0, rgb.shape[1] * 3
            img.data = rgb.tobytes()
            self.pubs[topic].publish(img)

    def _publish_str(self, topic: str, text: str) -> None:
        m = String()
        m.data = text
        self.pubs[topic].publish(m)

    def close(self) -> None:
        """Stop the physics thread and release the engine (if this node made it)."""
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=5.0)


def main(args=None) -> int:
    """Console entry `taskweave-sim-node`: spin the sim node until Ctrl-C."""
    return run_single_node(lambda: SimNode(), args=args if args is not None else sys.argv)


if __name__ == "__main__":
    sys.exit(main())
