"""Constrained decoding: what shape a reply must have, as data every backend maps to its own API.

A `Constraint` is a GBNF grammar (llama.cpp's grammar format), a JSON schema, or a fixed set of
choices. Backends map it: llama.cpp (embedded) -> `grammar=LlamaGrammar`; an OpenAI-compatible
server -> llama.cpp's `grammar` / `json_schema` fields, vLLM's guided decoding (`extra_body`), or
OpenAI's `response_format` json_schema. A constraint is part of the replay key. The builders here
make the ones the planners use: a per-scene plan grammar (the skills over the scene's own object,
zone and pose names, then `[END]`), one skill call or `done`, option letters, YES/NO plus feedback,
and CLEA's subgoal JSON schema.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from typing import Iterable, Optional

from taskweave.sim.skill_types import SKILLS

KINDS = ("grammar", "json_schema", "choice")
CONSTRAIN_MODES = ("grammar", "none")   # the --constrain flag: use constraints where the backend has them, or never


@dataclass(frozen=True)
class Constraint:
    """The shape a reply must have. kind: 'grammar' (GBNF text), 'json_schema' (a dict) or 'choice'."""

    kind: str
    name: str = ""                 # what it constrains ("plan", "step", "option", "verdict", "subgoal")
    grammar: str = ""              # GBNF, kind 'grammar'
    schema: Optional[dict] = field(default=None, hash=False, compare=False)
    choices: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown constraint kind {self.kind!r} (kinds: {', '.join(KINDS)})")
        if self.kind == "grammar" and "root" not in self.grammar:
            raise ValueError("a grammar constraint needs a GBNF grammar with a root rule")
        if self.kind == "json_schema" and not isinstance(self.schema, dict):
            raise ValueError("a json_schema constraint needs a schema dict")
        if self.kind == "choice" and not self.choices:
            raise ValueError("a choice constraint needs at least one choice")

    def key(self) -> dict:
        """The constraint as plain JSON data (replay keys, records)."""
        d = {"kind": self.kind, "name": self.name}
        if self.kind == "grammar":
            d["grammar"] = self.grammar
        elif self.kind == "json_schema":
            d["schema"] = self.schema
        else:
            d["choices"] = list(self.choices)
        return d

    def gbnf(self) -> str:
        """The constraint as a GBNF grammar (choices become alternatives; JSON schemas are converted by the
        backend, so this raises for them)."""
        if self.kind == "grammar":
            return self.grammar
        if self.kind == "choice":
            return "root ::= " + " | ".join(_lit(c) for c in self.choices) + "\n"
        raise ValueError("a json_schema constraint has no GBNF form here; the backend converts the schema")


def _lit(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(str(text), ensure_ascii=False)


def _alts(names: Iterable[str]) -> str:
    names = [n for n in dict.fromkeys(names) if n]
    return " | ".join(_lit(n) for n in names) if names else '"none"'


# numbers and poses as the skill grammar of SkillCall.parse reads them
_NUMBER_RULES = '''number ::= "-"? [0-9] [0-9]? [0-9]? ("." [0-9] [0-9]? [0-9]?)?
pose ::= "(" number ", " number ")"
'''


# skills whose first argument is held in the gripper: typed over the graspable objects
HELD_FIRST = frozenset({"pick", "place", "rotate"})


def skill_call_rules(objects: Iterable[str], zones: Iterable[str], skills: Optional[dict] = None,
                     graspable: Optional[Iterable[str]] = None) -> str:
    """GBNF rules `call` (one skill call over these scene names) and its helpers.

    graspable: the objects the gripper can hold; when given, the first argument of pick, place and rotate
    ranges over them only (a skill whose first argument has no candidate is left out)."""
    skills = skills or SKILLS
    objects, zones = list(objects), list(zones)
    held = None if graspable is None else [o for o in graspable if o in objects]
    kinds = {"object": "obj", "zone": "zone", "pose": "pose", "number": "number"}
    alts = []
    for info in skills.values():
        args = []
        for i, (_, accepted) in enumerate(info.params):
            parts = [kinds[k] for k in accepted if k != "zone" or zones]
            if i == 0 and held is not None and info.name in HELD_FIRST and parts == ["obj"]:
                parts = ["gobj"]
            args.append(parts[0] if len(parts) == 1 else "(" + " | ".join(parts) + ")")
        if held is not None and not held and args and args[0] == "gobj":
            continue
        alts.append(_lit(info.name + "(") + " " + ' ", " '.join(args) + ' ")"')
    rules = "call ::= " + " | ".join(alts) + "\n"
    rules += f"obj ::= {_alts(objects)}\n"
    if held:
        rules += f"gobj ::= {_alts(held)}\n"
    if zones:
        rules += f"zone ::= {_alts(zones)}\n"
    return rules + _NUMBER_RULES


def plan_constraint(objects: Iterable[str], zones: Iterable[str], max_lines: int = 16,
                    graspable: Optional[Iterable[str]] = None) -> Constraint:
    """A whole plan: 1 to max_lines skill calls over the scene's names, one per line, then `[END]`."""
    rules = skill_call_rules(objects, zones, graspable=graspable)
    body = 'root ::= (call "\\n"){1,%d} "[END]"\n' % int(max_lines)
    return Constraint("grammar", "plan", grammar=body + rules)


