"""Goal predicates as data, and the symbolic state they are evaluated on."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np

PREDICATES = {
    "on": "on(a, b): a rests on top of object b",
    "inside": "inside(a, c): a is inside container or zone c",
    "holding": "holding(a): the gripper holds a",
    "clear": "clear(a): nothing rests on a and it is not held",
    "on_table": "on_table(a): a rests directly on the table",
    "near": "near(a, (x, y), tol): a's centre is within tol metres of (x, y) in the plane",
    "at": "at(a, (x, y, z), tol): a's centre is within tol metres of (x, y, z)",
    "yaw": "yaw(a, degrees, tol): a is turned to degrees about z, within tol degrees (modulo its symmetry)",
    "not": "not(p): the predicate p does not hold (for a task's rules, e.g. not(on(big, small)))",
}


class Predicate(NamedTuple):
    """A goal or fact: a predicate name and its arguments."""

    name: str
    args: tuple

    def __str__(self) -> str:
        if self.name == "not":
            return f"not {self.args[0]}"

        def fmt(a):
            if isinstance(a, (tuple, list)):
                return "(" + ", ".join(f"{v:.2f}" for v in a) + ")"
            return f"{a:g}" if isinstance(a, float) else str(a)
        return f"{self.name}({', '.join(fmt(a) for a in self.args)})"


def P(name: str, *args) -> Predicate:
    """Shorthand constructor that checks the predicate name (`P("not", P("on", a, b))` negates one)."""
    if name not in PREDICATES:
        raise ValueError(f"unknown predicate {name!r} (known: {', '.join(PREDICATES)})")
    if name == "not" and (len(args) != 1 or not isinstance(args[0], Predicate)):
        raise ValueError("not(p) takes one Predicate")
    return Predicate(name, tuple(tuple(a) if isinstance(a, list) else a for a in args))


@dataclass
class ObjectState:
    """What the symbolic layer knows of one object."""

    name: str
    shape: str
    color: str
    category: str
    pos: np.ndarray
    yaw: float
    half_extents: tuple   # (x, y, z) half sizes of the bounding box (yaw ignored)
    upright: bool = True
    symmetry: float = math.pi / 2
    visible: bool = True


@dataclass
class ZoneState:
    """A zone's name, colour and rectangle."""

    name: str
    color: str
    center: tuple
    half_size: tuple


@dataclass
class SymbolicState:
    """Objects, zones, the held object and the relations between them."""

    objects: dict
    zones: dict
    held: str = ""
    _facts: Optional[set] = field(default=None, repr=False)

    @property
    def facts(self) -> set:
        """All relations that hold (computed once, on first use)."""
        if self._facts is None:
            self._facts = relations(self)
        return self._facts

    def holds(self, pred: Predicate) -> bool:
        """Whether a predicate is true in this state."""
        return evaluate(pred, self)


def _rests_on(a: ObjectState, b: ObjectState) -> bool:
    if b.shape == "container":
        return False
    bottom = a.pos[2] - a.half_extents[2]
    top = b.pos[2] + b.half_extents[2]
    if abs(bottom - top) > 0.015:
        return False
    dx, dy = a.pos[0] - b.pos[0], a.pos[1] - b.pos[1]
    c, s = math.cos(-b.yaw), math.sin(-b.yaw)
    lx, ly = c * dx - s * dy, s * dx + c * dy
    return abs(lx) <= b.half_extents[0] + 0.004 and abs(ly) <= b.half_extents[1] + 0.004


def _inside(a: ObjectState, c, state: SymbolicState) -> bool:
    if isinstance(c, ZoneState):
        return abs(a.pos[0] - c.center[0]) <= c.half_size[0] and abs(a.pos[1] - c.center[1]) <= c.half_size[1]
    if c.shape != "container":
        return False
    hx, hy, hz = c.half_extents
    inner = 0.012
    return (abs(a.pos[0] - c.pos[0]) <= hx - inner and abs(a.pos[1] - c.pos[1]) <= hy - inner
            and a.pos[2] < c.pos[2] + hz + a.half_extents[2])


def evaluate(pred: Predicate, st: SymbolicState) -> bool:
    """Truth of a predicate in a symbolic state; unknown names raise KeyError naming them."""
    name, args = pred
    if name == "not":
        return not evaluate(args[0], st)
    if name == "holding":
        return st.held == args[0]
    a = st.objects[args[0]]
    if name != "clear" and st.held == a.name:
        return False
    if name == "on":
        return _rests_on(a, st.objects[args[1]])
    if name == "inside":
        target = st.zones[args[1]] if args[1] in st.zones else st.objects[args[1]]
        return _inside(a, target, st)
    if name == "clear":
        return st.held != a.name and not any(_rests_on(o, a) for o in st.objects.values() if o.name != a.name)
    if name == "on_table":
        return a.pos[2] - a.half_extents[2] < 0.008 and a.upright
    if name == "near":
        tol = args[2] if len(args) > 2 else 0.03
        return math.hypot(a.pos[0] - args[1][0], a.pos[1] - args[1][1]) <= tol
    if name == "at":
        tol = args[2] if len(args) > 2 else 0.02
        return float(np.linalg.norm(a.pos - np.asarray(args[1], dtype=float))) <= tol
    if name == "yaw":
        tol = math.radians(args[2] if len(args) > 2 else 10.0)
        d = (a.yaw - math.radians(args[1])) % a.symmetry
        return min(d, a.symmetry - d) <= tol
    raise KeyError(f"unknown predicate {name!r}")


def relations(st: SymbolicState) -> set:
    """All on/inside/holding/clear/on_table facts that hold."""
    facts = set()
    if st.held:
        facts.add(Predicate("holding", (st.held,)))
    objs = list(st.objects.values())
    for a in objs:
        if a.name == st.held:
            continue
        for b in objs:
            if b is not a and _rests_on(a, b):
                facts.add(Predicate("on", (a.name, b.name)))
            if b is not a and b.shape == "container" and _inside(a, b, st):
                facts.add(Predicate("inside", (a.name, b.name)))
        for z in st.zones.values():
            if _inside(a, z, st):
                facts.add(Predicate("inside", (a.name, z.name)))
        if a.pos[2] - a.half_extents[2] < 0.008:
            facts.add(Predicate("on_table", (a.name,)))
    for a in objs:
        if a.category != "container" and evaluate(Predicate("clear", (a.name,)), st):
            facts.add(Predicate("clear", (a.name,)))
    return facts
