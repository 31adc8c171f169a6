"""Pick-and-place tasks: blocks into bowls, zones and trays."""
from __future__ import annotations

from taskweave.envs.task import P, Layout, SceneSpec, Task, block, bowl, pick_colors, zone
from taskweave.sim.spec import ObjectSpec


class BlockInBowl(Task):
    """Put one coloured block into one coloured bowl, with distractors."""

    name = "BlockInBowl"
    description = "put the named block in the named bowl; a distractor block and bowl are on the table"

    def build(self, rng):
        lay = Layout(rng)
        cb, cd, cw, cw2 = pick_colors(rng, 4)
        objs = [bowl(f"{cw}_bowl", cw, lay.spot(0.09)), bowl(f"{cw2}_bowl", cw2, lay.spot(0.09)),
                block(f"{cb}_block", cb, lay.spot(), rng=rng), block(f"{cd}_block", cd, lay.spot(), rng=rng)]
        self.instruction = f"put the {cb} block in the {cw} bowl"
        self.goals = [P("inside", f"{cb}_block", f"{cw}_bowl")]
        return SceneSpec(objects=objs)


class PlaceInZone(Task):
    """Put a block into a coloured zone on the table."""

    name = "PlaceInZone"
    description = "put the named block inside the named coloured zone"

    def build(self, rng):
        lay = Layout(rng)
        cz, cz2, cb, cd = pick_colors(rng, 4)
        zs = [zone(f"{cz}_zone", cz, lay.spot(0.07)), zone(f"{cz2}_zone", cz2, lay.spot(0.07))]
        objs = [block(f"{cb}_block", cb, lay.spot(), rng=rng), block(f"{cd}_block", cd, lay.spot(), rng=rng)]
        self.instruction = f"put the {cb} block in the {cz} zone"
        self.goals = [P("inside", f"{cb}_block", f"{cz}_zone")]
        return SceneSpec(objects=objs, zones=zs)


class AllColorBlocksInBowl(Task):
    """Put every block of one colour in a bowl; other colours stay out."""

    name = "AllColorBlocksInBowl"
    description = "put every block of the named colour in the bowl, leaving the other blocks where they are"
    long_horizon = True

    def build(self, rng):
        lay = Layout(rng)
        c, d, cw = pick_colors(rng, 3)
        n = int(rng.integers(2, 4))
        objs = [bowl(f"{cw}_bowl", cw, lay.spot(0.09), half=0.07)]
        objs += [block(f"{c}_block_{i + 1}", c, lay.spot(), rng=rng) for i in range(n)]
        objs += [block(f"{d}_block_{i + 1}", d, lay.spot(), rng=rng) for i in range(2)]
        self.instruction = f"put every {c} block in the {cw} bowl"
        self.goals = [P("inside", f"{c}_block_{i + 1}", f"{cw}_bowl") for i in range(n)]
        return SceneSpec(objects=objs)


class PackTray(Task):
    """Pack every small block into a tray."""

    name = "PackTray"
    description = "pack all the blocks into the tray"
    long_horizon = True

    def build(self, rng):
        lay = Layout(rng)
        tray = ObjectSpec("tray", "container", (0.09, 0.07, 0.035), "brown", mass=0.8, category="container",
                          pos=(*lay.spot(0.11), 0.0175))
        colors = pick_colors(rng, 3)
        objs = [tray] + [block(f"{c}_block", c, lay.spot(0.025), size=0.017, rng=rng) for c in colors]
        self.instruction = "pack all the blocks into the tray"
        self.goals = [P("inside", f"{c}_block", "tray") for c in colors]
        return SceneSpec(objects=objs)


class SortByColour(Task):
    """Sort blocks into the zones of their colour."""

    name = "SortByColour"
    description = "move each block into the zone of the same colour"
    long_horizon = True

    def build(self, rng):
        lay = Layout(rng)
        c1, c2 = pick_colors(rng, 2)
        zs = [zone(f"{c1}_zone", c1, lay.spot(0.075), half=0.065), zone(f"{c2}_zone", c2, lay.spot(0.075), half=0.065)]
        objs = [block(f"{c}_block_{i + 1}", c, lay.spot(), rng=rng) for c in (c1, c2) for i in range(2)]
        self.instruction = "sort the blocks: put each block in the zone of its colour"
        self.goals = [P("inside", f"{c}_block_{i + 1}", f"{c}_zone") for c in (c1, c2) for i in range(2)]
        return SceneSpec(objects=objs, zones=zs)
