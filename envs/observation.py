"""Fixed-size robot and skill features shared by demonstrations, policies and envs."""
from __future__ import annotations

import math

import numpy as np

from taskweave.sim.backend import Backend
from taskweave.sim.geometry import top_down_yaw
from taskweave.sim.skill_types import SKILLS, SkillCall

MAX_OBJECTS = 10
ROBOT_DIM = 7
SKILL_FEATURE_DIM = 16
RELATIVE_DIM = 6
POLICY_STATE_DIM = ROBOT_DIM + SKILL_FEATURE_DIM + RELATIVE_DIM  # 29
TARGET_KINDS = {"none": 0.0, "object": 1.0, "container": 2.0, "zone": 3.0, "pose": 4.0}


def robot_features(b: Backend, grip_closed: bool) -> np.ndarray:
    """(7,) TCP xyz, sin/cos yaw, finger opening, gripper command."""
    pos, q = b.ee_pose()
    yaw = top_down_yaw(q)  # as Backend.ee_yaw, without a second pose query
    return np.array([pos[0], pos[1], pos[2], math.sin(yaw), math.cos(yaw), b.gripper_width(),
                     1.0 if grip_closed else -1.0], dtype=np.float32)


def skill_features(call: SkillCall, b: Backend, state) -> np.ndarray:
    """(16,) object xyz, sin/cos 4*yaw, half height, target xyz, target kind, rotation, skill one-hot, held."""
    f = np.zeros(SKILL_FEATURE_DIM, dtype=np.float32)
    names = list(SKILLS)
    if call.name in names:
        f[11 + names.index(call.name)] = 1.0
    if not call.args or not isinstance(call.args[0], str) or call.args[0] not in state.objects:
        return f
    o = state.objects[call.args[0]]
    f[0:3] = o.pos
    f[3:5] = (math.sin(4 * o.yaw), math.cos(4 * o.yaw))
    f[5] = o.half_extents[2]
    f[15] = 1.0 if state.held == o.name else 0.0
    kind, target = "none", o.pos
    if call.name == "rotate" and len(call.args) > 1:
        f[10] = float(call.args[1]) / 180.0
    elif len(call.args) > 1:
        t = call.args[1]
        if isinstance(t, tuple):
            kind, target = "pose", np.array([t[0], t[1], t[2] if len(t) > 2 else 0.0])
        elif t in state.objects:
            to = state.objects[t]
            kind = "container" if to.shape == "container" else "object"
            top = to.pos[2] + (to.half_extents[2] if kind == "object" else -to.half_extents[2])
            target = np.array([to.pos[0], to.pos[1], top])
        elif t in state.zones:
            z = state.zones[t]
            kind, target = "zone", np.array([z.center[0], z.center[1], 0.0])
    f[6:9] = target
    f[9] = TARGET_KINDS[kind]
    return f


def skill_text(call: SkillCall, state) -> str:
    """The policy's language for a skill: its name and argument kinds, e.g. `place(block, container)`.

    Which object and where come through skill_features, so the text generalises across colours and names.
    """
    parts = []
    for a in call.args:
        if isinstance(a, tuple):
            parts.append("pose")
        elif isinstance(a, (int, float)):
            parts.append("degrees")
        elif a in state.zones:
            parts.append("zone")
        elif a in state.objects:
            o = state.objects[a]
            parts.append("container" if o.shape == "container" else o.category)
        else:
            parts.append("unknown")
    return f"{call.name}({', '.join(parts)})"


def policy_state(robot, skill_feat) -> np.ndarray:
    """The policy's state: robot (7), skill features (16), then object - TCP and target - TCP (6).

    Checkpoints trained on a shorter prefix of this layout read state[:state_dim].
    """
    robot = np.asarray(robot, dtype=np.float32)
    skill_feat = np.asarray(skill_feat, dtype=np.float32)
    rel = np.concatenate([skill_feat[0:3] - robot[0:3], skill_feat[6:9] - robot[0:3]])
    return np.concatenate([robot, skill_feat, rel]).astype(np.float32)
