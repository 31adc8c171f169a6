"""Skill calls, results and the skill catalogue: the vocabulary planners and policies share."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Optional, Union

from taskweave.sim.errors import UserError

Arg = Union[str, float, tuple]

FAILURES = (   # exactly the failure names the code produces (tests/test_architecture.py checks it)
    "invalid_args",    # unknown skill/object/zone, wrong argument types, or text that is not a skill call
    "unreachable",     # target outside the arm's workspace
    "not_holding",     # place/rotate without the object in hand
    "hand_full",       # pick/rotate while the gripper already holds an object (refused before any tick)
    "not_clear",       # pick/rotate/push of an object with another resting on it (refused before any tick)
    "grasp_failed",    # fingers closed on nothing
    "grasp_slipped",   # object lost while moving
    "collision",       # arm blocked (tracking error stayed large)
    "timeout",         # a phase or a controller did not finish in its tick (or, over ROS, time) budget
    "missed_target",   # object released or pushed but not where asked (or undone while retreating)
    "executor_error",  # the executor raised or returned something that is not a SkillResult (planning harness)
    "busy",            # the ROS sim node was still running another skill request
)


class SkillSyntaxError(UserError, ValueError):
    """Text that is not one skill call in the grammar name(arg, ...)."""


class SkillArgumentError(ValueError):
    """A skill call whose skill, objects or argument types do not fit the scene."""


@dataclass(frozen=True)
class SkillInfo:
    """One skill of the catalogue: parameter kinds and a description for prompts."""

    name: str
    params: tuple  # (param name, accepted kinds) with kinds from {"object", "zone", "pose", "number"}
    description: str


SKILLS: dict = {
    "pick": SkillInfo("pick", (("obj", ("object",)),), "grasp a free object from above and lift it"),
    "place": SkillInfo("place", (("obj", ("object",)), ("target", ("object", "zone", "pose"))),
                       "put the held object on an object, inside a container or zone, or at an (x, y) pose"),
    "push": SkillInfo("push", (("obj", ("object",)), ("target", ("zone", "pose"))),
                      "push an object along the table into a zone or to an (x, y) pose, without grasping"),
    "rotate": SkillInfo("rotate", (("obj", ("object",)), ("degrees", ("number",))),
                        "grasp an object, turn it about the vertical axis by the given degrees, set it down"),
}


@dataclass(frozen=True)
class SkillCall:
    """A skill name with its arguments: names (str), numbers (float) or poses (tuple of floats)."""

    name: str
    args: tuple = ()

    def __str__(self) -> str:
        def fmt(a):
            if isinstance(a, tuple):
                return "(" + ", ".join(f"{float(v):.3f}" for v in a) + ")"
            if isinstance(a, float):
                return f"{a:g}"
            return str(a)
        return f"{self.name}({', '.join(fmt(a) for a in self.args)})"

    @classmethod
    def parse(cls, text: str) -> "SkillCall":
        """Parse one line like `place(red_block, green_bowl)` with ast; never evaluates it."""
        src = text.strip().rstrip(";").strip()
        if not src:
            raise SkillSyntaxError("empty skill call")
        try:
            tree = ast.parse(src, mode="eval")
        except SyntaxError as e:
            raise SkillSyntaxError(f"not a skill call: {src!r} ({e.msg})") from None
        node = tree.body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.keywords:
            raise SkillSyntaxError(f"not a skill call of the form name(arg, ...): {src!r}")
        return cls(node.func.id, tuple(_arg(a, src) for a in node.args))

    def objects(self) -> list:
        """The string arguments (object or zone names)."""
        return [a for a in self.args if isinstance(a, str)]


def _arg(node, src: str) -> Arg:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.replace("_", "").isalnum():
        return node.value
    num = _number(node)
    if num is not None:
        return num
    if isinstance(node, (ast.Tuple, ast.List)) and 2 <= len(node.elts) <= 3:
        vals = [_number(e) for e in node.elts]
        if all(v is not None for v in vals):
            return tuple(vals)
    raise SkillSyntaxError(f"argument {ast.unparse(node)!r} in {src!r} is not a name, number or (x, y) pose")


def _number(node) -> Optional[float]:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _number(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    return None


@dataclass
class SkillResult:
    """Outcome of one skill: success, or a failure name from FAILURES with a message."""

    success: bool
    failure: Optional[str] = None
    message: str = ""
    steps: int = 0
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {"success": self.success, "failure": self.failure, "message": self.message, "steps": self.steps}
