"""A task as data: the JSON task spec, an implement-stage output that needs no model-written code.

GenSim's goals are data; here the whole task can be: objects (blocks, bowls), zones, an instruction and
goal predicates over their names, in one JSON object that a model can be constrained to write
(`TASK_SPEC_SCHEMA`, enforced by the backend's grammar where it has one) and that `parse_task_spec`
checks strictly. `render_task_module` turns a checked spec into a task module from a fixed template:
every value the model chose enters the source as a Python literal of a checked identifier, colour,
number or sentence, never as code. The module then goes through the same validation as written code
(static policy, sandboxed build, oracle on both engines), so a spec task and a code task are accepted
on the same evidence. Positions are not in the spec: the module samples them with the task API's
seeded `Layout`, so every seed gives a new scene.

    {"name": "RedOnBlue", "description": "stack the red block on the blue block",
     "instruction": "put the red block on the blue block",
     "objects": [{"name": "red_block", "kind": "block", "color": "red"},
                 {"name": "blue_block", "kind": "block", "color": "blue"}],
     "zones": [],
     "goals": [{"predicate": "on", "args": ["red_block", "blue_block"]}]}
"""
from __future__ import annotations

import json
import re

from taskweave.envs.task import TaskError
from taskweave.sim.spec import COLORS

NAME_PATTERN = r"^[A-Z][A-Za-z0-9]{2,40}$"
IDENT_PATTERN = r"^[a-z][a-z0-9_]{1,30}$"
KINDS = ("block", "bowl")
# predicates a spec may use, with their argument kinds: an object, or an object or zone (a target)
SPEC_PREDICATES = {"on": ("object", "object"), "inside": ("object", "target"), "on_table": ("object",),
                   "clear": ("object",)}
_COLOURS = sorted(c for c in COLORS if c not in ("white", "black"))
BLOCK_HALF = (0.015, 0.03)      # half sizes a spec block may have (the gripper opens 8 cm)
MAX_OBJECTS, MAX_ZONES, MAX_GOALS = 6, 2, 6

TASK_SPEC_SCHEMA = {
    "type": "object",
    "required": ["name", "description", "instruction", "objects", "zones", "goals"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "description": {"type": "string", "minLength": 8, "maxLength": 200},
        "instruction": {"type": "string", "minLength": 8, "maxLength": 160},
        "objects": {"type": "array", "minItems": 1, "maxItems": MAX_OBJECTS, "items": {
            "type": "object", "required": ["name", "kind", "color"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "pattern": IDENT_PATTERN},
                           "kind": {"type": "string", "enum": list(KINDS)},
                           "color": {"type": "string", "enum": _COLOURS}}}},
        "zones": {"type": "array", "maxItems": MAX_ZONES, "items": {
            "type": "object", "required": ["name", "color"], "additionalProperties": False,
            "properties": {"name": {"type": "string", "pattern": IDENT_PATTERN},
                           "color": {"type": "string", "enum": _COLOURS}}}},
        "goals": {"type": "array", "minItems": 1, "maxItems": MAX_GOALS, "items": {
            "type": "object", "required": ["predicate", "args"], "additionalProperties": False,
            "properties": {"predicate": {"type": "string", "enum": sorted(SPEC_PREDICATES)},
                           "args": {"type": "array", "minItems": 1, "maxItems": 2,
                                    "items": {"type": "string", "pattern": IDENT_PATTERN}}}}},
    },
}


class TaskSpecError(TaskError):
    """A task spec that breaks the format: the message names the field."""


def _text(d: dict, key: str, lo: int, hi: int) -> str:
    v = d.get(key)
    if type(v) is not str or not lo <= len(v.strip()) <= hi or "\n" in v:
        raise TaskSpecError(f"task spec field {key!r} must be one line of {lo}..{hi} characters")
    return v.strip()


def _items(d: dict, key: str, lo: int, hi: int) -> list:
    v = d.get(key, [] if lo == 0 else None)
    if type(v) is not list or not lo <= len(v) <= hi or any(type(x) is not dict for x in v):
        raise TaskSpecError(f"task spec field {key!r} must be a list of {lo}..{hi} objects")
    return v


