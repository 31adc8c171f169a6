"""Arrangement tasks: lines, swaps, pushing and rotating."""
from __future__ import annotations

import math

from taskweave.envs.task import P, Layout, SceneSpec, Task, block, free_spot, pick_colors, zone
from taskweave.sim.skill_types import SkillCall
from taskweave.sim.spec import ObjectSpec, ZoneSpec


class AlignInLine(Task):
    """Line three blocks up on the marked line, in colour order."""

    name = "AlignInLine"
    description = "place three blocks on the marked line, evenly spaced, in the stated colour order"
    long_horizon = True

    def build(self, rng):
        x = float(rng.uniform(0.42, 0.58))
        y0 = float(rng.uniform(-0.05, 0.05))
        lay = Layout(rng, y=(-0.24, 0.24))
        lay.reserve((x, y0), 0.13)
        line = ZoneSpec("line", (x, y0), (0.012, 0.12), "black")
        cs = pick_colors(rng, 3)
        objs = [block(f"{c}_block", c, lay.spot(), rng=rng) for c in cs]
        self.instruction = f"line up the {cs[0]}, {cs[1]} and {cs[2]} blocks on the black line, in that order from right to left"
        self.goals = [P("near", f"{c}_block", (x, y0 + dy), 0.025) for c, dy in zip(cs, (-0.08, 0.0, 0.08))]
        return SceneSpec(objects=objs, zones=[line])


class SwapBlocks(Task):
    """Swap the blocks in two zones, using the free table as a buffer."""

    name = "SwapBlocks"
    description = "swap the two blocks between their zones"
    long_horizon = True

    def build(self, rng):
        lay = Layout(rng)
        c1, c2 = pick_colors(rng, 2)
        z1, z2 = lay.spot(0.08), lay.spot(0.08)
        zs = [zone("left_zone", "gray", z1, half=0.055), zone("right_zone", "white", z2, half=0.055)]
        self.a, self.b = f"{c1}_block", f"{c2}_block"
        objs = [block(self.a, c1, z1, rng=rng), block(self.b, c2, z2, rng=rng)]
        self.instruction = f"swap the {c1} block and the {c2} block between the two zones"
        self.goals = [P("inside", self.a, "right_zone"), P("inside", self.b, "left_zone")]
        return SceneSpec(objects=objs, zones=zs)

    def oracle_plan(self, state):
        """Move one block aside first when both zones are still occupied."""
        a, b = self.a, self.b
        if not state.held and state.holds(P("inside", a, "left_zone")) and state.holds(P("inside", b, "right_zone")):
            spot = free_spot(state, clearance=0.1)
            return [SkillCall("pick", (a,)), SkillCall("place", (a, spot)), SkillCall("pick", (b,)),
                    SkillCall("place", (b, "left_zone")), SkillCall("pick", (a,)), SkillCall("place", (a, "right_zone"))]
        return super().oracle_plan(state)


class PushToZone(Task):
    """Push a block, without grasping it, into a target zone."""

    name = "PushToZone"
    description = "push the block along the table into the target zone"

    def build(self, rng):
        lay = Layout(rng, x=(0.4, 0.6), y=(-0.2, 0.2))
        c, cz = pick_colors(rng, 2)
        zc = lay.spot(0.07)
        b = lay.spot()
        while math.hypot(b[0] - zc[0], b[1] - zc[1]) < 0.14:
            lay.taken.pop()
            b = lay.spot()
        objs = [block(f"{c}_block", c, b, size=0.022, rng=rng)]
        self.instruction = f"push the {c} block into the {cz} zone"
        self.goals = [P("inside", f"{c}_block", f"{cz}_zone")]
        return SceneSpec(objects=objs, zones=[zone(f"{cz}_zone", cz, zc, half=0.06)])

    def achieve(self, goal, state):
        """Push instead of pick and place."""
        if goal.name == "inside" and not state.held:
            return [SkillCall("push", goal.args)]
        return super().achieve(goal, state)


class RotateBlock(Task):
    """Turn a long block to a stated angle."""

    name = "RotateBlock"
    description = "turn the bar so that it points in the stated direction"

    def build(self, rng):
        lay = Layout(rng)
        c = pick_colors(rng, 1)[0]
        yaw0 = float(rng.uniform(-60, 60))
        target = float(rng.choice([-45.0, 0.0, 45.0, 90.0]))
        while abs(((target - yaw0) + 90) % 180 - 90) < 25:
            target = float(rng.choice([-45.0, 0.0, 45.0, 90.0]))
        p = lay.spot(0.05)
        objs = [ObjectSpec(f"{c}_bar", "box", (0.045, 0.018, 0.02), c, pos=(p[0], p[1], 0.02),
                           yaw=math.radians(yaw0), category="bar")]
        d = pick_colors(rng, 1, exclude=[c])[0]
        objs.append(block(f"{d}_block", d, lay.spot(), rng=rng))
        self.instruction = f"turn the {c} bar so that it lies at {target:g} degrees"
        self.goals = [P("yaw", f"{c}_bar", target, 10.0)]
        return SceneSpec(objects=objs)
