"""Stage counts of a generation run: how far each candidate got, repairs, rejections, LLM usage."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

STAGES = ("proposed", "parsed", "safe", "ran", "oracle_passed", "novel", "accepted")


@dataclass
class GenerationStats:
    """How many candidates reached each stage, plus repairs, rejection reasons and LLM usage."""

    proposed: int = 0
    parsed: int = 0
    safe: int = 0
    ran: int = 0
    oracle_passed: int = 0
    novel: int = 0
    accepted: int = 0
    repairs: int = 0                      # repair calls made
    repaired: int = 0                     # candidates that passed validation only after a repair
    rejected_at: dict = field(default_factory=dict)
    llm: dict = field(default_factory=dict)   # stage -> {calls, prompt_tokens, completion_tokens}

    def add(self, reached: str) -> None:
        """Count one candidate that got as far as `reached` (a STAGES name)."""
        for s in STAGES[: STAGES.index(reached) + 1]:
            setattr(self, s, getattr(self, s) + 1)
        if reached != "accepted":
            nxt = STAGES[STAGES.index(reached) + 1]
            self.rejected_at[nxt] = self.rejected_at.get(nxt, 0) + 1

    def usage(self, stage: str, resp) -> None:
        """Record the token usage of one LLM response."""
        u = self.llm.setdefault(stage, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
        u["calls"] += 1
        u["prompt_tokens"] += int(getattr(resp, "prompt_tokens", 0) or 0)
        u["completion_tokens"] += int(getattr(resp, "completion_tokens", 0) or 0)

    def counts(self) -> dict:
        """The per-stage counts in order."""
        return {s: getattr(self, s) for s in STAGES}

    def consistent(self) -> bool:
        """Whether every stage count is at most the one before it."""
        c = list(self.counts().values())
        return all(a >= b for a, b in zip(c, c[1:], strict=False))

    def line(self) -> str:
        """One line: proposed / parsed / ... / accepted."""
        return " / ".join(f"{s.replace('_', '-')} {getattr(self, s)}" for s in STAGES)

    def to_dict(self) -> dict:
        """JSON-ready copy."""
        return asdict(self) | {"counts": self.counts()}
