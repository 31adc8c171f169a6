"""Stacking tasks: towers, pyramids, unstacking and the tower of Hanoi."""
from __future__ import annotations

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
        return SceneSpec(objects=objs, zones=zs)

    def oracle_plan(self, state):
        """The classic seven-move solution when the tower is intact; generic goals otherwise."""
        big, mid, small = self.names
        if not state.held and all(state.holds(p) for p in (P("inside", big, "zone_a"), P("on", mid, big),
                                                           P("on", small, mid))):
            moves = [(small, "zone_c"), (mid, "zone_b"), (small, mid), (big, "zone_c"), (small, "zone_a"),
                     (mid, big), (small, mid)]
            return [c for o, t in moves for c in (SkillCall("pick", (o,)), SkillCall("place", (o, t)))]
        return super().oracle_plan(state)


__all__ = ["StackOnBlock", "StackTower", "StackPyramid", "Unstack", "TowerOfHanoi", "free_spot"]
