"""Declarative tabletop scene description shared by every physics backend."""
from __future__ import annotations

from dataclasses import dataclass, field, asdict
from typing import Optional

import numpy as np

from taskweave.sim.errors import UserError

COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.15, 0.15, 1.0),
    "green": (0.15, 0.7, 0.2, 1.0),
    "blue": (0.15, 0.3, 0.85, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "orange": (0.95, 0.5, 0.1, 1.0),
    "purple": (0.55, 0.2, 0.75, 1.0),
    "cyan": (0.1, 0.8, 0.85, 1.0),
    "pink": (0.95, 0.5, 0.7, 1.0),
    "white": (0.95, 0.95, 0.95, 1.0),
    "gray": (0.5, 0.5, 0.5, 1.0),
    "brown": (0.55, 0.35, 0.15, 1.0),
    "black": (0.1, 0.1, 0.1, 1.0),
}

SHAPES = ("box", "cylinder", "sphere", "container")

# Workspace reachable by the top-down Panda (metres, world frame; table top is z = 0).
WORKSPACE_LOW = np.array([0.25, -0.38, 0.0])
WORKSPACE_HIGH = np.array([0.75, 0.38, 0.45])


class SpecError(UserError, ValueError):
    """A scene spec that cannot be built."""


@dataclass
class ObjectSpec:
    """One rigid object: a primitive shape or an open-top container made of boxes.

    size: box -> half extents (x, y, z); cylinder -> (radius, half_height);
    sphere -> (radius,); container -> (half_x, half_y, wall_height).
    """

    name: str
    shape: str = "box"
    size: tuple = (0.02, 0.02, 0.02)
    color: str = "red"
    mass: float = 0.1
    friction: float = 1.0
    pos: tuple = (0.5, 0.0, 0.02)
    yaw: float = 0.0
    fixed: bool = False
    category: str = "block"

    def validate(self) -> None:
        """Raise SpecError when a field is out of range."""
        if not self.name or not self.name.replace("_", "").isalnum():
            raise SpecError(f"object name {self.name!r} must be a non-empty identifier")
        if self.shape not in SHAPES:
            raise SpecError(f"object {self.name!r}: unknown shape {self.shape!r} (known: {', '.join(SHAPES)})")
        need = {"box": 3, "cylinder": 2, "sphere": 1, "container": 3}[self.shape]
        if len(self.size) != need or any(float(s) <= 0 for s in self.size):
            raise SpecError(f"object {self.name!r}: shape {self.shape} needs {need} positive sizes, got {self.size}")
        if self.color not in COLORS:
            raise SpecError(f"object {self.name!r}: unknown colour {self.color!r}")
        if self.mass <= 0 or self.friction <= 0:
            raise SpecError(f"object {self.name!r}: mass and friction must be positive")

    @property
    def rgba(self) -> tuple:
        """Colour as RGBA in [0, 1]."""
        return COLORS[self.color]

    @property
    def half_height(self) -> float:
        """Half the object's vertical extent."""
        if self.shape == "box":
            return float(self.size[2])
        if self.shape == "cylinder":
            return float(self.size[1])
        if self.shape == "sphere":
            return float(self.size[0])
        return float(self.size[2]) / 2.0

    @property
    def footprint(self) -> tuple:
        """Half extents in x and y of the object's footprint (yaw ignored)."""
        if self.shape in ("box", "container"):
            return float(self.size[0]), float(self.size[1])
        return float(self.size[0]), float(self.size[0])


@dataclass
class ZoneSpec:
    """A flat, collision-free coloured region on the table."""

    name: str
    center: tuple = (0.5, 0.0)
    half_size: tuple = (0.06, 0.06)
    color: str = "gray"


@dataclass
class CameraSpec:
    """A pinhole camera looking from pos at target."""

    name: str
    pos: tuple = (1.1, 0.0, 0.6)
    target: tuple = (0.5, 0.0, 0.05)
    fovy: float = 45.0


DEFAULT_CAMERAS = (
    CameraSpec("front", pos=(1.15, 0.0, 0.55), target=(0.5, 0.0, 0.05), fovy=45.0),
    CameraSpec("top", pos=(0.5, 0.0, 1.1), target=(0.5, 0.0001, 0.0), fovy=45.0),
)


@dataclass
class SceneSpec:
    """Everything a backend needs to build a tabletop scene."""

    objects: list = field(default_factory=list)
    zones: list = field(default_factory=list)
    cameras: tuple = DEFAULT_CAMERAS
    timestep: float = 0.002
    robot_home: Optional[tuple] = None

    def validate(self) -> None:
        """Raise SpecError on duplicate names or bad objects."""
        names = set()
        for item in list(self.objects) + list(self.zones):
            if item.name in names:
                raise SpecError(f"duplicate name {item.name!r} in scene")
            names.add(item.name)
        for o in self.objects:
            o.validate()
        for z in self.zones:
            if z.color not in COLORS:
                raise SpecError(f"zone {z.name!r}: unknown colour {z.color!r}")

    def object(self, name: str) -> ObjectSpec:
        """The object called name, or KeyError naming it."""
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"no object named {name!r} in scene (objects: {', '.join(self.object_names)})")

    def zone(self, name: str) -> ZoneSpec:
        """The zone called name, or KeyError naming it."""
        for z in self.zones:
            if z.name == name:
                return z
        raise KeyError(f"no zone named {name!r} in scene (zones: {', '.join(z.name for z in self.zones)})")

    @property
    def object_names(self) -> list:
        """Names of all objects in spec order."""
        return [o.name for o in self.objects]

    def to_dict(self) -> dict:
        """A JSON-serialisable copy."""
        return asdict(self)
