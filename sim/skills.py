"""Scripted, closed-loop skills (pick, place, push, rotate) that double as oracle demonstrators.

(~410 lines: the four skills share their phases, grasp planning and failure checks, so they stay together.)

A skill is a generator of low-level actions, one per control tick, that returns a SkillResult.
It reads the world only through the Backend, so the same code drives MuJoCo and PyBullet.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from taskweave.sim.geometry import quat_yaw, wrap_angle
from taskweave.sim.backend import Backend
from taskweave.sim.control import ACTION_DIM, MAX_DPOS, MAX_DYAW, YAW_LIMIT
from taskweave.sim.skill_types import SKILLS, SkillArgumentError, SkillCall, SkillResult
from taskweave.sim.spec import WORKSPACE_HIGH, WORKSPACE_LOW, SceneSpec

CARRY_Z = 0.16        # TCP height for transport
MAX_FINGER_SPAN = 0.074
WALL = 0.012          # container floor thickness (two half-thicknesses)


def _arg_kind(arg, spec: SceneSpec) -> str:
    if isinstance(arg, tuple):
        return "pose"
    if isinstance(arg, (int, float)):
        return "number"
    if arg in spec.object_names:
        return "object"
    if arg in [z.name for z in spec.zones]:
        return "zone"
    return "unknown"


def validate_call(call: SkillCall, spec: SceneSpec) -> None:
    """Raise SkillArgumentError naming what is wrong with a call for this scene."""
    info = SKILLS.get(call.name)
    if info is None:
        raise SkillArgumentError(f"unknown skill {call.name!r} (skills: {', '.join(SKILLS)})")
    if len(call.args) != len(info.params):
        raise SkillArgumentError(f"{call.name} takes {len(info.params)} argument(s) "
                                 f"({', '.join(p for p, _ in info.params)}), got {len(call.args)}: {call}")
    for arg, (pname, kinds) in zip(call.args, info.params):
        kind = _arg_kind(arg, spec)
        if kind == "unknown":
            raise SkillArgumentError(f"{call}: unknown object or zone {arg!r} (objects: "
                                     f"{', '.join(spec.object_names)}; zones: {', '.join(z.name for z in spec.zones)})")
        if kind not in kinds:
            raise SkillArgumentError(f"{call}: argument {pname}={arg!r} is a {kind}, expected {' or '.join(kinds)}")
    obj = spec.object(call.args[0])
    if obj.fixed and call.name in ("pick", "push", "rotate", "place"):
        raise SkillArgumentError(f"{call}: {obj.name} is fixed to the table and cannot be moved")


def can_grasp(obj) -> bool:
    """Whether the parallel gripper can hold this object at all (an ObjectSpec): it is not fixed to the
    table and one side of its footprint fits between the open fingers. A static affordance of the object's
    shape (what pick, place and rotate need of their first argument); reach and clearance are checked when
    the skill runs."""
    if obj.fixed:
        return False
    sx, sy = obj.footprint
    if obj.shape in ("cylinder", "sphere"):
        return 2 * sx <= MAX_FINGER_SPAN
    return 2 * min(sx, sy) <= MAX_FINGER_SPAN


def grasp_yaw(obj_yaw: float, size_x: float, size_y: float, prefer: float = 0.0) -> Optional[float]:
    """Gripper yaw that closes the fingers across the object's narrow side (None if too wide)."""
    options = []
    # Fingers close along the gripper's y axis; at gripper yaw psi that is world (-sin psi, cos psi).
    if 2 * size_y <= MAX_FINGER_SPAN:
        options += [obj_yaw, obj_yaw + math.pi]
    if 2 * size_x <= MAX_FINGER_SPAN:
        options += [obj_yaw + math.pi / 2, obj_yaw - math.pi / 2]
    options = [wrap_angle(o) for o in options]
    options = [o for o in options if abs(o) <= YAW_LIMIT]
    if not options:
        return None
    return min(options, key=lambda o: abs(wrap_angle(o - prefer)))


def finger_clearance(b: Backend, xy, yaw: float, half_span: float, exclude=()) -> float:
    """Smallest distance from either open fingertip at (xy, yaw) to another object's footprint."""
    axis = np.array([-math.sin(yaw), math.cos(yaw)])
    tips = [np.asarray(xy[:2]) + axis * half_span, np.asarray(xy[:2]) - axis * half_span]
    best = 1.0
    for o, pose in zip(b.spec.objects, b.object_poses()):
        if o.name in exclude or o.shape == "container":
            continue
        r = max(o.footprint)
        for t in tips:
            best = min(best, float(np.linalg.norm(t - pose[:2])) - r)
    return best


