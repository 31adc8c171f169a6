"""Crate in zone: looks fine, builds fine, but the crate is wider than the open gripper (8 cm)."""
from __future__ import annotations

from taskweave.envs.task import P, Layout, SceneSpec, Task, block, pick_colors, zone

CRATE_HALF = 0.045          # 9 cm across on every side: the fingers cannot close around it


class CrateInZone(Task):
    """Move a crate into a zone."""

    name = "CrateInZone"
    description = "move the crate into the coloured zone next to the small block"

    def build(self, rng):
        lay = Layout(rng)
        cz, cc, cb = pick_colors(rng, 3)
        zones = [zone(f"{cz}_zone", cz, lay.spot(0.08), half=0.07)]
        objs = [block(f"{cc}_crate", cc, lay.spot(0.07), size=CRATE_HALF, rng=rng),
                block(f"{cb}_block", cb, lay.spot(), rng=rng)]
        self.instruction = f"move the {cc} crate into the {cz} zone"
        self.goals = [P("inside", f"{cc}_crate", f"{cz}_zone")]
        return SceneSpec(objects=objs, zones=zones)
