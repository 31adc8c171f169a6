"""The Task API: a scene from a seeded RNG, an instruction, goals as predicates, an oracle plan."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from taskweave.sim.errors import UserError
from taskweave.envs.predicates import P, Predicate, SymbolicState, evaluate
from taskweave.sim.skill_types import SkillCall
from taskweave.sim.spec import COLORS, ObjectSpec, SceneSpec, ZoneSpec

BLOCK = 0.02           # half size of a standard block
TABLE_X = (0.36, 0.64)
TABLE_Y = (-0.24, 0.24)


class TaskError(UserError, ValueError):
    """A task that cannot build its scene."""


class Task:
    """Base class of every task, built-in or generated. Subclasses implement `build`."""

    name: str = "Task"
    description: str = ""
    long_horizon: bool = False

    def __init__(self) -> None:
        self.instruction: str = ""
        self.goals: list = []
        self.rules: list = []   # predicates that must hold at all times; a broken rule fails the episode
        self.spec: Optional[SceneSpec] = None

    # ---- to implement ------------------------------------------------------------------
    def build(self, rng: np.random.Generator) -> SceneSpec:
        """Make the scene for one episode and set self.instruction and self.goals (and self.rules, if any)."""
        raise NotImplementedError

    # ---- provided ----------------------------------------------------------------------
    def reset(self, seed: int) -> SceneSpec:
        """Build the scene for a seed and check that goals name real things."""
        rng = np.random.default_rng(seed)
        spec = self.build(rng)
        if not isinstance(spec, SceneSpec):
            raise TaskError(f"{self.name}.build must return a SceneSpec, got {type(spec).__name__}")
        spec.validate()
        if not self.instruction or not self.goals:
            raise TaskError(f"{self.name}.build must set an instruction and at least one goal")
        names = set(spec.object_names) | {z.name for z in spec.zones}
        for kind, preds in (("goal", self.goals), ("rule", self.rules)):
            for g in preds:
                self._check_predicate(kind, g, g, names)
        self.spec = spec
        return spec

    def _check_predicate(self, kind: str, whole, g, names: set) -> None:
        if not isinstance(g, Predicate):
            raise TaskError(f"{self.name}: {kind} {whole!r} is not a Predicate")
        if g.name == "not":
            if len(g.args) != 1 or not isinstance(g.args[0], Predicate):
                raise TaskError(f"{self.name}: {kind} {whole!r}: not(p) takes one Predicate")
            return self._check_predicate(kind, whole, g.args[0], names)
        for a in g.args:
            if isinstance(a, str) and a not in names:
                raise TaskError(f"{self.name}: {kind} {whole} names {a!r}, which is not in the scene")

    def progress(self, state: SymbolicState) -> float:
        """Fraction of goals satisfied, in [0, 1]."""
        return sum(evaluate(g, state) for g in self.goals) / len(self.goals)

    def success(self, state: SymbolicState) -> bool:
        """All goals hold and nothing is left in the gripper (a TaskEnv also fails an episode that broke a rule)."""
        return not state.held and all(evaluate(g, state) for g in self.goals)

    def broken_rules(self, state: SymbolicState) -> list:
        """The task's rules that do not hold in this state (the env checks them after every skill)."""
        return [r for r in self.rules if not evaluate(r, state)]

    def oracle_plan(self, state: SymbolicState) -> list:
        """Skill calls that achieve the unsatisfied goals from this state, in goal order."""
        pending = [g for g in self.goals if not evaluate(g, state)]
        self._reserved = []  # free spots promised to earlier steps of this plan
        plan = []
        if state.held:
            first = self.achieve(pending[0], state) if pending else []
            if first and first[0] == SkillCall("pick", (state.held,)):
                plan += first[1:]  # already in hand: go straight on with it
                pending = pending[1:]
            else:
                plan += self._release(state)
        for g in pending:
            plan += self.achieve(g, state)
        return self._uncovered(plan, state)

    def _uncovered(self, plan: list, state: SymbolicState) -> list:
        """The plan with blocks resting on an object moved to free spots (top first) before it is picked,
        rotated or pushed: the world refuses those skills on an object that is not clear (`not_clear`)."""
        under = {f.args[0]: f.args[1] for f in state.facts if f.name == "on"}
        out = []
        for call in plan:
            obj = call.args[0] if call.args else None
            if call.name in ("pick", "rotate", "push") and obj in state.objects:
                above, frontier = [], [obj]
                while frontier:   # everything resting on obj, directly or on what rests on it
                    frontier = [o for o, b in sorted(under.items()) if b in frontier and o not in above and o != obj]
                    above += frontier
                for o in reversed(above):   # the top-most first
                    out += [SkillCall("pick", (o,)), SkillCall("place", (o, self._spot(state, o)))]
                    under.pop(o, None)
            if call.name in ("pick", "push"):
                under.pop(obj, None)
            elif call.name == "place" and len(call.args) > 1:
                t = call.args[1]
                if isinstance(t, str) and t in state.objects and state.objects[t].shape != "container":
                    under[call.args[0]] = t
            out.append(call)
        return out

    def achieve(self, goal: Predicate, state: SymbolicState) -> list:
        """Skill calls for one goal (generic: pick then place; near/at by pose; yaw by rotate)."""
        name, args = goal
        a = args[0]
        if name in ("on", "inside"):
            return [SkillCall("pick", (a,)), SkillCall("place", (a, args[1]))]
        if name == "near":
            return [SkillCall("pick", (a,)), SkillCall("place", (a, tuple(float(v) for v in args[1][:2])))]
        if name == "at":
            o = state.objects[a]
            x, y, z = (float(v) for v in args[1])
            return [SkillCall("pick", (a,)), SkillCall("place", (a, (x, y, z - o.half_extents[2])))]
        if name == "yaw":
            o = state.objects[a]
            want = math.radians(args[1])
            d = (want - o.yaw) % o.symmetry
            if d > o.symmetry / 2:
                d -= o.symmetry
            return [SkillCall("rotate", (a, round(math.degrees(d), 1)))]
        if name == "on_table":
            return [SkillCall("pick", (a,)), SkillCall("place", (a, self._spot(state, a)))]
        if name == "holding":
            return [SkillCall("pick", (a,))]
        return []

    def _spot(self, state: SymbolicState, avoid: str) -> tuple:
        """A free table spot not promised to an earlier step of the plan being made."""
        reserved = getattr(self, "_reserved", [])
        spot = free_spot(state, avoid=avoid, reserved=reserved)
        reserved.append(spot)
        return spot

    def _release(self, state: SymbolicState) -> list:
        return [SkillCall("place", (state.held, self._spot(state, state.held)))]

    def info(self) -> dict:
        """Name, description and horizon for listings."""
        return {"name": self.name, "description": self.description, "long_horizon": self.long_horizon}