def clear_yaw(b: Backend, xy, options, half_span: float, exclude=(), prefer: float = 0.0) -> float:
    """Of equivalent gripper yaws, the one whose fingertips stay clear of neighbours (then nearest prefer)."""
    return max(options, key=lambda y: (round(min(finger_clearance(b, xy, y, half_span, exclude), 0.03), 3),
                                       -abs(wrap_angle(y - prefer))))


class ScriptedSkill:
    """Runs one skill call as a closed-loop generator of actions; `result` is set when done."""

    def __init__(self, call: SkillCall, backend: Backend, max_ticks: int = 400) -> None:
        validate_call(call, backend.spec)
        self.call = call
        self.max_ticks = max_ticks
        self.ticks = 0
        self.result: Optional[SkillResult] = None
        self._grip = 1.0 if backend.gripper_target < 0.01 else -1.0  # keep what the hand is doing
        self._gen = getattr(self, "_" + call.name)(backend, *call.args)

    def act(self, backend: Backend) -> Optional[np.ndarray]:
        """The next action, or None once the skill has finished (see `result`)."""
        if self.result is not None:
            return None
        if self.ticks >= self.max_ticks:
            self.result = SkillResult(False, "timeout", f"{self.call} exceeded {self.max_ticks} control ticks",
                                      self.ticks)
            return None
        try:
            a = next(self._gen)
        except StopIteration as stop:
            self.result = stop.value
            self.result.steps = self.ticks
            return None
        self.ticks += 1
        return a

    # ---- primitives --------------------------------------------------------------------
    def _action(self, b: Backend, pos, yaw, max_step=MAX_DPOS) -> np.ndarray:
        a = np.zeros(ACTION_DIM)
        d = np.asarray(pos, dtype=float) - b.ee_target_pos
        n = np.linalg.norm(d)
        if n > max_step:
            d *= max_step / n
        a[:3] = d / MAX_DPOS
        a[3] = np.clip(wrap_angle(yaw - b.ee_target_yaw) / MAX_DYAW, -1, 1)
        a[4] = self._grip
        return a

    def _move(self, b: Backend, pos, yaw, tol=0.008, max_step=MAX_DPOS, ticks=60, settle=1):
        """Yield actions toward a TCP pose until within tol; returns False on timeout."""
        pos = np.asarray(pos, dtype=float)
        close = 0
        for _ in range(ticks):
            ee, _ = b.ee_pose()
            if np.linalg.norm(ee - pos) < tol and abs(wrap_angle(b.ee_yaw() - yaw)) < 0.08:
                close += 1
                if close > settle:
                    return True
            yield self._action(b, pos, yaw, max_step)
        return False

    def _gripper(self, b: Backend, closed: bool, ticks: int, width: float = 0.08):
        self._grip = 1.0 if closed else -min(1.0, width / 0.08)
        for _ in range(ticks):
            yield self._action(b, b.ee_target_pos, b.ee_target_yaw)

    def _holding(self, b: Backend, name: str) -> bool:
        left, right = b.finger_contact(name)
        return left and right and b.gripper_width() > 0.004

    @staticmethod
    def _reachable(xy) -> bool:
        return bool(WORKSPACE_LOW[0] <= xy[0] <= WORKSPACE_HIGH[0] and WORKSPACE_LOW[1] <= xy[1] <= WORKSPACE_HIGH[1])

    def _fail(self, failure: str, message: str) -> SkillResult:
        return SkillResult(False, failure, f"{self.call}: {message}")

    # ---- pick --------------------------------------------------------------------------
    def _grasp(self, b: Backend, name: str, yaw_offset: float = 0.0):
        """Approach, grasp and lift an object; returns (result or None, grasp yaw)."""
        o = b.spec.object(name)
        pos, quat = b.object_pose(name)
        if not self._reachable(pos):
            return self._fail("unreachable", f"{name} at ({pos[0]:.2f}, {pos[1]:.2f}) is outside the workspace"), 0.0
        sx, sy = o.footprint
        if o.shape in ("cylinder", "sphere"):
            yaw = float(np.clip(-yaw_offset if abs(yaw_offset) > 0 else b.ee_target_yaw, -1.5, 1.5))
            if 2 * sx > MAX_FINGER_SPAN:
                return self._fail("grasp_failed", f"{name} is wider than the gripper"), 0.0
        else:
            yaw = grasp_yaw(quat_yaw(quat), sx, sy, prefer=-yaw_offset)
            if yaw is None:
                return self._fail("grasp_failed", f"{name} is wider than the gripper opening"), 0.0
            if yaw_offset == 0.0:
                step = math.pi / 2 if abs(sx - sy) < 1e-6 else math.pi
                opts = [v for v in (wrap_angle(yaw + k * step) for k in range(4)) if abs(v) <= YAW_LIMIT - 0.3]
                yaw = clear_yaw(b, pos, opts or [yaw], 0.045, exclude=(name,), prefer=yaw)
        hh = o.half_height
        top = pos[2] + hh
        grasp_z = max(top - min(0.025, hh), 0.012)
        self._grip = -1.0
        if not (yield from self._move(b, [pos[0], pos[1], max(top + 0.08, 0.12)], yaw, tol=0.012, ticks=50)):
            return self._fail("timeout", "could not reach the pre-grasp pose"), yaw
        pos, _ = b.object_pose(name)  # re-aim on the object's current position
        if not (yield from self._move(b, [pos[0], pos[1], grasp_z], yaw, tol=0.006, max_step=0.02, ticks=40)):
            ee, _ = b.ee_pose()
            if ee[2] - grasp_z > 0.012:  # stopped well above: blocked by something
                kind = "collision" if ee[2] - grasp_z > 0.02 else "timeout"
                return self._fail(kind, f"could not descend to {name} (TCP stopped {ee[2] - grasp_z:.3f} m above)"), yaw
            # a few millimetres short (fingertips on a neighbour or the table): grasp a little higher
        yield from self._gripper(b, True, 6)
        if b.gripper_width() < 0.004:
            return self._fail("grasp_failed", f"fingers closed on nothing where {name} was"), yaw
        z0 = b.object_pose(name)[0][2]
        ee, _ = b.ee_pose()
        yield from self._move(b, [ee[0], ee[1], CARRY_Z], yaw, tol=0.015, ticks=30)
        p1, _ = b.object_pose(name)
        if not self._holding(b, name) or p1[2] - z0 < 0.03:
            return self._fail("grasp_slipped", f"{name} did not come up with the gripper"), yaw
        return None, yaw

    def _pick(self, b: Backend, name: str):
        res, _ = yield from self._grasp(b, name)
        return res or SkillResult(True, None, f"{self.call}: holding {name}")

    # ---- place -------------------------------------------------------------------------
    def _target_surface(self, b: Backend, target, held: str):
        """(x, y, surface z, desired object yaw or None) for a place target."""
        spec = b.spec
        if isinstance(target, tuple):
            z = float(target[2]) if len(target) == 3 else 0.0
            return float(target[0]), float(target[1]), z, None
        if target in spec.object_names:
            t = spec.object(target)
            pos, quat = b.object_pose(target)
            if t.shape == "container":
                x, y = self._free_in_container(b, target, held)
                return x, y, pos[2] - t.half_height + WALL, None
            return pos[0], pos[1], pos[2] + t.half_height, quat_yaw(quat)
        z = spec.zone(target)
        return float(z.center[0]), float(z.center[1]), 0.0, None

    def _free_in_container(self, b: Backend, container: str, held: str) -> tuple:
        """The spot inside a container farthest from the objects already in it."""
        c = b.spec.object(container)
        cpos, _ = b.object_pose(container)
        hx, hy = c.footprint
        r = max(b.spec.object(held).footprint) + WALL + 0.004
        others = []
        for o in b.spec.objects:
            if o.name in (held, container):
                continue
            p, _ = b.object_pose(o.name)
            if abs(p[0] - cpos[0]) < hx and abs(p[1] - cpos[1]) < hy:
                others.append(p[:2])
        if not others:
            return float(cpos[0]), float(cpos[1])
        best, best_d = (float(cpos[0]), float(cpos[1])), -1.0
        for x in np.linspace(cpos[0] - hx + r, cpos[0] + hx - r, 7):
            for y in np.linspace(cpos[1] - hy + r, cpos[1] + hy - r, 7):
                d = min(math.hypot(x - q[0], y - q[1]) for q in others)
                if d > best_d:
                    best, best_d = (float(x), float(y)), d
        return best

    def _place(self, b: Backend, name: str, target, release: bool = True):
        if target == name:
            return self._fail("invalid_args", "cannot place an object on itself")
        if not self._holding(b, name):
            return self._fail("not_holding", f"the gripper is not holding {name}")
        self._grip = 1.0
        o = b.spec.object(name)
        x, y, surf, want_yaw = self._target_surface(b, target, name)
        if not self._reachable((x, y)):
            return self._fail("unreachable", f"target ({x:.2f}, {y:.2f}) is outside the workspace")
        ee, _ = b.ee_pose()
        opos, oquat = b.object_pose(name)
        offset = opos[2] - ee[2]
        yaw = b.ee_target_yaw
        if want_yaw is not None and o.shape == "box":
            rel = wrap_angle(quat_yaw(oquat) - b.ee_yaw())
            options = [wrap_angle(want_yaw - rel + k * math.pi / 2) for k in range(4)]
            options = [v for v in options if abs(v) <= YAW_LIMIT]
            if options:
                yaw = min(options, key=lambda v: abs(wrap_angle(v - yaw)))
        elif o.shape == "box":
            step = math.pi / 2 if abs(o.footprint[0] - o.footprint[1]) < 1e-6 else math.pi
            opts = [v for v in (wrap_angle(yaw + k * step) for k in range(4)) if abs(v) <= YAW_LIMIT - 0.3]
            span = 2 * min(o.footprint) + 0.03
            yaw = clear_yaw(b, (x, y), opts or [yaw], span / 2 + 0.01, exclude=(name,), prefer=yaw)
        carry = max(CARRY_Z, surf + o.half_height * 2 - offset + 0.06)
        yield from self._move(b, [ee[0], ee[1], carry], b.ee_target_yaw, tol=0.02, ticks=20)
        if not (yield from self._move(b, [x, y, carry], yaw, tol=0.01, ticks=60)):
            return self._fail("timeout", "could not carry the object over the target")
        if not self._holding(b, name):
            return self._fail("grasp_slipped", f"{name} was dropped on the way")
        # Aim the held object, not the TCP: correct for where it sits between the fingers.
        ee, _ = b.ee_pose()
        opos, _ = b.object_pose(name)
        tx, ty = x - (opos[0] - ee[0]), y - (opos[1] - ee[1])
        yield from self._move(b, [tx, ty, carry], yaw, tol=0.006, ticks=15)
        release_z = surf + 0.006 + o.half_height - offset
        yield from self._move(b, [tx, ty, release_z], yaw, tol=0.006, max_step=0.015, ticks=40)
        if not release:
            return None
        # open just enough to let go, so the fingers clear container walls and neighbours
        span = 2 * max(o.footprint) if o.shape != "box" else 2 * min(o.footprint)
        yield from self._gripper(b, False, 5, width=span + 0.03)
        ee, _ = b.ee_pose()
        yield from self._move(b, [ee[0], ee[1], carry], yaw, tol=0.02, ticks=20, settle=0)
        pos, _ = b.object_pose(name)
        if isinstance(target, str) and target in b.spec.object_names:
            t = b.spec.object(target)
            tpos, _ = b.object_pose(target)
            margin = WALL if t.shape == "container" else -0.004
            ok = all(abs(pos[i] - tpos[i]) <= t.footprint[i] - margin for i in (0, 1))
        elif isinstance(target, str):
            z = b.spec.zone(target)
            ok = all(abs(pos[i] - z.center[i]) <= z.half_size[i] for i in (0, 1))
        else:
            ok = math.hypot(pos[0] - x, pos[1] - y) <= 0.03
        if not ok:
            err = math.hypot(pos[0] - x, pos[1] - y)
            return self._fail("missed_target", f"{name} came to rest {err:.3f} m from the target")
        return SkillResult(True, None, f"{self.call}: {name} released at the target")

    # ---- push --------------------------------------------------------------------------
    def _push(self, b: Backend, name: str, target):
        o = b.spec.object(name)
        if isinstance(target, tuple):
            goal = np.array(target[:2], dtype=float)
            tol = 0.02
        else:
            z = b.spec.zone(target)
            goal = np.array(z.center, dtype=float)
            tol = max(0.01, min(z.half_size) - max(o.footprint))
        if not self._reachable(goal):
            return self._fail("unreachable", f"push target ({goal[0]:.2f}, {goal[1]:.2f}) is outside the workspace")
        r = float(np.hypot(*o.footprint))
        z_push = min(o.half_height, 0.02) + 0.004
        self._grip = 1.0

        def geometry():
            p = b.object_pose(name)[0][:2]
            d = goal - p
            dist = float(np.linalg.norm(d))
            return p, (d / dist if dist > 1e-6 else np.array([1.0, 0.0])), dist

        aim = max(0.008, 0.5 * tol)  # push toward the centre, so settling never leaves it on the edge of tol
        p, d, dist = geometry()
        if dist < tol:
            return SkillResult(True, None, f"{self.call}: already there")
        yaw = wrap_angle(math.atan2(d[1], d[0]))
        if abs(yaw) > math.pi / 2:
            yaw = wrap_angle(yaw + math.pi)
        start = p - d * (r + 0.035)
        if not self._reachable(start):
            return self._fail("unreachable", "no room behind the object to push from")
        if not (yield from self._move(b, [start[0], start[1], 0.12], yaw, tol=0.012, ticks=50)):
            return self._fail("timeout", "could not reach the pre-push pose")
        if not (yield from self._move(b, [start[0], start[1], z_push], yaw, tol=0.008, max_step=0.02, ticks=30)):
            return self._fail("collision", "could not lower the gripper behind the object")
        for _ in range(150):
            p, d, dist = geometry()
            if dist < aim:
                break
            ee, _ = b.ee_pose()
            behind = p - d * (r + 0.012)
            rel = ee[:2] - p
            lateral = abs(rel[0] * d[1] - rel[1] * d[0])
            along = rel @ d
            if lateral > 0.015 or along > -(r * 0.5):
                back = p - d * (r + 0.035)
                if np.linalg.norm(ee[:2] - back) > 0.01 and along > -(r + 0.02):
                    # lift over, come back down behind the object
                    yield from self._move(b, [ee[0], ee[1], 0.08], yaw, tol=0.015, ticks=10, settle=0)
                    yield from self._move(b, [back[0], back[1], 0.08], yaw, tol=0.012, ticks=20, settle=0)
                    yield from self._move(b, [back[0], back[1], z_push], yaw, tol=0.008, ticks=15, settle=0)
                    continue
                step_to = behind
            else:
                step_to = ee[:2] + d * min(0.012, dist + 0.004)
            yaw = wrap_angle(math.atan2(d[1], d[0]))
            if abs(yaw) > math.pi / 2:
                yaw = wrap_angle(yaw + math.pi)
            yield self._action(b, [step_to[0], step_to[1], z_push], yaw, max_step=0.012)
        ee, _ = b.ee_pose()
        yield from self._move(b, [ee[0], ee[1], 0.12], b.ee_target_yaw, tol=0.02, ticks=15, settle=0)
        _, _, dist = geometry()
        if dist >= tol:
            return self._fail("missed_target", f"{name} ended {dist:.3f} m from the push target")
        return SkillResult(True, None, f"{self.call}: {name} pushed to the target")

    # ---- rotate ------------------------------------------------------------------------
    def _rotate(self, b: Backend, name: str, degrees: float):
        rot = math.radians(float(degrees))
        if abs(rot) > math.pi:
            return self._fail("invalid_args", f"rotation {degrees} degrees is outside [-180, 180]")
        pos0, quat0 = b.object_pose(name)
        yaw0 = quat_yaw(quat0)
        res, gyaw = yield from self._grasp(b, name, yaw_offset=rot)
        if res is not None:
            return res
        target_gyaw = gyaw + rot
        if abs(target_gyaw) > YAW_LIMIT:
            return self._fail("unreachable", f"the wrist cannot turn to {math.degrees(target_gyaw):.0f} degrees")
        ee, _ = b.ee_pose()
        if not (yield from self._move(b, [pos0[0], pos0[1], ee[2]], target_gyaw, tol=0.01, ticks=40)):
            return self._fail("timeout", "could not turn the wrist")
        res = yield from self._place(b, name, (float(pos0[0]), float(pos0[1])), release=True)
        if res is not None and not res.success:
            return res
        _, quat = b.object_pose(name)
        err = abs(wrap_angle(quat_yaw(quat) - (yaw0 + rot)))
        o = b.spec.object(name)
        if o.shape == "box":
            err = min(err, abs(wrap_angle(quat_yaw(quat) - (yaw0 + rot) + math.pi)))
        if err > math.radians(12):
            return self._fail("missed_target", f"{name} turned {math.degrees(wrap_angle(quat_yaw(quat) - yaw0)):.0f} "
                              f"degrees instead of {degrees:g}")
        return SkillResult(True, None, f"{self.call}: {name} rotated")


def make_skill(call: SkillCall, backend: Backend, max_ticks: int = 400) -> ScriptedSkill:
    """A scripted controller for a call, after checking it against the loaded scene."""
    return ScriptedSkill(call, backend, max_ticks=max_ticks)
