"""Prompt templates (`planning/prompts/*.txt`) and strict rendering.

Templates use `string.Template` fields (`$task`, `${task}`; a literal dollar is `$$`), so JSON
braces in examples need no escaping. A first line `#! optional: a, b` declares fields that may be
left out (they render as empty); every other field is required, and rendering with a missing or
unknown field raises `PromptError`.
"""
from __future__ import annotations

import functools
import re
import string
from importlib import resources
from typing import Optional

from taskweave.sim.errors import UserError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_HEADER = re.compile(r"^#!\s*optional\s*:(.*)$")


class PromptError(UserError, ValueError):
    """A prompt that does not exist or was rendered with missing or unknown fields."""


@functools.lru_cache(maxsize=None)
def _read(name: str) -> tuple:
    if not _NAME.match(name or ""):
        raise PromptError(f"bad prompt name {name!r}")
    path = resources.files("taskweave.planning").joinpath("prompts", f"{name}.txt")
    if not path.is_file():
        raise PromptError(f"no prompt template {name!r} (have: {', '.join(prompt_names())})")
    text = path.read_text(encoding="utf-8")
    optional = set()
    lines = text.splitlines(keepends=True)
    while lines and _HEADER.match(lines[0].strip()):
        optional |= {f.strip() for f in _HEADER.match(lines[0].strip()).group(1).split(",") if f.strip()}
        lines = lines[1:]
    body = "".join(lines)
    fields = set()
    for m in string.Template.pattern.finditer(body):
        if m.group("invalid") is not None:
            raise PromptError(f"prompt {name!r} has a stray '$' at offset {m.start()} (write $$ for a dollar)")
        f = m.group("named") or m.group("braced")
        if f:
            fields.add(f)
    unknown_optional = optional - fields
    if unknown_optional:
        raise PromptError(f"prompt {name!r} declares optional fields it never uses: {sorted(unknown_optional)}")
    return body, frozenset(fields - optional), frozenset(optional)


def prompt_names() -> list:
    """Names of the available templates (file names without .txt)."""
    folder = resources.files("taskweave.planning").joinpath("prompts")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


def load_example(name: str) -> str:
    """A few-shot example text (`planning/prompts/examples/NAME.txt`), inserted into prompts as `$example`."""
    if not _NAME.match(name or ""):
        raise PromptError(f"bad example name {name!r}")
    path = resources.files("taskweave.planning").joinpath("prompts", "examples", f"{name}.txt")
    if not path.is_file():
        raise PromptError(f"no few-shot example {name!r} in planning/prompts/examples/")
    return path.read_text(encoding="utf-8")


def load_prompt(name: str) -> str:
    """The raw template text of a prompt (without its `#!` header)."""
    return _read(name)[0]


def prompt_fields(name: str) -> tuple:
    """(required fields, optional fields) of a prompt, as sorted lists."""
    _, required, optional = _read(name)
    return sorted(required), sorted(optional)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)


def render(name: str, **fields) -> str:
    """Fill a template; raises PromptError on a missing required field or an unknown field."""
    body, required, optional = _read(name)
    missing = sorted(required - set(fields))
    unknown = sorted(set(fields) - required - optional)
    if missing or unknown:
        parts = ([f"missing fields {missing}"] if missing else []) + ([f"unknown fields {unknown}"] if unknown else [])
        raise PromptError(f"prompt {name!r}: {'; '.join(parts)} (required {sorted(required)}, "
                          f"optional {sorted(optional)})")
    values = {f: "" for f in optional}
    values.update({k: _text(v) for k, v in fields.items()})
    out = string.Template(body).substitute(values)
    return re.sub(r"\n{3,}", "\n\n", out).strip() + "\n"


def build_messages(name: str, system: Optional[str] = "system", **fields) -> list:
    """Chat messages for a prompt: the `system` template (if any) then the rendered prompt as the user turn."""
    msgs = [{"role": "system", "content": render(system)}] if system else []
    return msgs + [{"role": "user", "content": render(name, **fields)}]
