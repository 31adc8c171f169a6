"""`taskweave-policy-node`: the skill-conditioned policy as a ROS 2 node.

It reads observations from `/taskweave/symbolic_state` (JSON, see `state_json`: robot features,
commanded TCP target, skill features) and the skill to run from `/taskweave/current_skill`, and
publishes absolute TCP targets (`/taskweave/ee_command`, PoseStamped, gripper pointing down) and a
finger width (`/taskweave/gripper_command`, Float64) at `control_rate`.

The policy is a plain function `policy_fn(obs: dict, skill: str) -> action (5,)` in [-1, 1]:
(dx, dy, dz, dyaw, gripper), the end-effector delta of `sim.control.EEDeltaController`. A delta
becomes an absolute target against the reference target `obs["ee_target"]` (the commanded target
in the observation), so the sim turns it back into exactly the same delta. The node acts on its control timer, once per period, on the latest
observation: a new one is the reference for the delta (its commanded target); when none has arrived
since the last action (a loaded machine delivers states late or in bursts), the next action continues
from the node's own last target, as an action chunk runs open loop between observations. No command
goes out without a skill, while the sim runs a scripted skill, or with an observation older than
`obs_timeout` (the arm's watchdog then holds it).
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from std_msgs.msg import Float64

from taskweave.ros.common import (declare_params, make_pub, make_sub, run_single_node, top_down_quat_xyzw)
from taskweave.ros.params import POLICY_PARAMETERS
from taskweave.ros.state_json import decode_state, parse_skill, policy_state, symbolic_from_dict
from taskweave.sim.control import GRIPPER_OPEN_WIDTH, MAX_DPOS, MAX_DYAW, TCP_Z_MIN, YAW_LIMIT
from taskweave.sim.spec import WORKSPACE_HIGH, WORKSPACE_LOW

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
    from taskweave.policies.runner import PolicyRunner
    runner = PolicyRunner.from_checkpoint(path, num_envs=1, device=device, use_ema=use_ema,
                                          num_inference_steps=num_inference_steps or None)

    def policy_fn(obs: dict, skill: str) -> np.ndarray:
        """One action of the diffusion policy (receding horizon) for this observation and skill."""
        feats, text = observation_skill(obs, skill)
        name = task or obs.get("task") or ""
        task_id = runner.task_index(name)   # a task the checkpoint never saw is an error, never a silent 0
        state = policy_state(obs, feats)
        runner.check_state_size(state.shape[-1])   # never cut or pad a state of another size
        return runner.act({"state": state[None]}, [text], [task_id])[0]

    policy_fn.reset = runner.reset
    policy_fn.runner = runner
    return policy_fn


class PolicyNode(Node):
    """Turns (observation, current skill) into TCP targets and gripper commands at the control rate."""

    def __init__(self, context=None, parameter_overrides=None, cli_args=None, policy_fn: Optional[PolicyFn] = None):
        """policy_fn: used instead of loading the `checkpoint` parameter."""
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
        self.lock = threading.Lock()
        self.obs, self.obs_time, self.obs_seq, self.used_seq = None, 0.0, None, None
        self.skill = ""
        self.command = None           # (pos, yaw, width) last computed
        self.actions, self.errors = 0, 0
        self.stale_actions = 0        # actions taken without a new observation since the previous one
        self.pub_pose = make_pub(self, "/taskweave/ee_command")
        self.pub_grip = make_pub(self, "/taskweave/gripper_command")
        make_sub(self, "/taskweave/symbolic_state", self._on_obs)
        make_sub(self, "/taskweave/current_skill", self._on_skill)
        self.timer = self.create_timer(1.0 / p["control_rate"], self._on_timer)

    def _on_skill(self, msg) -> None:
        with self.lock:
            text = msg.data.strip()
            if text != self.skill:
                self.skill, self.command, self.used_seq = text, None, None
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

    def _on_timer(self) -> None:
        with self.lock:
            self._step()

    def _step(self) -> None:
        """One action per control period on the latest observation, unless it is older than obs_timeout."""
        if self.policy_fn is None or not self.skill or self.obs is None:
            return
        if time.monotonic() - self.obs_time > self.params["obs_timeout"]:
            return
        if (self.obs.get("watchdog") or {}).get("state") == "skill":
            return   # the sim is running a scripted skill; do not fight it
        new = self.obs_seq is None or self.obs_seq != self.used_seq or self.command is None
        # a new observation carries the sim's commanded target; without one, go on from our own last target
        # (the observation handed to the policy says so: its ee_target is the reference of the delta)
        ref_pos, ref_yaw = reference_target(self.obs) if new else self.command[:2]
        obs = self.obs if new else {**self.obs, "ee_target": [*(float(v) for v in ref_pos), float(ref_yaw)]}
        try:
            a = np.asarray(self.policy_fn(obs, self.skill), dtype=float).reshape(-1)
            if a.shape != (5,) or not np.all(np.isfinite(a)):
                raise ValueError(f"policy returned {a!r}, not 5 finite numbers")
        except Exception as e:  # no command rather than a crashed node: the arm's watchdog holds it
            self.command, self.used_seq = None, None
            self.errors += 1
            if self.errors <= 3:
                self.get_logger().error(f"policy failed on {self.skill!r}: {type(e).__name__}: {e}")
            return
        self.used_seq = self.obs_seq
        self.command = delta_to_target(ref_pos, ref_yaw, a)
        self.actions += 1
        self.stale_actions += int(not new)
        self._publish()

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
        """Stop commanding."""
        self.timer.cancel()


def main(args=None) -> int:
    """Console entry `taskweave-policy-node`: run the checkpoint's policy until Ctrl-C."""
    return run_single_node(lambda: PolicyNode(), args=args if args is not None else sys.argv)


if __name__ == "__main__":
    sys.exit(main())