def step_constraint(objects: Iterable[str], zones: Iterable[str],
                    graspable: Optional[Iterable[str]] = None) -> Constraint:
    """One skill call over the scene's names, or `done`."""
    return Constraint("grammar", "step", grammar='root ::= call | "done"\n'
                      + skill_call_rules(objects, zones, graspable=graspable))


def option_constraint(n_options: int) -> Constraint:
    """One option letter among the first n."""
    if not 1 <= n_options <= 26:
        raise ValueError(f"option constraints take 1..26 options, got {n_options}")
    return Constraint("choice", "option", choices=tuple(string.ascii_uppercase[:n_options]))


def verdict_constraint(max_feedback_chars: int = 200) -> Constraint:
    """YES or NO on the first line, then `Feedback:` and one sentence."""
    g = ('root ::= ("YES" | "NO") "\\nFeedback: " sentence\n'
         'sentence ::= [^\\n]{1,%d}\n' % int(max_feedback_chars))
    return Constraint("grammar", "verdict", grammar=g)


def note_constraint(max_chars: int = 240) -> Constraint:
    """One line of free text, at most max_chars characters (CLEA's observer and memory summaries)."""
    return Constraint("grammar", "note", grammar='root ::= [^\\n]{1,%d}\n' % int(max_chars))


def subgoal_constraint(objects: Iterable[str], zones: Iterable[str], max_calls: int = 3,
                       graspable: Optional[Iterable[str]] = None) -> Constraint:
    """CLEA's planner reply as JSON: {"subgoal": text, "actions": [1..max_calls skill calls]}."""
    schema = {
        "type": "object",
        "properties": {
            "subgoal": {"type": "string", "minLength": 1, "maxLength": 120},
            "actions": {"type": "array", "minItems": 1, "maxItems": int(max_calls),
                        "items": {"type": "string", "maxLength": 80}},
        },
        "required": ["subgoal", "actions"],
        "additionalProperties": False,
    }
    # the GBNF form names the scene's skill calls inside the JSON strings, which a schema cannot
    rules = skill_call_rules(objects, zones, graspable=graspable)
    more = " ".join(['("," ws "\\"" call "\\"")?'] * (max(1, int(max_calls)) - 1))
    g = ('root ::= "{" ws "\\"subgoal\\":" ws "\\"" text "\\"," ws "\\"actions\\":" ws "[" ws "\\"" call "\\"" '
         + more + ' ws "]" ws "}"\n'
         'text ::= [^"\\\\\\n]{1,120}\n'
         'ws ::= " "?\n' + rules)
    return Constraint("grammar", "subgoal", grammar=g, schema=schema)


__all__ = ["Constraint", "KINDS", "CONSTRAIN_MODES", "plan_constraint", "step_constraint", "option_constraint",
           "verdict_constraint", "subgoal_constraint", "note_constraint", "skill_call_rules", "HELD_FIRST"]
