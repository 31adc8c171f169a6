"""Skill pre- and postconditions over the symbolic state: may a skill start, and did it do its job?"""
from __future__ import annotations

import math
from typing import Optional

from taskweave.envs.predicates import P, evaluate
from taskweave.sim.skill_types import SkillCall, SkillResult

GRASPING = ("pick", "rotate")          # skills that grasp their object: the gripper must be empty
NEEDS_CLEAR = ("pick", "rotate", "push")  # skills that move their object: nothing may rest on it


def precondition_failure(call: SkillCall, state) -> Optional[SkillResult]:
    """Why the world refuses call before it starts (a failure result), or None when it may run.

    pick/rotate need an empty gripper (`hand_full`); pick/rotate/push need nothing resting on the
    object (`not_clear`, by the `clear` predicate and the state's `on` facts). The skill loop applies
    this to every controller before any tick.
    """
    if not call.args or not isinstance(call.args[0], str) or call.args[0] not in state.objects:
        return None
    a = call.args[0]
    if call.name in GRASPING and state.held:
        return SkillResult(False, "hand_full", f"{call}: the gripper already holds {state.held}")
    if call.name in NEEDS_CLEAR and state.held != a and not evaluate(P("clear", a), state):
        top = sorted(f.args[0] for f in state.facts if f.name == "on" and f.args[1] == a)
        what = " and ".join(top) or "something"
        return SkillResult(False, "not_clear", f"{call}: {what} {'are' if len(top) > 1 else 'is'} on top of it")
    return None

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
