"""Stacking tasks: towers, pyramids, unstacking and the tower of Hanoi."""
from __future__ import annotations

from typing import Optional

from taskweave.envs.task import BLOCK, P, Layout, SceneSpec, Task, block, free_spot, pick_colors, zone
from taskweave.sim.skill_types import SkillCall


class StackOnBlock(Task):
    """Put one block on top of another."""

    name = "StackOnBlock"
    description = "put the first named block on top of the second"

    def build(self, rng):
        lay = Layout(rng)
        a, b, d = pick_colors(rng, 3)
        objs = [block(f"{c}_block", c, lay.spot(), rng=rng) for c in (a, b, d)]
        self.instruction = f"put the {a} block on the {b} block"
        self.goals = [P("on", f"{a}_block", f"{b}_block")]
        return SceneSpec(objects=objs)


class StackTower(Task):
    """Stack three blocks in a given colour order."""

    name = "StackTower"
    description = "stack three blocks into a tower in the stated colour order, bottom first"
    long_horizon = True

    def build(self, rng):
        lay = Layout(rng)
        cs = pick_colors(rng, 3)
        objs = [block(f"{c}_block", c, lay.spot(), rng=rng) for c in cs]
        self.instruction = f"stack the blocks: {cs[0]} at the bottom, then {cs[1]}, then {cs[2]} on top"
        self.goals = [P("on", f"{cs[1]}_block", f"{cs[0]}_block"), P("on", f"{cs[2]}_block", f"{cs[1]}_block")]
        return SceneSpec(objects=objs)


class StackPyramid(Task):
    """Build a three-block pyramid on a marked zone: two side by side, one on top across both."""

    name = "StackPyramid"
    description = "build a pyramid in the zone: two base blocks side by side and one block on top of them"
    long_horizon = True

    def build(self, rng):
        lay = Layout(rng)
        c = (float(rng.uniform(0.44, 0.56)), float(rng.uniform(-0.12, 0.12)))
        lay.reserve(c, 0.09)
        zs = [zone("pyramid_zone", "gray", c, half=0.07)]
        cs = pick_colors(rng, 3)
        objs = [block(f"{k}_block", k, lay.spot(), rng=rng) for k in cs]
        gap = 2 * BLOCK + 0.006
        left, right = (c[0], c[1] - gap / 2), (c[0], c[1] + gap / 2)
        self.instruction = (f"build a pyramid in the gray zone: the {cs[0]} and {cs[1]} blocks side by side, "
                            f"the {cs[2]} block on top")
        tol = 0.03  # the place skill's own tolerance for pose targets
        self.goals = [P("at", f"{cs[0]}_block", (*left, BLOCK), tol), P("at", f"{cs[1]}_block", (*right, BLOCK), tol),
                      P("at", f"{cs[2]}_block", (c[0], c[1], 3 * BLOCK + 0.002), tol)]
        return SceneSpec(objects=objs, zones=zs)


class Unstack(Task):
    """Take a three-block tower apart so every block rests on the table."""

    name = "Unstack"
    description = "unstack the tower so that every block rests on the table"
    long_horizon = True

    def build(self, rng):
        lay = Layout(rng)
        c = lay.spot(0.05)
        cs = pick_colors(rng, 3)
        objs = [block(f"{k}_block", k, c, z=2 * BLOCK * i) for i, k in enumerate(cs)]
        d = pick_colors(rng, 1, exclude=cs)[0]
        objs.append(block(f"{d}_cube", d, lay.spot(), rng=rng))
        self.instruction = "unstack the tower and put every block on the table"
        self.goals = [P("on_table", f"{k}_block") for k in reversed(cs)]
        return SceneSpec(objects=objs)