def parse_task_spec(data) -> dict:
    """The spec checked field by field (JSON text or a dict), normalised; TaskSpecError names what is wrong."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise TaskSpecError(f"the task spec is not JSON: {e.msg} at character {e.pos}") from None
    if type(data) is not dict:
        raise TaskSpecError("the task spec must be a JSON object")
    extra = set(data) - set(TASK_SPEC_SCHEMA["properties"])
    if extra:
        raise TaskSpecError(f"unknown task spec field(s): {', '.join(sorted(extra))}")
    name = data.get("name")
    if type(name) is not str or not re.match(NAME_PATTERN, name):
        raise TaskSpecError(f"task spec field 'name' must be CamelCase letters and digits, got {name!r}")
    out = {"name": name, "description": _text(data, "description", 8, 200),
           "instruction": _text(data, "instruction", 8, 160), "objects": [], "zones": [], "goals": []}
    seen: dict = {}
    for i, o in enumerate(_items(data, "objects", 1, MAX_OBJECTS)):
        n, kind, colour = o.get("name"), o.get("kind"), o.get("color")
        where = f"objects[{i}]"
        if type(n) is not str or not re.match(IDENT_PATTERN, n):
            raise TaskSpecError(f"task spec {where}.name must be a lower-case identifier, got {n!r}")
        if kind not in KINDS:
            raise TaskSpecError(f"task spec {where}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if colour not in _COLOURS:
            raise TaskSpecError(f"task spec {where}.color {colour!r} is not a known colour ({', '.join(_COLOURS)})")
        size = o.get("size", 0.02)
        if type(size) not in (int, float) or not BLOCK_HALF[0] <= float(size) <= BLOCK_HALF[1]:
            raise TaskSpecError(f"task spec {where}.size must be a half size in {BLOCK_HALF[0]}..{BLOCK_HALF[1]} m")
        if n in seen:
            raise TaskSpecError(f"task spec {where}.name {n!r} is used twice")
        seen[n] = kind
        out["objects"].append({"name": n, "kind": kind, "color": colour, "size": float(size)})
    for i, z in enumerate(_items(data, "zones", 0, MAX_ZONES)):
        n, colour = z.get("name"), z.get("color")
        if type(n) is not str or not re.match(IDENT_PATTERN, n) or n in seen:
            raise TaskSpecError(f"task spec zones[{i}].name must be a new lower-case identifier, got {n!r}")
        if colour not in _COLOURS:
            raise TaskSpecError(f"task spec zones[{i}].color {colour!r} is not a known colour")
        seen[n] = "zone"
        out["zones"].append({"name": n, "color": colour})
    for i, g in enumerate(_items(data, "goals", 1, MAX_GOALS)):
        pred, args = g.get("predicate"), g.get("args")
        where = f"goals[{i}]"
        if pred not in SPEC_PREDICATES:
            raise TaskSpecError(f"task spec {where}.predicate must be one of {', '.join(sorted(SPEC_PREDICATES))}, "
                                f"got {pred!r}")
        kinds = SPEC_PREDICATES[pred]
        if type(args) is not list or len(args) != len(kinds):
            raise TaskSpecError(f"task spec {where}: {pred} takes {len(kinds)} argument(s), got {args!r}")
        for a, k in zip(args, kinds):
            if a not in seen:
                raise TaskSpecError(f"task spec {where}: {a!r} is not an object or zone of the spec")
            if k == "object" and seen[a] == "zone":
                raise TaskSpecError(f"task spec {where}: {pred} needs an object where {a!r} is a zone")
            if k == "target" and seen[a] == "block":
                raise TaskSpecError(f"task spec {where}: inside needs a bowl or a zone, {a!r} is a block")
        if pred in ("on", "inside") and args[0] == args[1]:
            raise TaskSpecError(f"task spec {where}: {pred} of {args[0]!r} on itself")
        if seen[args[0]] == "bowl" and pred in ("on", "inside"):
            raise TaskSpecError(f"task spec {where}: a bowl cannot be picked ({args[0]!r} is too wide to grasp)")
        out["goals"].append({"predicate": pred, "args": list(args)})
    return out


def render_task_module(spec: dict) -> str:
    """The task module of a checked spec (`parse_task_spec` output), from a fixed template."""
    spec = parse_task_spec(spec)
    lit = repr   # every value below is a checked identifier, colour, number or one-line sentence
    lines = ['"""Generated from a JSON task spec (implement stage, --implement spec)."""',
             "from __future__ import annotations", "",
             "from taskweave.envs.task import P, Layout, SceneSpec, Task, block, bowl, zone", "", "",
             f"class {spec['name']}(Task):",
             f"    name = {lit(spec['name'])}",
             f"    description = {lit(spec['description'])}", "",
             "    def build(self, rng):",
             "        lay = Layout(rng)",
             "        objects = []"]
    # bowls first: they need the most room
    for o in sorted(spec["objects"], key=lambda o: o["kind"] != "bowl"):
        if o["kind"] == "bowl":
            lines.append(f"        objects.append(bowl({lit(o['name'])}, {lit(o['color'])}, lay.spot(0.075), half=0.065))")
        else:
            lines.append(f"        objects.append(block({lit(o['name'])}, {lit(o['color'])}, lay.spot(), "
                         f"size={o['size']!r}, rng=rng))")
    lines.append("        zones = []")
    for z in spec["zones"]:
        lines.append(f"        zones.append(zone({lit(z['name'])}, {lit(z['color'])}, lay.spot(0.08), half=0.06))")
    lines.append(f"        self.instruction = {lit(spec['instruction'])}")
    goals = ", ".join(f"P({lit(g['predicate'])}, " + ", ".join(lit(a) for a in g["args"]) + ")" for g in spec["goals"])
    lines += [f"        self.goals = [{goals}]", "        return SceneSpec(objects=objects, zones=zones)", ""]
    return "\n".join(lines)


__all__ = ["TASK_SPEC_SCHEMA", "TaskSpecError", "parse_task_spec", "render_task_module", "SPEC_PREDICATES", "KINDS"]
