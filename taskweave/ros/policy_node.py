"""`taskweave-policy-node`: the skill-conditioned policy as a ROS 2 node.

It takes the skill to run from `/taskweave/current_skill` and publishes absolute TCP targets
(`/taskweave/ee_command`, PoseStamped, gripper pointing down) and a finger width
(`/taskweave/gripper_command`, Float64) at `control_rate`. The checkpoint decides what it reads:

- a privileged (state) checkpoint: `/taskweave/symbolic_state` (JSON, see `state_json`: robot features,
  commanded TCP target, skill features: simulator ground truth or a perception bridge);
- a robot-input checkpoint (obs_mode "robot"): the standard driver topics only: one
  `sensor_msgs/Image` per camera of the checkpoint (`camera_topics`: front -> `/camera/image_raw`,
  wrist -> `/wrist_camera/image_raw`) and `/joint_states` (the 7 Panda arm joints and 2 finger
  joints by name), turned into the 17-d proprio by forward kinematics of the sim's Panda (see
  `robot_inputs`, `kinematics`). The skill is conditioned on its sentence
  (`envs.observation.skill_sentence`: "place the red block in the green bowl"); a symbolic state, when one
  is published, only decides 'in' or 'on' in it (else the target's name does), and a skill text that is
  not a call is taken as the sentence itself. A bad image encoding or a joint state without the
  Panda's joints is logged and refused: no command goes out until good inputs arrive.

The policy is a plain function `policy_fn(obs: dict, skill: str) -> action (5,)` or `(action, done)`, in
[-1, 1]: (dx, dy, dz, dyaw, gripper), the end-effector delta of `sim.control.EEDeltaController`. A delta
becomes an absolute target against a reference target, so the sim turns it back into the same delta.
State path: the reference is the observation's commanded target (`obs["ee_target"]`) when it is new;
when none has arrived since the last action (a loaded machine delivers states late or in bursts), the
next action continues from the node's own last target, as an action chunk runs open loop between
observations. Robot path: the node's own last target, kept within `LEASH` of the measured TCP as the
controller keeps it; at the start of a skill the measured TCP (forward kinematics of `/joint_states`).
A policy with a done head (`PolicyRunner.act_done`) ends its skill: the node then publishes
`{"skill", "stamp", "actions"}` on `/taskweave/skill_done` once and holds the skill's last target until
the skill changes; the planner's policy executor scores the skill by its postcondition then (as
`policies.controllers` does in simulation). No command goes out without a skill, while the sim runs a
scripted skill, or with inputs older than `obs_timeout` (the arm's watchdog then holds it).
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from std_msgs.msg import Float64, String

from taskweave.ros.common import (declare_params, make_pub, make_sub, run_single_node, top_down_quat_xyzw)
from taskweave.ros.params import POLICY_PARAMETERS
from taskweave.ros.state_json import decode_state, parse_skill, policy_state, symbolic_from_dict
from taskweave.sim.control import GRIPPER_OPEN_WIDTH, MAX_DPOS, MAX_DYAW, TCP_Z_MIN, YAW_LIMIT, leashed_target
from taskweave.sim.errors import UserError
from taskweave.sim.geometry import top_down_yaw
from taskweave.sim.spec import WORKSPACE_HIGH, WORKSPACE_LOW

INPUT_WAIT_WARN_S = 3.0   # warn once per skill when a robot policy's inputs have been missing this long

PolicyFn = Callable[[dict, str], np.ndarray]


def delta_to_target(ref_pos, ref_yaw: float, action) -> tuple:
    """Absolute TCP target (pos, yaw) and finger width for a delta action applied to a reference target."""
    a = np.clip(np.asarray(action, dtype=float).reshape(-1), -1.0, 1.0)
    lo = WORKSPACE_LOW.copy()
    lo[2] = TCP_Z_MIN
    pos = np.clip(np.asarray(ref_pos, dtype=float) + a[:3] * MAX_DPOS, lo, WORKSPACE_HIGH)
    yaw = float(np.clip(ref_yaw + a[3] * MAX_DYAW, -YAW_LIMIT, YAW_LIMIT))
    width = 0.0 if a[4] > 0.0 else GRIPPER_OPEN_WIDTH * float(-a[4])
    return pos, yaw, width


def reference_target(obs: dict) -> tuple:
    """The commanded TCP target (pos, yaw) of an observation; the measured TCP when none is given."""
    if obs.get("ee_target") is not None:
        t = [float(v) for v in obs["ee_target"]]
        return np.array(t[:3]), t[3]
    r = obs["robot"]
    return np.array(r[:3], dtype=float), float(np.arctan2(r[3], r[4]))


def robot_skill_sentence(skill: str, state_dict: Optional[dict] = None) -> str:
    """The sentence a robot-input policy reads for a skill call's text (see the module docstring)."""
    from taskweave.envs.observation import skill_sentence
    call = parse_skill(skill)
    if call is None:
        return " ".join(skill.split())
    state = symbolic_from_dict(state_dict) if state_dict and "objects" in state_dict else None
    return skill_sentence(call, state)


