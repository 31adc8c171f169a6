"""Reading LLM replies, the one home for it: plan lines -> skill calls grounded in the scene, lettered
choices, YES/NO verdicts and CLEA subgoal blocks.

(~490 lines: every reader of model text is kept together so that all planners parse and ground alike.)

Lines are parsed with `SkillCall.parse` (an `ast` grammar; nothing is ever evaluated), JSON with
`json.loads`. Names the LLM got slightly wrong ("Red Block", "red-blok") are mapped to the closest
scene name; names with no close match ("blue_cup" in a scene without one), unknown instances
("red_block_3") and ties are rejected with a reason. Malformed text is counted in a
`GroundingStats` or returned as a result saying why, never raised.
"""
from __future__ import annotations

import difflib
import json
import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from taskweave.sim.skill_types import SKILLS, SkillCall, SkillSyntaxError

MAX_LINE_CHARS = 300
MAX_PLAN_LINES = 200
MATCH_THRESHOLD = 0.6      # minimum combined score for a near-miss mapping
AMBIGUITY_MARGIN = 0.02    # the best match must beat the runner-up by this much
TOKEN_MATCH = 0.8          # a query token matches a name token at this difflib ratio
_STOPWORDS = {"the", "a", "an", "of"}
_TERMINATORS = {"[end]", "end", "<end>", "[done]", "done", "done()", "end()", "[stop]", "stop()", "finish()",
                "finished", "task complete", "task completed", "task done"}
_FENCE = re.compile(r"^\s*(```|~~~)")
_NUMBERING = re.compile(r"^\s*(?:(?:step|action)\s*\d+\s*[:.)-]\s*|\d+\s*[.):]\s*|[-*\u2022>]\s+|\(\d+\)\s*)", re.I)
_COMMENT = re.compile(r"\s+(?:#|//|--)\s.*$|\s*#.*$")
_QUOTED = re.compile(r"(['\"])([^'\"\n]{0,80})\1")


@dataclass
class GroundingStats:
    """Counters over everything parsed and grounded: lines, calls, malformed lines, remaps, rejections."""

    replies: int = 0
    lines: int = 0
    calls: int = 0
    malformed: int = 0
    grounded: int = 0
    remapped: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        """JSON-serialisable counters."""
        return {"replies": self.replies, "lines": self.lines, "calls": self.calls, "malformed": self.malformed,
                "grounded": self.grounded, "remapped": self.remapped, "rejected": self.rejected,
                "reasons": dict(self.reasons)}


@dataclass
class LineError:
    """A reply line that is not a skill call."""

    lineno: int
    text: str
    reason: str
    kind: str = "syntax"   # "syntax", "prose" (a sentence, no call at all), "too_long"

    def __str__(self) -> str:
        return f"line {self.lineno}: {self.reason}: {self.text[:80]!r}"


@dataclass
class ParsedPlan:
    """Skill calls read from one reply, plus the lines that could not be read."""

    calls: list
    errors: list
    ended: bool = False   # an [END]/done terminator was seen

    @property
    def ok(self) -> bool:
        """True when there is at least one call and no malformed line."""
        return bool(self.calls) and not self.errors


def clean_line(line: str) -> str:
    """Strip numbering, bullets, backticks, trailing comments and punctuation from one reply line."""
    s = line.strip().strip("`").strip()
    for _ in range(2):
        s = _NUMBERING.sub("", s, count=1).strip().strip("`").strip()
    s = _COMMENT.sub("", s).strip().strip("`").strip()
    s = s.rstrip(".;,").strip()
    return _QUOTED.sub(lambda m: m.group(1) + re.sub(r"[\s\-]+", "_", m.group(2).strip()) + m.group(1), s)


def is_terminator(line: str) -> bool:
    """True for a line that ends a plan: [END], done, done(), ..."""
    return line.strip().strip("`*").strip().rstrip(".!").lower() in _TERMINATORS


def parse_plan(text: str, stats: Optional[GroundingStats] = None, max_lines: int = MAX_PLAN_LINES) -> ParsedPlan:
    """Read one skill call per line from an LLM reply; malformed lines are collected, never raised."""
    plan = ParsedPlan([], [])
    if stats is not None:
        stats.replies += 1
    if not isinstance(text, str):
        plan.errors.append(LineError(0, repr(text)[:80], "reply is not text"))
        _count(stats, plan)
        return plan
    for lineno, raw in enumerate(text.splitlines(), 1):
        if lineno > max_lines:
            plan.errors.append(LineError(lineno, "", f"reply longer than {max_lines} lines; rest ignored", "too_long"))
            break
        if not raw.strip() or _FENCE.match(raw):
            continue
        if is_terminator(raw) or is_terminator(clean_line(raw)):
            plan.ended = True
            break
        line = clean_line(raw)
        if not line:
            continue
        if "(" not in line and line.endswith(":"):
            continue  # a header such as "Plan:" or "Here are the steps:"
        if len(line) > MAX_LINE_CHARS:
            plan.errors.append(LineError(lineno, line, f"line longer than {MAX_LINE_CHARS} characters", "too_long"))
            continue
        try:
            plan.calls.append(SkillCall.parse(line))
        except SkillSyntaxError as e:
            prose = "(" not in line and line.split()[0].lower() not in SKILLS
            plan.errors.append(LineError(lineno, line, str(e), "prose" if prose else "syntax"))
        except (RecursionError, MemoryError, ValueError) as e:  # pathological input must not crash a run
            plan.errors.append(LineError(lineno, line, f"unparseable ({type(e).__name__})"))
    _count(stats, plan)
    return plan


