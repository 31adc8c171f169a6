"""Strict readers for structured LLM replies: lettered choices, YES/NO verdicts, CLEA subgoal blocks.

Every reader returns a result object with what it could read and why not; none raises on bad
text, and none evaluates anything (JSON through `json.loads`, skill calls through `SkillCall.parse`).
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from taskweave.sim.skill_types import SkillCall, SkillSyntaxError

LETTERS = string.ascii_uppercase
MAX_SUBGOAL_CALLS = 5
_FENCED = re.compile(r"```[ \t]*([A-Za-z]*)[ \t]*\n(.*?)```", re.S)
_LEAD = re.compile(r"^[\s*_>#]*(?:(?i:final\s+)?(?i:answer|option|choice)\s*(?i:is)?\s*[:\-]?\s*)?[*_(\[]*"
                   r"([A-Z])(?:[*_)\].:]+|$)")
_ANYWHERE = re.compile(r"(?i:answer|option|choice|choose|select)\w*\s*(?i:is)?\s*[:\-]?\s*[*_(\[]*([A-Z])\b")


def option_letters(n: int) -> str:
    """The first n option letters (A, B, ...); at most 26."""
    if not 1 <= n <= len(LETTERS):
        raise ValueError(f"between 1 and {len(LETTERS)} options, got {n}")
    return LETTERS[:n]


def format_options(options: list) -> str:
    """Lettered option lines: `A. pick(red_block)`."""
    return "\n".join(f"{letter}. {opt}" for letter, opt in zip(option_letters(len(options)), options))


def parse_option(text: str, n_options: int) -> Optional[int]:
    """Index of the lettered option a reply chose, or None when it names no valid letter."""
    if not isinstance(text, str) or n_options < 1:
        return None
    valid = option_letters(min(n_options, len(LETTERS)))
    m = _LEAD.match(text.strip())
    if m and m.group(1) in valid:
        return valid.index(m.group(1))
    hits = [m.group(1) for m in _ANYWHERE.finditer(text) if m.group(1) in valid]
    return valid.index(hits[-1]) if hits else None


def vote_option(texts: list, n_options: int) -> tuple:
    """Majority vote over sampled replies: (winning index or None, Counter of index votes, unreadable count)."""
    votes, bad = Counter(), 0
    for t in texts:
        i = parse_option(t, n_options)
        if i is None:
            bad += 1
        else:
            votes[i] += 1
    if not votes:
        return None, votes, bad
    top = max(votes.values())
    return min(i for i, v in votes.items() if v == top), votes, bad  # ties go to the earlier option


@dataclass
class Verdict:
    """A critic's answer: accept True/False (None if unreadable) and its feedback."""

    accept: Optional[bool]
    feedback: str = ""


def parse_verdict(text: str) -> Verdict:
    """Read `YES`/`NO` (first word, markdown tolerated) and the feedback that follows."""
    if not isinstance(text, str):
        return Verdict(None, "")
    body = text.strip()
    m = re.match(r"^[\s*_#>]*(?:answer|verdict|decision)?\s*[:\-]?\s*[*_]*\s*(yes|no)\b[*_]*[\s.,:;!\-]*", body, re.I)
    if not m:
        return Verdict(None, body[:500])
    rest = body[m.end():].strip()
    rest = re.sub(r"^(?:feedback|reason|because)\s*[:\-]\s*", "", rest, flags=re.I).strip()
    return Verdict(m.group(1).lower() == "yes", rest[:1000])


def accept_probability(texts: list) -> tuple:
    """Fraction of readable critic samples that said YES: (probability or None, readable count)."""
    verdicts = [parse_verdict(t).accept for t in texts]
    readable = [v for v in verdicts if v is not None]
    return (sum(readable) / len(readable) if readable else None), len(readable)


@dataclass
class SubgoalReply:
    """A CLEA planner reply: free reasoning, then a subgoal with 1..max skill calls."""

    subgoal: str = ""
    calls: list = field(default_factory=list)
    reasoning: str = ""
    errors: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when a subgoal and at least one call were read without errors."""
        return bool(self.calls) and not self.errors


def parse_subgoal_reply(text: str, max_calls: int = 3) -> SubgoalReply:
    """Read the last fenced JSON block `{"subgoal": str, "actions": [call, ...]}` of a planner reply."""
    max_calls = max(1, min(int(max_calls), MAX_SUBGOAL_CALLS))
    out = SubgoalReply()
    if not isinstance(text, str):
        out.errors.append("reply is not text")
        return out
    blocks = _FENCED.findall(text)
    if blocks:
        lang, block = blocks[-1]
        out.reasoning = text[:text.rfind("```" + lang)].strip()
    else:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end < start:
            out.errors.append("no fenced ```json block in the reply")
            out.reasoning = text.strip()
            return out
        block, out.reasoning = text[start:end + 1], text[:start].strip()
    try:
        data = json.loads(block)
    except json.JSONDecodeError as e:
        out.errors.append(f"block is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
        return out
    if not isinstance(data, dict):
        out.errors.append("block is not a JSON object")
        return out
    extra = sorted(set(data) - {"subgoal", "actions"})
    if extra:
        out.errors.append(f"unexpected keys {extra}; expected 'subgoal' and 'actions'")
    subgoal, actions = data.get("subgoal"), data.get("actions")
    if not isinstance(subgoal, str) or not subgoal.strip():
        out.errors.append("'subgoal' must be a non-empty string")
    else:
        out.subgoal = subgoal.strip()
    if not isinstance(actions, list) or not actions:
        out.errors.append("'actions' must be a non-empty list of skill-call strings")
        return out
    if len(actions) > max_calls:
        out.errors.append(f"{len(actions)} actions; at most {max_calls} allowed (extra ones dropped)")
        actions = actions[:max_calls]
    for i, a in enumerate(actions):
        if not isinstance(a, str):
            out.errors.append(f"action {i + 1} is {type(a).__name__}, not a string")
            continue
        try:
            out.calls.append(SkillCall.parse(a))
        except SkillSyntaxError as e:
            out.errors.append(f"action {i + 1}: {e}")
        except (RecursionError, MemoryError, ValueError) as e:
            out.errors.append(f"action {i + 1}: unparseable ({type(e).__name__})")
    return out
