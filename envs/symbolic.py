"""Extract the symbolic state from a backend, and render it as text for language models."""
from __future__ import annotations

import math

import numpy as np

from taskweave.envs.predicates import ObjectState, SymbolicState, ZoneState
from taskweave.sim.geometry import quat_up_z, quat_yaw
from taskweave.sim.backend import Backend


def _symmetry(o) -> float:
    if o.shape in ("cylinder", "sphere"):
        return 2 * math.pi
    sx, sy = o.footprint
    return math.pi / 2 if abs(sx - sy) < 1e-6 else math.pi


def _static_rows(spec) -> tuple:
    """Per-scene constants of extract_state: (name, shape, colour, category, half extents, symmetry) rows,
    the zones, and the free objects' (index, name, half height); cached on the spec object."""
    cached = getattr(spec, "_symbolic_static", None)
    if (cached is not None and cached[0] is spec.objects and cached[1] is spec.zones
            and cached[3] == (len(spec.objects), len(spec.zones))):
        return cached[2]
    rows = [(o.name, o.shape, o.color, o.category, (*o.footprint, o.half_height), _symmetry(o))
            for o in spec.objects]
    zones = {z.name: ZoneState(z.name, z.color, tuple(z.center), tuple(z.half_size)) for z in spec.zones}
    free = [(i, o.name, o.half_height) for i, o in enumerate(spec.objects) if not o.fixed]
    static = (rows, zones, free)
    try:
        object.__setattr__(spec, "_symbolic_static",
                           (spec.objects, spec.zones, static, (len(spec.objects), len(spec.zones))))
    except (AttributeError, TypeError):  # a spec type that takes no new attributes: no cache
        pass
    return static


def extract_state(backend: Backend) -> SymbolicState:
    """The symbolic state of the loaded scene: object poses, zones, held object and relations."""
    spec = backend.spec
    rows, zones, free = _static_rows(spec)
    poses = backend.object_poses()
    yaws = quat_yaw(poses[:, 3:]).tolist()
    upright = (quat_up_z(poses[:, 3:]) > 0.9).tolist()
    px, py, pz = poses[:, 0], poses[:, 1], poses[:, 2]
    visible = ((px > 0.0) & (px < 1.0) & (np.abs(py) < 0.6) & (pz > -0.05)).tolist()
    pos = poses[:, :3].copy()
    objects = {}
    for i, (name, shape, color, category, half, sym) in enumerate(rows):
        objects[name] = ObjectState(name=name, shape=shape, color=color, category=category, pos=pos[i],
                                    yaw=yaws[i], half_extents=half, upright=upright[i], symmetry=sym,
                                    visible=visible[i])
    held = ""
    # only a closing (force-limited) grip can hold anything
    if backend.gripper_target < 0.01 and backend.gripper_width() > 0.004:
        touching = backend.all_contacts()
        for i, name, half_height in free:
            c = touching.get(name, ())
            if "panda_leftfinger" in c and "panda_rightfinger" in c and pos[i, 2] - half_height > 0.01:
                held = name
                break
    return SymbolicState(objects=objects, zones=dict(zones), held=held)


def describe_object(o: ObjectState) -> str:
    """A short phrase naming an object's colour, shape and size."""
    kind = {"box": "block", "cylinder": "cylinder", "sphere": "ball", "container": "container"}[o.shape]
    if o.category not in ("block", "container"):
        kind = o.category
    return f"{o.color} {kind}, {200 * max(o.half_extents[:2]):.0f} cm wide"


def state_to_text(st: SymbolicState, instruction: str = "", rules=(), broken=()) -> str:
    """A plain-text observation: objects with positions, zones, relations and the gripper; then the task's
    rules (predicates that must hold at all times) and those broken this episode, when there are any."""
    lines = []
    if instruction:
        lines.append(f"Task: {instruction}")
    lines.append("Objects:")
    for o in st.objects.values():
        if not o.visible:
            continue
        lines.append(f"- {o.name}: {describe_object(o)} at ({o.pos[0]:.2f}, {o.pos[1]:.2f}, {o.pos[2]:.2f})"
                     + ("" if o.upright else ", tipped over"))
    if st.zones:
        lines.append("Zones:")
        for z in st.zones.values():
            lines.append(f"- {z.name}: {z.color} area centred at ({z.center[0]:.2f}, {z.center[1]:.2f})")
    facts = sorted(str(f) for f in st.facts if f.name != "on_table")
    lines.append("Relations: " + (", ".join(facts) if facts else "none"))
    lines.append("Gripper: " + (f"holding {st.held}" if st.held else "empty"))
    if rules:
        lines.append("Rules (must hold at all times): " + ", ".join(str(r) for r in rules))
    if broken:
        lines.append("Broken rules (the task has failed): " + ", ".join(str(r) for r in broken))
    return "\n".join(lines)
