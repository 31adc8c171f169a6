"""The JSON contract of `/taskweave/symbolic_state`: what the sim (or a perception bridge) publishes.

One `std_msgs/String` per control tick carrying a JSON object. Planners read the symbolic part
(objects, zones, held, text); the policy reads `robot`, `ee_target` and `skill_features`.

    stamp           float   wall time (s) when the state was taken
    seq             int     control ticks since reset (a new value means a new observation)
    task, seed, backend, instruction   where the state comes from ("" / null on a real robot)
    objects         {name: {shape, color, category, pos [3], yaw, half_extents [3], upright, symmetry, visible}}
    object_names    [name, ...]   the order of `/taskweave/object_poses`
    zones           {name: {color, center [2], half_size [2]}}
    held            str     the object in the gripper, "" for none
    facts           [str]   relations, e.g. "inside(blue_block, orange_bowl)"
    text            str     the text observation for language models
    progress, success       task goal scores (sim only; null when unknown)
    robot           [7]     TCP xyz, sin/cos yaw, finger opening, gripper command (+1 closed, -1 open)
    ee_target       [4]     commanded TCP target x, y, z, yaw (the reference for delta actions)
    skill           str     the skill the features were computed for ("" for none)
    skill_features  [16]    `envs.observation.skill_features` of that skill
    skill_text      str     `envs.observation.skill_text` of that skill (the policy's conditioning)
    skill_succeeded bool    the skill's postcondition against the state when it started
    busy            bool    a scripted skill is running in the sim
    watchdog        {state, age, timeout}   see `sim_node` (idle | active | stale | skill)
    skill_count     int     skills run so far this episode
"""
from __future__ import annotations

import json
import math
from typing import Optional

import numpy as np

from taskweave.envs.predicates import ObjectState, SymbolicState, ZoneState
from taskweave.sim.skill_types import SkillCall, SkillSyntaxError

STATE_FIELDS = ("stamp", "seq", "task", "seed", "backend", "instruction", "objects", "object_names", "zones",
                "held", "facts", "text", "progress", "success", "robot", "ee_target", "skill", "skill_features",
                "skill_text", "skill_succeeded", "busy", "watchdog", "skill_count")


def _floats(v) -> list:
    return [round(float(x), 6) for x in np.asarray(v, dtype=float).reshape(-1)]


def symbolic_to_dict(st: SymbolicState) -> dict:
    """The JSON-ready symbolic part (objects, object_names, zones, held, facts) of a SymbolicState."""
    objects = {n: {"shape": o.shape, "color": o.color, "category": o.category, "pos": _floats(o.pos),
                   "yaw": round(float(o.yaw), 6), "half_extents": _floats(o.half_extents),
                   "upright": bool(o.upright), "symmetry": float(o.symmetry), "visible": bool(o.visible)}
               for n, o in st.objects.items()}
    zones = {n: {"color": z.color, "center": _floats(z.center), "half_size": _floats(z.half_size)}
             for n, z in st.zones.items()}
    return {"objects": objects, "object_names": list(st.objects), "zones": zones, "held": st.held,
            "facts": sorted(str(f) for f in st.facts)}


def symbolic_from_dict(d: dict) -> SymbolicState:
    """Rebuild a SymbolicState (relations recomputed on use) from the JSON of the state topic."""
    objects = {}
    for name in d.get("object_names") or list(d.get("objects", {})):
        o = d["objects"][name]
        objects[name] = ObjectState(
            name=name, shape=o["shape"], color=o.get("color", ""), category=o.get("category", ""),
            pos=np.asarray(o["pos"], dtype=float), yaw=float(o.get("yaw", 0.0)),
            half_extents=tuple(float(v) for v in o["half_extents"]), upright=bool(o.get("upright", True)),
            symmetry=float(o.get("symmetry", math.pi / 2)), visible=bool(o.get("visible", True)))
    zones = {n: ZoneState(n, z.get("color", ""), tuple(z["center"]), tuple(z["half_size"]))
             for n, z in d.get("zones", {}).items()}
    return SymbolicState(objects=objects, zones=zones, held=d.get("held", "") or "")


def encode_state(d: dict) -> str:
    """Serialise a state dict for the topic (numpy values become lists and floats)."""
    return json.dumps(d, default=_default, separators=(",", ":"))


def decode_state(text: str) -> Optional[dict]:
    """Parse the topic's JSON; None when it is not a JSON object."""
    try:
        d = json.loads(text)
    except (TypeError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _default(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def parse_skill(text: str) -> Optional[SkillCall]:
    """A SkillCall from topic text, None for an empty or malformed one."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return SkillCall.parse(text)
    except SkillSyntaxError:
        return None


def policy_state(obs: dict, skill_feats=None) -> np.ndarray:
    """The policy's state vector, laid out as in the demonstrations (envs.observation.policy_state)."""
    from taskweave.envs.observation import policy_state as layout
    robot = np.asarray(obs["robot"], dtype=np.float32).reshape(-1)
    feats = np.asarray(obs["skill_features"] if skill_feats is None else skill_feats, dtype=np.float32).reshape(-1)
    return layout(robot, feats)
