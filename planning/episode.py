"""What a planner hands back: one `EpisodeRecord` per episode, JSON-serialisable.

Goal-condition recall is taken at the end of the episode (not the maximum over it, a pitfall of
the Tree-Planner code); executability is the fraction of executed skills that succeeded.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class StepRecord:
    """One executed skill call and its outcome."""

    call: str
    success: bool
    failure: Optional[str] = None
    message: str = ""
    correction: bool = False   # chosen to recover from an earlier failure
    source: str = ""           # what proposed it: "tree", "decide", "llm", "critic", "oracle", ...

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass
class EpisodeRecord:
    """The outcome of one planning episode: steps, failures, corrections, LLM usage and task scores."""

    task: str
    planner: str
    llm: str = ""
    backend: str = ""
    seed: Optional[int] = None
    instruction: str = ""
    steps: list = field(default_factory=list)
    failures: int = 0
    corrections: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_time: float = 0.0
    progress: float = 0.0
    goal_condition_recall: float = 0.0
    executability: float = 0.0
    success: bool = False
    error: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def add_step(self, call, result=None, *, success: Optional[bool] = None, failure: Optional[str] = None,
                 message: str = "", correction: bool = False, source: str = "") -> StepRecord:
        """Append one executed call (from a SkillResult or explicit fields) and update the counters."""
        if result is not None:
            success, failure, message = result.success, result.failure, result.message
        step = StepRecord(str(call), bool(success), failure, message, correction, source)
        self.steps.append(step)
        self.failures += int(not step.success)
        self.corrections += int(correction)
        self.executability = sum(s.success for s in self.steps) / len(self.steps)
        return step

    def add_usage(self, usage: dict) -> None:
        """Add LLM usage counters (a `UsageMeter.since(...)` or `to_dict()` result)."""
        self.llm_calls += int(usage.get("calls", 0))
        self.prompt_tokens += int(usage.get("prompt_tokens", 0))
        self.completion_tokens += int(usage.get("completion_tokens", 0))

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        """JSON-serialisable form, steps included."""
        d = asdict(self)
        d["total_tokens"] = self.total_tokens
        return d

    def to_json(self, indent: Optional[int] = None) -> str:
        """The record as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, default=str)

    @classmethod
    def from_dict(cls, d: dict) -> "EpisodeRecord":
        """Rebuild a record from `to_dict` output."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["steps"] = [StepRecord(**s) for s in known.get("steps", [])]
        return cls(**known)