class TowerOfHanoi(Task):
    """Move a three-block tower from the left zone to the right zone, never a bigger block on a smaller."""

    name = "TowerOfHanoi"
    description = "move the tower of three blocks of decreasing size from zone a to zone c, one block at a time, never a larger block on a smaller one"
    long_horizon = True
    SIZES = (0.026, 0.022, 0.018)

    def build(self, rng):
        y = float(rng.uniform(-0.02, 0.02))
        x = float(rng.uniform(0.45, 0.55))
        zs = [zone(f"zone_{k}", "gray", (x, y + dy), half=0.05) for k, dy in zip("abc", (-0.17, 0.0, 0.17))]
        cs = pick_colors(rng, 3)
        self.names = [f"{c}_block" for c in cs]  # big, medium, small
        objs, z = [], 0.0
        for n, c, s in zip(self.names, cs, self.SIZES):
            objs.append(block(n, c, zs[0].center, size=s, z=z))
            z += 2 * s
        self.instruction = (f"move the tower from zone_a to zone_c one block at a time, never putting a bigger "
                            f"block on a smaller one ({cs[0]} is the biggest, {cs[2]} the smallest)")
        big, mid, small = self.names
        self.goals = [P("inside", big, "zone_c"), P("on", mid, big), P("on", small, mid)]
        # the stated rule, as data: never a larger block on a smaller one (checked after every skill)
        self.rules = [P("not", P("on", a, b)) for i, a in enumerate(self.names) for b in self.names[i + 1:]]
        return SceneSpec(objects=objs, zones=zs)

    def oracle_plan(self, state):
        """A shortest legal sequence of one-block moves onto the pegs (zones) from the current state: the
        classic seven moves from the intact tower; blocks off the pegs (dropped, knocked) are moved back on.
        Generic goals when the state is not a legal Hanoi position."""
        pegs = hanoi_pegs(state, self.names, ("zone_a", "zone_b", "zone_c"))
        if pegs is None:
            return super().oracle_plan(state)
        moves = hanoi_moves(pegs, self.names, "zone_c", first=state.held)
        if moves is None:
            return super().oracle_plan(state)
        self._reserved = []
        plan = []
        if state.held and (not moves or moves[0][0] != state.held):
            plan += self._release(state)   # set the held block down off the pegs first
        for i, (o, t) in enumerate(moves):
            if not (i == 0 and o == state.held and not plan):
                plan.append(SkillCall("pick", (o,)))
            plan.append(SkillCall("place", (o, t)))
        return plan


def hanoi_pegs(state, names, zones) -> Optional[dict]:
    """Stacks (bottom first) of the Hanoi blocks: {zone: [...], None: [[...], ...] off the pegs}, or None when
    a stack is illegal or ambiguous. Blocks are ordered big first in names; the held block is off the pegs."""
    size = {n: i for i, n in enumerate(names)}            # lower index = bigger
    under = {}
    for f in state.facts:
        if f.name == "on" and f.args[0] in size and f.args[1] in size:
            if f.args[0] in under:
                return None
            under[f.args[0]] = f.args[1]
    above = {}
    for a, b in under.items():
        if b in above:
            return None
        above[b] = a
    pegs = {z: [] for z in zones}
    pegs[None] = []
    for n in names:
        if n in under:
            continue
        stack = [n]
        while stack[-1] in above and len(stack) <= len(names):
            stack.append(above[stack[-1]])
        if len(stack) > len(names) or any(size[a] < size[b] for b, a in zip(stack, stack[1:])):
            return None   # a cycle, or a larger block on a smaller one (a broken rule)
        home = [z for z in zones if n != state.held and state.holds(P("inside", n, z))]
        if home and not pegs[home[0]]:
            pegs[home[0]] = stack
        else:
            pegs[None].append(stack)
    return pegs


def hanoi_moves(pegs: dict, names, goal: str, first: str = "") -> Optional[list]:
    """Shortest legal (block, target) moves (breadth-first) until every block is on goal, big first; a target
    is a zone when that peg is empty, else the block on top of it. Stacks off the pegs are only taken from.
    first: the block the first move must take (the one in the gripper, which nothing else can be picked past)."""
    size = {n: i for i, n in enumerate(names)}
    zones = [z for z in pegs if z is not None]
    start = (tuple(tuple(pegs[z]) for z in zones), tuple(sorted(tuple(s) for s in pegs[None] if s)))
    want = tuple(tuple(names) if z == goal else () for z in zones)
    prev = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            on_pegs, off = node
            if on_pegs == want and not off:
                path = []
                while prev[node] is not None:
                    node, move = prev[node]
                    path.append(move)
                return path[::-1]
            sources = [("peg", i) for i, s in enumerate(on_pegs) if s] + [("off", j) for j in range(len(off))]
            for kind, i in sources:
                block = on_pegs[i][-1] if kind == "peg" else off[i][-1]
                if first and node == start and block != first:
                    continue
                for k, dest in enumerate(on_pegs):
                    if (kind == "peg" and k == i) or (dest and size[dest[-1]] > size[block]):
                        continue
                    p2 = [list(s) for s in on_pegs]
                    o2 = [list(s) for s in off]
                    (p2[i] if kind == "peg" else o2[i]).pop()
                    p2[k].append(block)
                    child = (tuple(tuple(s) for s in p2), tuple(sorted(tuple(s) for s in o2 if s)))
                    if child not in prev:
                        prev[child] = (node, (block, dest[-1] if dest else zones[k]))
                        nxt.append(child)
        frontier = nxt
    return None


__all__ = ["StackOnBlock", "StackTower", "StackPyramid", "Unstack", "TowerOfHanoi", "free_spot", "hanoi_pegs",
           "hanoi_moves"]
