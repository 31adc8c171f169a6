"""Stack blocks by size."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional

import numpy as np

from taskweave.envs.predicates import P
from taskweave.envs.task import Layout, Task, TaskError, block, pick_colors
from taskweave.sim.spec import ObjectSpec, SceneSpec, ZoneSpec

SIZES = (0.025, 0.02, 0.015)


@dataclass
class Slot:
    color: str
    size: float
    tags: List[str] = field(default_factory=list)


class Pair(NamedTuple):
    a: str
    b: str


class StackBySize(Task):
    """Big at the bottom."""

    name = "StackBySize"
    description = "stack the blocks from largest to smallest"

    def __init__(self):
        super().__init__()
        self.slots: Optional[list] = None

    def build(self, rng):
        lay = Layout(rng)
        colors = pick_colors(rng, len(SIZES))
        self.slots = sorted((Slot(c, s) for c, s in zip(colors, SIZES)), key=lambda sl: -sl.size)
        objs = [block(f"{sl.color}_block", sl.color, lay.spot(), size=sl.size, rng=rng) for sl in self.slots]
        pairs = [Pair(self.slots[i + 1].color, self.slots[i].color) for i in range(len(self.slots) - 1)]
        if not pairs:
            raise TaskError("nothing to stack")
        self.instruction = "stack the blocks, largest at the bottom"
        self.goals = [P("on", f"{p.a}_block", f"{p.b}_block") for p in pairs]
        angle = float(np.clip(math.atan2(1.0, 2.0), 0, math.pi))
        z = ZoneSpec("target_zone", (0.5, 0.1 * math.cos(angle)), (0.05, 0.05), "gray")
        print(repr(self.slots[0]), str(pairs[0]), "{:.2f}".format(angle))
        return SceneSpec(objects=objs, zones=[z])
