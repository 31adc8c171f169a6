"""Skill postconditions over the symbolic state: did a skill (scripted or learned) do its job?"""
from __future__ import annotations

import math

from taskweave.envs.predicates import P, evaluate
from taskweave.sim.skill_types import SkillCall

PICK_LIFT = 0.09  # a pick is done once the object is held this high (metres), as the scripted pick does


def skill_succeeded(call: SkillCall, state, before=None) -> bool:
    """Whether the postcondition of a skill call holds in state (rotate needs the state before)."""
    if not call.args or call.args[0] not in state.objects:
        return False
    a = call.args[0]
    if call.name == "pick":
        return state.held == a and state.objects[a].pos[2] > PICK_LIFT
    if state.held == a:
        return False
    if call.name in ("place", "push"):
        t = call.args[1]
        if isinstance(t, tuple):
            if len(t) == 3:
                return evaluate(P("at", a, (t[0], t[1], t[2] + state.objects[a].half_extents[2]), 0.03), state)
            return evaluate(P("near", a, t[:2], 0.03), state)
        if t in state.zones or state.objects[t].shape == "container":
            return evaluate(P("inside", a, t), state)
        return evaluate(P("on", a, t), state)
    if call.name == "rotate":
        if before is None or a not in before.objects:
            return False
        want = math.degrees(before.objects[a].yaw) + float(call.args[1])
        return evaluate(P("yaw", a, want, 12.0), state)
    return False