def _count(stats, plan) -> None:
    if stats is not None:
        stats.lines += len(plan.calls) + len(plan.errors)
        stats.calls += len(plan.calls)
        stats.malformed += len(plan.errors)
        for e in plan.errors:
            stats.reasons["prose_line" if e.kind == "prose" else "malformed_line"] += 1


# ---------------------------------------------------------------- name matching

def normalize_name(name: str) -> str:
    """Canonical form of a name: lower case, spaces/hyphens/dots as single underscores."""
    s = re.sub(r"[\s\-.]+", "_", str(name).strip().strip("'\"").lower())
    return re.sub(r"_+", "_", s).strip("_")


def _tokens(norm: str) -> list:
    toks = [t for t in re.split(r"_|(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", norm) if t]
    return [t for t in toks if t not in _STOPWORDS] or toks


def _token_sim(q: str, c: str) -> float:
    if len(q) >= 3 and c.startswith(q):
        return max(0.85, difflib.SequenceMatcher(None, q, c).ratio())  # an abbreviation: cyl -> cylinder
    return difflib.SequenceMatcher(None, q, c).ratio()


def _score(query: str, cand: str) -> tuple:
    """(word coverage, combined similarity) in [0, 1]; 0 when a query word (colour, noun) or index has no match."""
    qt, ct = _tokens(query), _tokens(cand)
    q_digits = {int(t) for t in qt if t.isdigit()}
    c_digits = {int(t) for t in ct if t.isdigit()}
    if q_digits and c_digits and q_digits != c_digits:
        return 0.0, 0.0  # another instance: red_block_3 is not red_block_1
    qc, cc = query.replace("_", ""), cand.replace("_", "")
    compact = difflib.SequenceMatcher(None, qc, cc).ratio()
    compact = compact if compact >= 0.9 else 0.0   # "redblock1" for red_block_1
    words = [t for t in qt if not t.isdigit()]
    best = [max((_token_sim(q, c) for c in ct if not c.isdigit()), default=0.0) for q in words]
    if not best or min(best) < TOKEN_MATCH:
        return compact, 0.99 * compact  # a word (colour, noun) the candidate lacks: a different object
    coverage = sum(best) / len(best)
    combined = 0.6 * coverage + 0.4 * difflib.SequenceMatcher(None, query, cand).ratio()
    return max(coverage, compact), max(combined, 0.99 * compact)


def closest_name(name: str, candidates: Iterable[str], threshold: float = MATCH_THRESHOLD) -> tuple:
    """Map a possibly misspelt name to a candidate: (match or None, score, reason if None)."""
    cands = list(dict.fromkeys(candidates))
    if name in cands:
        return name, 1.0, ""
    q = normalize_name(name)
    norm = {}
    for c in cands:
        norm.setdefault(normalize_name(c), []).append(c)
    if q in norm and len(norm[q]) == 1:
        return norm[q][0], 1.0, ""
    if not q:
        return None, 0.0, "empty name"
    scored = sorted(((*_score(q, n), n) for n in norm), key=lambda t: (t[0], t[1]), reverse=True)
    scored = [t for t in scored if t[1] >= threshold]
    if not scored:
        near = ", ".join(sorted(cands)[:12]) or "none"
        return None, 0.0, f"no such name in the scene (known: {near})"
    # ties are judged on word coverage: "zone" fits left_zone and target_zone equally well
    tied = [norm[n][0] for cov, _, n in scored if scored[0][0] - cov < AMBIGUITY_MARGIN]
    if len(tied) > 1:
        return None, scored[0][1], f"ambiguous: could be {' or '.join(sorted(tied)[:4])}"
    return norm[scored[0][2]][0], scored[0][1], ""


# ---------------------------------------------------------------- grounding calls

@dataclass
class GroundedCall:
    """A call that fits the scene: skill known, arity and kinds right, names mapped to scene names."""

    call: SkillCall
    original: SkillCall
    remapped: dict = field(default_factory=dict)   # LLM name -> scene name

    @property
    def text(self) -> str:
        """The grounded call as one normalised line."""
        return str(self.call)


class GroundingError(Exception):
    """Why a call does not fit the scene; returned (not raised) by `ground_call`."""

    failure = "invalid_args"  # the FAILURES name an executor would report

    def __init__(self, call, code: str, reason: str):
        super().__init__(f"{call}: {reason}")
        self.call, self.code, self.reason = call, code, reason