def observation_skill(obs: dict, skill: str) -> tuple:
    """(skill features, skill text) for skill: the observation's when made for it, else from its symbolic state."""
    if obs.get("skill") == skill and obs.get("skill_features") is not None and obs.get("skill_text"):
        return np.asarray(obs["skill_features"], dtype=np.float32), obs["skill_text"]
    call = parse_skill(skill)
    if call is None or "objects" not in obs:
        raise ValueError(f"cannot condition the policy on {skill!r} from this observation")
    from taskweave.envs.observation import skill_features, skill_text
    st = symbolic_from_dict(obs)
    return skill_features(call, None, st), skill_text(call, st)


def checkpoint_policy_fn(path: str, device: str = "auto", task: str = "", use_ema: bool = True,
                         num_inference_steps: int = 0) -> PolicyFn:
    """A policy_fn running a diffusion-policy checkpoint through `policies.runner.PolicyRunner`."""
    from taskweave.envs.observation import camera_key
    from taskweave.policies.runner import PolicyRunner
    runner = PolicyRunner.from_checkpoint(path, num_envs=1, device=device, use_ema=use_ema,
                                          num_inference_steps=num_inference_steps or None)
    cfg = runner.config
    keys = [camera_key(c) for c in cfg.cameras] + ["proprio"] if runner.robot else []

    def robot_policy_fn(obs: dict, skill: str) -> tuple:
        """(action, done) of the robot-input policy for the cameras' frames, the proprio and the skill sentence."""
        actions, done = runner.act_done({k: np.asarray(obs[k])[None] for k in keys}, [obs["skill_text"]])
        return actions[0], bool(done[0])

    def state_policy_fn(obs: dict, skill: str) -> tuple:
        """(action, done) of the diffusion policy (receding horizon) for this observation and skill."""
        feats, text = observation_skill(obs, skill)
        name = task or obs.get("task") or ""
        task_id = runner.task_index(name)   # a task the checkpoint never saw is an error, never a silent 0
        state = policy_state(obs, feats)
        runner.check_state_size(state.shape[-1])   # never cut or pad a state of another size
        actions, done = runner.act_done({"state": state[None]}, [text], [task_id])
        return actions[0], bool(done[0])

    policy_fn = robot_policy_fn if runner.robot else state_policy_fn
    policy_fn.robot = runner.robot
    if runner.robot:
        policy_fn.cameras, policy_fn.image_shape = tuple(cfg.cameras), tuple(cfg.image_shape)
        runner.embed_skills(["pick the object"])   # load the sentence encoder now, not in the first skill's tick
    policy_fn.reset = runner.reset
    policy_fn.runner = runner
    return policy_fn


