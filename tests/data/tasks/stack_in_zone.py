"""Stack in zone: a hand-written task that is not built in (reference for generated tasks)."""
from __future__ import annotations

from taskweave.envs.task import P, Layout, SceneSpec, Task, block, pick_colors, zone


class StackInZone(Task):
    """Put a base block in a zone, then stack a second block on it; one distractor block."""

    name = "StackInZone"
    description = "move the base block into the coloured zone and stack the other named block on top of it"

    def build(self, rng):
        lay = Layout(rng)
        cz, cb, ct, cd = pick_colors(rng, 4)
        zones = [zone(f"{cz}_zone", cz, lay.spot(0.075), half=0.065)]
        objs = [block(f"{c}_block", c, lay.spot(), rng=rng) for c in (cb, ct, cd)]
        self.instruction = f"put the {cb} block in the {cz} zone and stack the {ct} block on it"
        self.goals = [P("inside", f"{cb}_block", f"{cz}_zone"), P("on", f"{ct}_block", f"{cb}_block")]
        return SceneSpec(objects=objs, zones=zones)