def _kind_of(arg) -> str:
    if isinstance(arg, tuple):
        return "pose"
    if isinstance(arg, (int, float)):
        return "number"
    return "name"


def ground_call(call: SkillCall, object_names: Iterable[str], zone_names: Iterable[str],
                stats: Optional[GroundingStats] = None) -> Union[GroundedCall, GroundingError]:
    """Check a call against the skill catalogue and the scene; map near-miss names; return a GroundedCall or a GroundingError."""
    result = _ground(call, list(object_names), list(zone_names))
    if stats is not None:
        if isinstance(result, GroundingError):
            stats.rejected += 1
            stats.reasons[result.code] += 1
        else:
            stats.grounded += 1
            stats.remapped += int(bool(result.remapped))
    return result


def _ground(call, objects: list, zones: list):
    if not isinstance(call, SkillCall):
        try:
            call = SkillCall.parse(str(call))
        except (SkillSyntaxError, RecursionError, MemoryError, ValueError) as e:
            return GroundingError(call, "syntax", str(e))
    info = SKILLS.get(call.name) or SKILLS.get(call.name.lower())
    if info is None:
        return GroundingError(call, "unknown_skill", f"unknown skill {call.name!r} (skills: {', '.join(SKILLS)})")
    if len(call.args) != len(info.params):
        sig = ", ".join(p for p, _ in info.params)
        return GroundingError(call, "arity", f"{info.name} takes {len(info.params)} argument(s) ({sig}), "
                                             f"got {len(call.args)}")
    args, remapped = [], {}
    for (pname, kinds), arg in zip(info.params, call.args):
        kind = _kind_of(arg)
        if kind == "number":
            if "number" not in kinds:
                return GroundingError(call, "arg_kind", f"{pname} of {info.name} must be {_kinds(kinds)}, got a number")
            if not math.isfinite(arg):
                return GroundingError(call, "arg_kind", f"{pname} of {info.name} is not a finite number")
            args.append(float(arg))
            continue
        if kind == "pose":
            if "pose" not in kinds:
                return GroundingError(call, "arg_kind", f"{pname} of {info.name} must be {_kinds(kinds)}, got a pose")
            if not all(math.isfinite(v) for v in arg):
                return GroundingError(call, "arg_kind", f"{pname} of {info.name} has a non-finite coordinate")
            args.append(tuple(float(v) for v in arg))
            continue
        pool = (objects if "object" in kinds else []) + (zones if "zone" in kinds else [])
        if not pool:
            return GroundingError(call, "arg_kind", f"{pname} of {info.name} must be {_kinds(kinds)}, got name {arg!r}")
        match, _, reason = closest_name(arg, pool)
        if match is None:
            other = (zones if "zone" not in kinds else []) + (objects if "object" not in kinds else [])
            wrong, _, _ = closest_name(arg, other) if other else (None, 0, "")
            if wrong is not None:
                what = "a zone" if wrong in zones else "an object"
                return GroundingError(call, "arg_kind", f"{pname} of {info.name} must be {_kinds(kinds)}, "
                                                        f"but {wrong!r} is {what}")
            code = "ambiguous" if reason.startswith("ambiguous") else "unknown_object"
            return GroundingError(call, code, f"{pname} {arg!r}: {reason}")
        if match != arg:
            remapped[arg] = match
        args.append(match)
    return GroundedCall(SkillCall(info.name, tuple(args)), call, remapped)


def _kinds(kinds) -> str:
    return " or ".join("an (x, y) pose" if k == "pose" else f"a{'n' if k[0] in 'aeiou' else ''} {k}" for k in kinds)


@dataclass
class GroundedPlan:
    """A reply grounded line by line: the calls that fit and every error (syntax or grounding)."""

    calls: list
    errors: list
    ended: bool = False

    @property
    def ok(self) -> bool:
        """True when every line grounded and there is at least one call."""
        return bool(self.calls) and not self.errors


def ground_plan(text_or_plan, object_names: Iterable[str], zone_names: Iterable[str],
                stats: Optional[GroundingStats] = None) -> GroundedPlan:
    """Parse (if text) and ground every call of a plan, keeping the calls that fit and the errors."""
    plan = text_or_plan if isinstance(text_or_plan, ParsedPlan) else parse_plan(text_or_plan, stats)
    objects, zones = list(object_names), list(zone_names)
    out = GroundedPlan([], list(plan.errors), plan.ended)
    for call in plan.calls:
        g = ground_call(call, objects, zones, stats)
        (out.errors if isinstance(g, GroundingError) else out.calls).append(g)
    return out


def format_skill_catalogue(skills: Optional[dict] = None) -> str:
    """The skill catalogue as prompt lines: `- place(obj: object, target: object|zone|(x, y)): description`."""
    lines = []
    for info in (skills or SKILLS).values():
        params = ", ".join(f"{p}: " + "|".join("(x, y)" if k == "pose" else k for k in kinds) for p, kinds in info.params)
        lines.append(f"- {info.name}({params}): {info.description}")
    return "\n".join(lines)


# ---- lettered choices, verdicts and subgoal blocks --------------------------------------------
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