class PolicyNode(Node):
    """Turns (observation, current skill) into TCP targets and gripper commands at the control rate."""

    def __init__(self, context=None, parameter_overrides=None, cli_args=None, policy_fn: Optional[PolicyFn] = None):
        """policy_fn: used instead of loading the `checkpoint` parameter (`robot`, `cameras` and `image_shape`
        attributes make it a robot-input policy)."""
        super().__init__("taskweave_policy", context=context, parameter_overrides=parameter_overrides or [],
                         cli_args=cli_args)
        p = self.params = declare_params(self, POLICY_PARAMETERS)
        if policy_fn is None and p["checkpoint"]:
            policy_fn = checkpoint_policy_fn(p["checkpoint"], p["device"], p["task"], p["use_ema"],
                                             p["num_inference_steps"])
            self.get_logger().info(f"policy: loaded {p['checkpoint']}")
        elif policy_fn is None:
            self.get_logger().warning("policy: no checkpoint given; this node will not command the arm")
        self.policy_fn = policy_fn
        self.robot = bool(getattr(policy_fn, "robot", False))   # robot inputs: cameras + joint states
        self.lock = threading.Lock()
        self.obs, self.obs_time, self.obs_seq, self.used_seq = None, 0.0, None, None
        self.skill = ""
        self.command = None           # (pos, yaw, width) last computed
        self.actions, self.errors = 0, 0
        self.stale_actions = 0        # actions taken without a new observation since the previous one
        self.done_skill = None        # the skill the policy said is done (its last target is held)
        self.sentence = ("", "")      # (skill, sentence) of a robot-input policy
        self.last_input = None        # the observation last handed to the policy
        self.input_errors, self._last_input_error = 0, ("", 0.0)
        self.watchdog = ""            # the sim's watchdog state ('skill': a scripted skill drives the arm)
        self.waiting, self._skill_since, self._warned = "", 0.0, False
        self.pub_pose = make_pub(self, "/taskweave/ee_command")
        self.pub_grip = make_pub(self, "/taskweave/gripper_command")
        self.pub_done = make_pub(self, "/taskweave/skill_done")
        # state policies act on it; robot policies read it (when published) only for the sentence's 'in' / 'on'
        make_sub(self, "/taskweave/symbolic_state", self._on_obs)
        make_sub(self, "/taskweave/current_skill", self._on_skill)
        self.inputs, self.camera_topics, self._closed = None, {}, False
        if self.robot:
            self._subscribe_robot_inputs()
        self.timer = self.create_timer(1.0 / p["control_rate"], self._on_timer)

    def _subscribe_robot_inputs(self) -> None:
        from taskweave.ros.robot_inputs import RobotInputs, parse_camera_topics
        cameras = tuple(self.policy_fn.cameras)
        try:
            topics = parse_camera_topics(self.params["camera_topics"])
        except ValueError as e:
            raise UserError(f"policy node: {e}") from None
        missing = [c for c in cameras if c not in topics]
        if missing:
            raise UserError(f"policy node: camera_topics {self.params['camera_topics']!r} names no topic for the "
                            f"checkpoint's cameras {missing}")
        self.camera_topics = {c: topics[c] for c in cameras}
        self.inputs = RobotInputs(cameras, self.policy_fn.image_shape)
        # their own callback group: frames and joint states keep arriving (and are timed) while the timer infers
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
        group = MutuallyExclusiveCallbackGroup()
        for c, topic in self.camera_topics.items():
            make_sub(self, topic, lambda msg, c=c: self._on_image(c, msg), group, like="/camera/image_raw")
        make_sub(self, "/joint_states", self._on_joint_state, group)
        make_sub(self, "/taskweave/watchdog", self._on_watchdog, group)
        self.get_logger().info("policy: robot inputs " + ", ".join(f"{c} <- {t}" for c, t in self.camera_topics.items())
                               + ", proprio <- /joint_states")

    # ---- inputs ----------------------------------------------------------------
    def _on_skill(self, msg) -> None:
        with self.lock:
            text = msg.data.strip()
            if text != self.skill:
                self.skill, self.command, self.used_seq, self.done_skill = text, None, None, None
                self._skill_since, self._warned = time.monotonic(), False
                reset = getattr(self.policy_fn, "reset", None)
                if callable(reset):
                    reset()
                if text:
                    self.get_logger().info(f"skill: {text}")

    def _on_obs(self, msg) -> None:
        d = decode_state(msg.data)
        if d is None:
            return
        with self.lock:   # stored only: the control timer acts on it
            self.obs, self.obs_time, self.obs_seq = d, time.monotonic(), d.get("seq")

    def _on_image(self, camera: str, msg) -> None:
        why = self.inputs.on_image(camera, msg.encoding, msg.height, msg.width, msg.step, msg.data, time.monotonic())
        if why:
            self._input_error(f"{self.camera_topics[camera]}: {why}")

    def _on_joint_state(self, msg) -> None:
        why = self.inputs.on_joint_state(list(msg.name), list(msg.position), time.monotonic())
        if why:
            self._input_error(f"/joint_states: {why}")

    def _on_watchdog(self, msg) -> None:
        d = decode_state(msg.data)
        if d is not None:
            self.watchdog = str(d.get("state") or "")

    def _input_error(self, text: str) -> None:
        """Log a refused input (a new error at once, the same one again at most every 5 s)."""
        now = time.monotonic()
        self.input_errors += 1
        last, when = self._last_input_error
        if text != last or now - when > 5.0:
            self._last_input_error = (text, now)
            self.get_logger().error(f"refused input: {text}")

    # ---- the control tick ------------------------------------------------------
    def _on_timer(self) -> None:
        with self.lock:
            self._step()

    def _step(self) -> None:
        """One action per control period on the newest inputs, unless they are older than obs_timeout."""
        if self.policy_fn is None or not self.skill or self._closed:
            return
        if self.done_skill == self.skill:   # the policy ended this skill: hold its last target
            if self.command is not None:
                self._publish()
            return
        got = self._robot_observation() if self.robot else self._state_observation()
        if got is None:
            return
        obs, (ref_pos, ref_yaw), seq, new = got
        try:
            out = self.policy_fn(obs, self.skill)
            a, done = out if isinstance(out, tuple) else (out, False)
            a = np.asarray(a, dtype=float).reshape(-1)
            if a.shape != (5,) or not np.all(np.isfinite(a)):
                raise ValueError(f"policy returned {a!r}, not 5 finite numbers")
        except Exception as e:  # no command rather than a crashed node: the arm's watchdog holds it
            self.command, self.used_seq = None, None
            self.errors += 1
            if self.errors <= 3:
                self.get_logger().error(f"policy failed on {self.skill!r}: {type(e).__name__}: {e}")
            return
        self.used_seq = seq
        self.command = delta_to_target(ref_pos, ref_yaw, a)
        self.actions += 1
        self.stale_actions += int(not new)
        self._publish()
        if done:
            self._done()

    def _state_observation(self) -> Optional[tuple]:
        """(obs, reference target, seq, new) from the state JSON, or None when there is none fresh to act on."""
        if self.obs is None or time.monotonic() - self.obs_time > self.params["obs_timeout"]:
            return None
        if (self.obs.get("watchdog") or {}).get("state") == "skill":
            return None   # the sim is running a scripted skill; do not fight it
        new = self.obs_seq is None or self.obs_seq != self.used_seq or self.command is None
        # a new observation carries the sim's commanded target; without one, go on from our own last target
        # (the observation handed to the policy says so: its ee_target is the reference of the delta)
        ref_pos, ref_yaw = reference_target(self.obs) if new else self.command[:2]
        obs = self.obs if new else {**self.obs, "ee_target": [*(float(v) for v in ref_pos), float(ref_yaw)]}
        self.last_input = obs
        return obs, (ref_pos, ref_yaw), self.obs_seq, new

    def _robot_observation(self) -> Optional[tuple]:
        """(obs, reference target, seq, new) from the cameras and joint states, or None when one is missing or old."""
        if self.watchdog == "skill":
            return None   # the sim is running a scripted skill; do not fight it
        now = time.monotonic()
        obs, tcp = self.inputs.observation(now, self.params["obs_timeout"])
        if obs is None:
            self.waiting = tcp
            if not self._warned and now - self._skill_since > INPUT_WAIT_WARN_S:
                self._warned = True
                self.get_logger().warning(f"policy: {self.skill!r} waits for its inputs: {tcp}")
            return None
        self.waiting = ""
        seq = self.inputs.joint_count
        new = seq != self.used_seq or self.command is None
        pos, quat = tcp
        if self.command is None:   # a skill starts from the measured TCP
            ref_pos, ref_yaw = np.asarray(pos, dtype=float), top_down_yaw(quat)
        else:
            ref_pos, ref_yaw = leashed_target(self.command[0], pos), self.command[1]
        if self.sentence[0] != self.skill:
            self.sentence = (self.skill, robot_skill_sentence(self.skill, self.obs))
        obs.update(skill_text=self.sentence[1], ee_target=[*(float(v) for v in ref_pos), float(ref_yaw)])
        self.last_input = obs
        return obs, (ref_pos, ref_yaw), seq, new

    def _done(self) -> None:
        """The policy said its skill is over: say so once, then hold the last target until the skill changes."""
        import json
        self.done_skill = self.skill
        m = String()
        m.data = json.dumps({"skill": self.skill, "stamp": time.time(), "actions": self.actions})
        self.pub_done.publish(m)
        self.get_logger().info(f"skill done (the policy says): {self.skill}")

    def _publish(self) -> None:
        pos, yaw, width = self.command
        m = PoseStamped()
        m.header.stamp = self.get_clock().now().to_msg()
        m.header.frame_id = self.params["frame_id"]
        m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in pos)
        q = top_down_quat_xyzw(yaw)
        m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z, m.pose.orientation.w = q
        self.pub_pose.publish(m)
        g = Float64()
        g.data = float(width)
        self.pub_grip.publish(g)

    def close(self) -> None:
        """Stop commanding (and release the forward-kinematics client)."""
        self.timer.cancel()
        with self.lock:
            self._closed = True
            if self.inputs is not None:
                self.inputs.close()


def main(args=None) -> int:
    """Console entry `taskweave-policy-node`: run the checkpoint's policy until Ctrl-C."""
    return run_single_node(lambda: PolicyNode(), args=args if args is not None else sys.argv)


if __name__ == "__main__":
    sys.exit(main())
