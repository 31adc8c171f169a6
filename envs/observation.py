"""Fixed-size robot and skill features shared by demonstrations, policies and envs.

Two kinds of policy input live here. The privileged baseline state (`policy_state`: robot features
plus `skill_features`, which read the simulator's ground-truth object poses) and what a robot has
(`robot_observation`: camera frames and `proprio_features`, no simulator ground truth), with the
skill given as a sentence (`skill_sentence`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from taskweave.sim import robot as R
from taskweave.sim.backend import Backend
from taskweave.sim.geometry import quat_matrix, top_down_yaw
from taskweave.sim.skill_types import SKILLS, SkillCall

MAX_OBJECTS = 10
ROBOT_DIM = 7
SKILL_FEATURE_DIM = 16
RELATIVE_DIM = 6
POLICY_STATE_DIM = ROBOT_DIM + SKILL_FEATURE_DIM + RELATIVE_DIM  # 29
TARGET_KINDS = {"none": 0.0, "object": 1.0, "container": 2.0, "zone": 3.0, "pose": 4.0}
# What a robot senses of itself: 7 arm joint angles, TCP xyz, TCP rotation (first two matrix columns), finger width.
PROPRIO_DIM = 7 + 3 + 6 + 1  # 17
PROPRIO_LAYOUT = "joints(7) + tcp_xyz(3) + tcp_rot6d(6) + finger_width(1)"
ROBOT_CAMERAS = ("front", R.WRIST_CAMERA)   # the scene camera and the camera on the hand
DEFAULT_ROBOT_IMAGE_SIZE = 96                # square frames; policies crop 84 of them (Diffusion Policy)


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


# ----------------------------------------------------------------------------- inputs a robot has
def proprio_features(b: Backend) -> np.ndarray:
    """(17,) the arm's joint angles, TCP position, TCP rotation (6-D: first two matrix columns), finger width."""
    q = b.joint_positions()
    pos, quat = b.ee_pose()
    rot = quat_matrix(quat)
    return np.concatenate([q[:7], pos, rot[:, 0], rot[:, 1], [q[7] + q[8]]]).astype(np.float32)


def camera_key(camera: str) -> str:
    """The observation key of a camera's frames, e.g. 'rgb:wrist' (also its name in `policy_inputs`)."""
    return f"rgb:{camera}"


def robot_observation(b: Backend, cameras: Sequence[str] = ROBOT_CAMERAS,
                      image_size: int = DEFAULT_ROBOT_IMAGE_SIZE) -> dict:
    """What a robot senses: {'rgb:<camera>': (S, S, 3) uint8 per camera, 'proprio': (17,)}; no object state."""
    obs = {camera_key(c): b.render(c, image_size, image_size).rgb for c in cameras}
    obs["proprio"] = proprio_features(b)
    return obs


def _phrase(name: str) -> str:
    """An identifier as words: 'red_block_1' -> 'red block 1'."""
    return " ".join(str(name).replace("_", " ").split())


def _number(v: float) -> str:
    return f"{float(v):.2f}".rstrip("0").rstrip(".") if abs(float(v)) >= 0.005 else "0"


def skill_sentence(call: SkillCall, state=None) -> str:
    """The skill as an English sentence with its object names: 'pick the red block',
    'place the red block in the green bowl', 'place the red block on the green block'.

    state (a SymbolicState, optional) says whether a target is a container or zone ('in') or an object
    ('on'); without it the target's name decides ('bowl', 'tray', 'box', 'zone' take 'in').
    """
    call = call if isinstance(call, SkillCall) else SkillCall.parse(str(call))
    args = list(call.args)
    obj = f"the {_phrase(args[0])}" if args and isinstance(args[0], str) else "the object"
    if call.name == "pick" or len(args) < 2:
        return f"{call.name} {obj}"
    t = args[1]
    if call.name == "rotate" and isinstance(t, (int, float)):
        return f"rotate {obj} by {round(float(t))} degrees"
    if isinstance(t, tuple):
        where = f"{'to' if call.name == 'push' else 'at'} x {_number(t[0])} y {_number(t[1])}"
        return f"{call.name} {obj} {where}"
    if isinstance(t, (int, float)):
        return f"{call.name} {obj} {_number(t)}"
    if call.name == "push":
        return f"push {obj} to the {_phrase(t)}"
    inside = any(w in str(t) for w in ("bowl", "tray", "box", "zone", "bin", "basket"))
    if state is not None:
        if t in getattr(state, "zones", {}):
            inside = True
        elif t in getattr(state, "objects", {}):
            inside = state.objects[t].shape == "container"
    return f"{call.name} {obj} {'in' if inside else 'on'} the {_phrase(t)}"