# ---- helpers for building scenes ---------------------------------------------------------
def free_spot(state: SymbolicState, avoid: str = "", clearance: float = 0.09, reserved=()) -> tuple:
    """A deterministic (x, y) on the table clear of every object, zone and reserved spot, near the centre."""
    others = [o.pos[:2] for o in state.objects.values() if o.name != avoid and o.visible]
    others += [np.asarray(r, dtype=float) for r in reserved]
    others += [np.array(z.center) for z in state.zones.values()]
    best, best_score = (0.5, 0.0), -np.inf
    for x in np.linspace(0.38, 0.62, 9):
        for y in np.linspace(-0.22, 0.22, 12):
            d = min((float(np.hypot(x - p[0], y - p[1])) for p in others), default=1.0)
            score = min(d, clearance * 1.4) - 0.15 * float(np.hypot(x - 0.5, y)) - (1.0 if d < clearance else 0.0)
            if score > best_score:
                best, best_score = (round(float(x), 3), round(float(y), 3)), score
    return best


class Layout:
    """Samples non-overlapping spots on the table from a seeded RNG."""

    def __init__(self, rng: np.random.Generator, x=TABLE_X, y=TABLE_Y) -> None:
        self.rng, self.x, self.y = rng, x, y
        self.taken: list = []

    def spot(self, radius: float = 0.03, tries: int = 500) -> tuple:
        """A free (x, y) whose disc of radius clears every earlier spot by 2 cm."""
        for _ in range(tries):
            p = (float(self.rng.uniform(*self.x)), float(self.rng.uniform(*self.y)))
            if all(math.hypot(p[0] - q[0], p[1] - q[1]) > radius + r + 0.02 for q, r in self.taken):
                self.taken.append((p, radius))
                return p
        raise TaskError("could not find room on the table for every object")

    def reserve(self, p, radius: float) -> None:
        """Mark a spot (a zone, say) as taken."""
        self.taken.append((tuple(p), radius))


def block(name: str, color: str, xy, size: float = BLOCK, rng=None, z: float = 0.0, **kw) -> ObjectSpec:
    """A cube of half size `size` resting at xy (random yaw when rng is given)."""
    yaw = float(rng.uniform(-math.pi / 4, math.pi / 4)) if rng is not None else 0.0
    return ObjectSpec(name, "box", (size, size, size), color, pos=(xy[0], xy[1], z + size), yaw=yaw, **kw)


def bowl(name: str, color: str, xy, half: float = 0.065, height: float = 0.045) -> ObjectSpec:
    """An open container heavy enough to stay put."""
    return ObjectSpec(name, "container", (half, half, height), color, mass=1.0, pos=(xy[0], xy[1], height / 2),
                      category="container")


def zone(name: str, color: str, xy, half: float = 0.06) -> ZoneSpec:
    """A square coloured zone on the table."""
    return ZoneSpec(name, (float(xy[0]), float(xy[1])), (half, half), color)


def pick_colors(rng: np.random.Generator, n: int, exclude=()) -> list:
    """n distinct colour names."""
    names = [c for c in COLORS if c not in ("white", "gray", "black", "brown") and c not in exclude]
    return [str(c) for c in rng.choice(names, size=n, replace=False)]


__all__ = ["Task", "TaskError", "P", "Predicate", "Layout", "block", "bowl", "zone", "pick_colors", "free_spot",
           "BLOCK", "SceneSpec", "ObjectSpec", "ZoneSpec"]
