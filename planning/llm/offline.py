"""`OfflineLLM`: answers the planners' prompts from the task's symbolic model. It is NOT a language model.

It exists so every planner runs, and can be compared, without a network or a GPU. Bind it to the live
world (`llm.bind(executor)`: something with `oracle_plan()`, `symbolic()` or `symbolic_state()`,
`object_names`, `zone_names`, optionally `goals`); it reads the request's `tag` to know which prompt it
got (`tree_sample`, `tree_decide`, `iterative_step`, `clea_observer`, `clea_memory`, `clea_planner`,
`clea_critic`; any other `*_sample` tag is a whole-plan request) and answers from the oracle plan of the
CURRENT state, with configurable, seeded mistakes:

- plans (whole, one step, or a CLEA chunk) are the oracle plan with per-line errors: wrong object,
  missing step, extra step, hallucinated object, swapped order (the same rates for every planner);
- deciding votes and critic votes are right with probability 1 - `judge`;
- `malformed` replaces a completion with junk, to exercise the planners' error handling.

Determinism: each request draws from a generator seeded by (seed, hash of the request, how many times
that same request was seen), so repeated identical requests differ while whole runs are reproducible.
Token counts use `estimate_tokens` (about 4 characters a token), prompt once per request, completions summed.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Optional

from taskweave.planning.llm import LLMClient, LLMError, LLMResponse, estimate_tokens, register_llm_backend
from taskweave.planning.grounding import LETTERS
from taskweave.sim.skill_types import SkillCall, SkillSyntaxError

MODEL_NAME = "offline-symbolic-oracle"
END = "[END]"
_OPTION = re.compile(r"^([A-Z])\.\s+(.+?)\s*$", re.M)
_FAKE_COLORS = ("teal", "maroon", "navy", "olive", "silver", "violet", "amber", "ivory", "lime", "coral")
_FAKE_NOUNS = ("cup", "mug", "plate", "box", "cube", "tray")
_JUNK = ("I'm not sure what you mean.", "```\n<<<garbled>>>\n```", "Sure! Here is a poem about robots.", "%%%", "")


@dataclass
class ErrorRates:
    """Per-line plan error probabilities and the probability that a vote or verdict is wrong."""

    wrong_object: float = 0.05
    missing_step: float = 0.04
    extra_step: float = 0.03
    hallucinated_object: float = 0.03
    swapped_order: float = 0.04
    judge: float = 0.10
    malformed: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = float(getattr(self, f.name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"error rate {f.name} must be in [0, 1], got {v}")
            setattr(self, f.name, v)

    @classmethod
    def none(cls) -> "ErrorRates":
        """No mistakes at all: the oracle itself."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    @classmethod
    def parse(cls, text: str) -> "ErrorRates":
        """Rates from 'none', 'default' or 'wrong_object=0.1,judge=0.2' (unnamed rates keep their defaults)."""
        text = (text or "").strip()
        if text in ("", "default"):
            return cls()
        if text in ("none", "clean", "0"):
            return cls.none()
        known = {f.name for f in fields(cls)}
        kw = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            k, sep, v = part.partition("=")
            if not sep or k.strip() not in known:
                raise ValueError(f"bad error rate {part!r}: expected name=value with name in {sorted(known)}")
            kw[k.strip()] = float(v)
        return cls(**kw)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def _request_hash(messages, n, temperature, top_p, tag) -> str:
    blob = json.dumps({"m": messages, "n": n, "t": round(temperature, 6), "p": round(top_p, 6), "tag": tag},
                      sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _section(text: str, start: str, end: str) -> str:
    i = text.find(start)
    if i < 0:
        return ""
    i += len(start)
    j = text.find(end, i)
    return text[i:j if j >= 0 else len(text)].strip()


def _norm(line: str) -> str:
    try:
        return str(SkillCall.parse(line))
    except (SkillSyntaxError, RecursionError, ValueError):
        return line.strip()


class OfflineLLM(LLMClient):
    """A rule-based stand-in for an LLM that answers from the bound world's oracle plan; not a language model."""

    def __init__(self, seed: int = 0, errors: Optional[ErrorRates] = None, world=None, meter=None, **rates):
        """Seeded answers with `errors` (or rate keywords such as wrong_object=0.1); bind a world before use."""
        super().__init__(MODEL_NAME, meter)
        if isinstance(errors, str):
            errors = ErrorRates.parse(errors)
        self.errors = errors if errors is not None else ErrorRates(**rates)
        if errors is not None and rates:
            self.errors = ErrorRates(**{**self.errors.to_dict(), **rates})
        self.seed = int(seed)
        self.world = world
        self._seen: Counter = Counter()

    def bind(self, world) -> "OfflineLLM":
        """Answer from this world from now on (an executor or env with oracle_plan and a symbolic state)."""
        if not callable(getattr(world, "oracle_plan", None)):
            raise LLMError(f"the offline LLM needs a world with oracle_plan(); {type(world).__name__} has none")
        self.world = world
        return self

    # ---- the client -----------------------------------------------------------------------------
    def _complete(self, messages, n, temperature, top_p, max_tokens, stop, tag) -> LLMResponse:
        if self.world is None:
            raise LLMError("the offline LLM is not bound to a world: call llm.bind(executor) first")
        key = _request_hash(messages, n, temperature, top_p, tag)
        self._seen[key] += 1
        seed = int(hashlib.sha256(f"{self.seed}|{key}|{self._seen[key]}".encode()).hexdigest()[:16], 16)
        rng = random.Random(seed)
        prompt = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") != "system")
        handler = self._handler(tag, prompt)
        oracle = self.reference_plan()
        draws = 1 if temperature == 0.0 else n   # greedy decoding: n identical completions
        texts = [handler(prompt, oracle, random.Random(rng.getrandbits(64))) for _ in range(draws)]
        texts = (texts * n)[:n]
        texts = [rng.choice(_JUNK) if rng.random() < self.errors.malformed else t for t in texts]
        truncated, reasons = False, []
        for i, t in enumerate(texts):
            if max_tokens is not None and estimate_tokens(t) > max_tokens:
                texts[i], truncated = t[:4 * max_tokens], True
                reasons.append("length")
            else:
                reasons.append("stop")
        return LLMResponse(texts=texts, prompt_tokens=estimate_tokens("\n".join(
                               f"{m.get('role', '')}: {m.get('content', '')}" for m in messages)),
                           completion_tokens=sum(estimate_tokens(t) for t in texts), model=self.model,
                           truncated=truncated, usage_estimated=True, finish_reasons=reasons, requests=1)

    def _handler(self, tag: str, prompt: str):
        table = {"tree_sample": self._plan, "tree_decide": self._decide, "iterative_step": self._step,
                 "clea_observer": self._observer, "clea_memory": self._memory, "clea_planner": self._chunk,
                 "clea_critic": self._critic}
        if tag in table:
            return table[tag]
        if tag.endswith("_sample") or tag.endswith("_plan"):
            return self._plan
        if "Proposed next action:" in prompt:
            return self._critic
        if _OPTION.search(prompt):
            return self._decide
        if '"subgoal"' in prompt:
            return self._chunk
        return self._plan

    # ---- the world --------------------------------------------------------------------------------
    def _state(self):
        w = self.world
        fn = getattr(w, "symbolic", None) or getattr(w, "symbolic_state", None)
        return fn() if callable(fn) else None

    def reference_plan(self) -> list:
        """The oracle plan of the current state, without a put-down-then-pick-up of the object already held."""
        plan = [c if isinstance(c, SkillCall) else SkillCall.parse(str(c)) for c in self.world.oracle_plan()]
        st = self._state()
        held = getattr(st, "held", "") if st is not None else ""
        if (held and len(plan) >= 2 and plan[0].name == "place" and plan[0].args[:1] == (held,)
                and plan[1] == SkillCall("pick", (held,))):
            plan = plan[2:]   # the task oracle releases whatever is held; keep holding what goes next
        return plan

    def _names(self) -> tuple:
        st = self._state()
        objs = list(self.world.object_names)
        movable = [n for n in objs if st is None or n not in st.objects or st.objects[n].category != "container"]
        return objs, list(self.world.zone_names), movable or objs

    # ---- plan errors --------------------------------------------------------------------------------
    def corrupt(self, plan: list, rng: random.Random) -> list:
        """The oracle plan with per-line mistakes drawn at the configured rates."""
        e = self.errors
        calls = list(plan)
        for i in range(len(calls) - 1):
            if rng.random() < e.swapped_order:
                calls[i], calls[i + 1] = calls[i + 1], calls[i]
        out = []
        for c in calls:
            if rng.random() < e.extra_step:
                out.append(self._random_call(rng))
            if rng.random() < e.missing_step:
                continue
            if rng.random() < e.wrong_object:
                c = self._swap_name(c, rng, hallucinate=False)
            elif rng.random() < e.hallucinated_object:
                c = self._swap_name(c, rng, hallucinate=True)
            out.append(c)
        return out

    def _random_call(self, rng) -> SkillCall:
        objs, zones, movable = self._names()
        a = rng.choice(movable)
        if rng.random() < 0.5:
            return SkillCall("pick", (a,))
        targets = [t for t in objs + zones if t != a] or [a]
        return SkillCall("place", (a, rng.choice(targets)))

    def _swap_name(self, call: SkillCall, rng, hallucinate: bool) -> SkillCall:
        idx = [i for i, a in enumerate(call.args) if isinstance(a, str)]
        if not idx:
            return call
        i = rng.choice(idx)
        old = call.args[i]
        objs, zones, movable = self._names()
        if hallucinate:
            st = self._state()
            present = {o.color for o in st.objects.values()} if st is not None else set()
            colors = [c for c in _FAKE_COLORS if c not in present] or list(_FAKE_COLORS)
            noun = old.split("_")[1] if old.count("_") >= 1 and old.split("_")[1].isalpha() else rng.choice(_FAKE_NOUNS)
            new = f"{rng.choice(colors)}_{noun}"
        else:
            pool = zones if old in zones else (movable if i == 0 else objs)
            pool = [p for p in pool if p != old]
            if not pool:
                return call
            new = rng.choice(pool)
        args = list(call.args)
        args[i] = new
        return SkillCall(call.name, tuple(args))

    # ---- handlers: prompt, oracle plan of the current state, rng -> text -------------------------------
    def _plan(self, prompt, oracle, rng) -> str:
        return "\n".join([str(c) for c in self.corrupt(oracle, rng)] + [END])

    def _step(self, prompt, oracle, rng) -> str:
        plan = self.corrupt(oracle, rng) if oracle else []
        return str(plan[0]) if plan else "done"

    def _pick_letter(self, right: Optional[int], n_opts: int, rng) -> str:
        if right is None:
            return LETTERS[rng.randrange(n_opts)]
        if n_opts > 1 and rng.random() < self.errors.judge:
            return LETTERS[rng.choice([i for i in range(n_opts) if i != right])]
        return LETTERS[right]

    def _decide(self, prompt, oracle, rng) -> str:
        opts = _OPTION.findall(prompt.split("Which skill should run next?")[-1]) or _OPTION.findall(prompt)
        if not opts:
            return "I cannot see any options."
        texts = [_norm(t) for _, t in opts]
        right = None
        if not oracle:
            right = next((i for i, t in enumerate(texts) if t.startswith(END)), None)
        else:
            ranks = {str(c): k for k, c in reversed(list(enumerate(oracle)))}
            scored = [(ranks[t], i) for i, t in enumerate(texts) if t in ranks]
            right = min(scored)[1] if scored else None
        return self._pick_letter(right, len(opts), rng)

    def _critic(self, prompt, oracle, rng) -> str:
        action = _norm(_section(prompt, "Proposed next action:", "\n"))
        good = bool(oracle) and action == str(oracle[0])
        verdict = good if rng.random() >= self.errors.judge else not good
        if verdict:
            return f"YES\nFeedback: {action} can run now and moves the task forward."
        hint = f"do {oracle[0]} next instead" if oracle else "the task looks complete; stop"
        return f"NO\nFeedback: {action} does not fit the current state; {hint}."

    def _chunk(self, prompt, oracle, rng) -> str:
        m = re.search(r"1 to (\d+) skill calls", prompt)
        max_calls = max(1, int(m.group(1))) if m else 3
        if not oracle:
            return ('The observation shows every goal satisfied and the gripper empty.\n'
                    '```json\n{"subgoal": "the task is complete", "actions": ["done()"]}\n```')
        plan = self.corrupt(oracle, rng) or [oracle[0]]
        chunk = []
        for c in plan[:max_calls]:
            chunk.append(c)
            if c.name != "pick":
                break   # a subgoal ends with the skill that puts something somewhere
        first = chunk[-1]
        subgoal = (f"{first.name} {first.args[0]}" + (f" to {first.args[1]}" if len(first.args) > 1 else "")
                   if first.args else first.name)
        body = json.dumps({"subgoal": subgoal, "actions": [str(c) for c in chunk]})
        return f"From the belief and the observation, the next thing to do is: {subgoal}.\n```json\n{body}\n```"

    def _observer(self, prompt, oracle, rng) -> str:
        st = self._state()
        if st is None:
            return _section(prompt, "Raw observation:", "\n\n")[:600]
        parts = [f"The gripper {'holds ' + st.held if st.held else 'is empty'}."]
        for o in st.objects.values():
            if o.visible:
                parts.append(f"{o.name} is at ({o.pos[0]:.2f}, {o.pos[1]:.2f}).")
            else:
                parts.append(f"{o.name} is not visible.")
        rel = sorted(str(f) for f in st.facts if f.name in ("on", "inside"))
        parts.append("Relations: " + (", ".join(rel) if rel else "nothing rests on or in anything else") + ".")
        return " ".join(parts)

    def _memory(self, prompt, oracle, rng) -> str:
        old = _section(prompt, "Belief so far:", "\n\nNew records")
        records = _section(prompt, "(observation, action, feedback):", "\n\nWrite the updated belief")
        failed = [s.strip() for s in _section(old + "\n", "Failed so far:", "\n").split(";") if s.strip()]
        action = _section(records + "\n", "Action:", "\n")
        feedback = _section(records + "\n", "Feedback:", "\n")
        if action and ("fail" in feedback.lower() or "changed unexpectedly" in feedback.lower()):
            failed = (failed + [f"{action} ({feedback[:80]})"])[-3:]
        st, goals = self._state(), list(getattr(self.world, "goals", []) or [])
        done, todo = [], []
        if st is not None:
            from taskweave.envs.predicates import evaluate
            for g in goals:
                (done if evaluate(g, st) else todo).append(str(g))
        lines = [f"Done: {', '.join(done) or 'nothing yet'}.", f"Still to do: {', '.join(todo) or 'nothing'}.",
                 f"Gripper: {('holding ' + st.held) if st is not None and st.held else 'empty'}."]
        if action:
            lines.append(f"Last action: {action} -> {feedback[:120] or 'no feedback'}.")
        if failed:
            lines.append("Failed so far: " + "; ".join(failed))
        return "\n".join(lines)


def _offline_factory(arg: str, **kw) -> OfflineLLM:
    """Build an OfflineLLM from the spec argument: '', 'none' or 'name=rate,...' (kw: seed, errors, ...)."""
    if arg and "errors" not in kw:
        kw["errors"] = ErrorRates.parse(arg)
    return OfflineLLM(**kw)


register_llm_backend("offline", _offline_factory)

__all__ = ["OfflineLLM", "ErrorRates", "MODEL_NAME"]
