"""Iterative-Planner baseline: one LLM call per skill, shown the current observation and the history;
after a failure the error message goes into the next prompt (a correction). Budgets: steps and corrections.

Its few-shot example is Tree-Planner's and open loop's (`planning/prompts/examples/plan.txt`: worked plans
for other scenes, shown as example plans; the prompt then asks for the next step), so the comparison
differs in the control flow only. Its feedback is `episode.outcome_line`, the same text every planner gets.
"""
from __future__ import annotations

from typing import Optional

from taskweave.planning.episode import DONE_NAMES, Episode, EpisodeRecord, format_history, outcome_line
from taskweave.planning.grounding import parse_plan
from taskweave.planning.prompts import load_example



class IterativePlanner:
    """Ask for the single next skill call, run it, feed the outcome back, repeat until done or out of budget."""

    name = "iterative"

    def __init__(self, max_steps: int = 40, max_corrections: int = 10, max_malformed: int = 3,
                 temperature: float = 0.0, max_tokens: int = 64, example: Optional[str] = None,
                 constrain: str = "grammar"):
        """Configure the step, correction and consecutive-malformed-reply budgets and the sampling."""
        self.max_steps, self.max_corrections, self.max_malformed = int(max_steps), int(max_corrections), int(max_malformed)
        self.temperature, self.max_tokens, self.constrain = float(temperature), int(max_tokens), constrain
        self.example = load_example("plan") if example is None else example   # the same examples as Tree-Planner

    def config(self) -> dict:
        """The planner's settings as a dict."""
        return {"temperature": self.temperature, "max_malformed": self.max_malformed}

    def run(self, executor, llm, *, task: str = "", seed: Optional[int] = None, backend: str = "",
            trace=None) -> EpisodeRecord:
        """Plan and act one skill at a time; returns the EpisodeRecord."""
        ep = Episode(self.name, executor, llm, task=task, seed=seed, backend=backend, trace=trace,
                     constrain=self.constrain,
                     max_steps=self.max_steps, max_corrections=self.max_corrections, config=self.config())
        history, error, correction, bad_streak = [], "", False, 0
        while ep.budget_left():
            texts = ep.ask("iterative_step", tag="iterative_step", temperature=self.temperature,
                           max_tokens=self.max_tokens, constraint=ep.constraint("step"),
                           observation=executor.observe(), history=format_history(history),
                           error=error, example=self.example, **ep.skill_fields())
            if texts is None:
                break
            plan = parse_plan(texts[0], ep.stats)
            if not plan.calls and plan.ended:
                ep.note("the LLM says the task is done")
                break
            call = plan.calls[0] if plan.calls else None
            if call is not None and call.name.lower() in DONE_NAMES and not call.args:
                ep.note("the LLM says the task is done")
                break
            if call is None:
                bad_streak += 1
                ep.count_malformed("iterative_step", f"no skill call in {texts[0][:60]!r}")
                if bad_streak >= self.max_malformed:
                    ep.stop(f"{bad_streak} malformed replies in a row")
                    break
                error = ("Your last reply was not a skill call. Reply with exactly one call such as "
                         "pick(object), or with done.")
                continue
            bad_streak = 0
            result = ep.execute(call, source="llm", correction=correction)
            if ep.stopped:
                break
            history.append(outcome_line(ep.record.steps[-1].call, result))
            if result.success:
                error, correction = "", False
                continue
            if not ep.use_correction():
                break
            error = f"The last attempt failed: {history[-1]}"
            correction = True
        return ep.finish()


__all__ = ["IterativePlanner"]
