"""Extract the symbolic state from a backend, and render it as text for language models."""
from __future__ import annotations

import math


from taskweave.envs.predicates import ObjectState, SymbolicState, ZoneState
from taskweave.sim._geometry import quat_up_z, quat_yaw
from taskweave.sim.backend import Backend


def _symmetry(o) -> float:
    if o.shape in ("cylinder", "sphere"):
        return 2 * math.pi
    sx, sy = o.footprint
    return math.pi / 2 if abs(sx - sy) < 1e-6 else math.pi


def extract_state(backend: Backend) -> SymbolicState:
    """The symbolic state of the loaded scene: object poses, zones, held object and relations."""
    spec = backend.spec
    poses = backend.object_poses()
    objects = {}
    for o, pose in zip(spec.objects, poses):
        sx, sy = o.footprint
        objects[o.name] = ObjectState(
            name=o.name, shape=o.shape, color=o.color, category=o.category, pos=pose[:3].copy(),
            yaw=quat_yaw(pose[3:]), half_extents=(sx, sy, o.half_height),
            upright=quat_up_z(pose[3:]) > 0.9, symmetry=_symmetry(o),
            visible=bool(0.0 < pose[0] < 1.0 and abs(pose[1]) < 0.6 and pose[2] > -0.05))
    zones = {z.name: ZoneState(z.name, z.color, tuple(z.center), tuple(z.half_size)) for z in spec.zones}
    held = ""
    # only a closing (force-limited) grip can hold anything
    if backend.gripper_target < 0.01 and backend.gripper_width() > 0.004:
        touching = backend.all_contacts()
        for o in spec.objects:
            c = touching.get(o.name, ())
            if (not o.fixed and "panda_leftfinger" in c and "panda_rightfinger" in c
                    and objects[o.name].pos[2] - o.half_height > 0.01):
                held = o.name
                break
    return SymbolicState(objects=objects, zones=zones, held=held)


def describe_object(o: ObjectState) -> str:
    """A short phrase naming an object's colour, shape and size."""
    kind = {"box": "block", "cylinder": "cylinder", "sphere": "ball", "container": "container"}[o.shape]
    if o.category not in ("block", "container"):
        kind = o.category
    return f"{o.color} {kind}, {200 * max(o.half_extents[:2]):.0f} cm wide"


def state_to_text(st: SymbolicState, instruction: str = "") -> str:
    """A plain-text observation: objects with positions, zones, relations and the gripper."""
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
    return "\n".join(lines)
