"""Open-loop baseline (a zero-shot planner): one plan sampled once, every line executed, no feedback."""
from __future__ import annotations

from typing import Optional

from taskweave.planning.episode import Episode, EpisodeRecord
from taskweave.planning.grounding import parse_plan
from taskweave.planning.prompts import load_example


class OpenLoopPlanner:
    """Sample one whole plan, then run it to the end regardless of what happens."""

    name = "openloop"

    def __init__(self, temperature: float = 0.0, max_tokens: int = 400, max_steps: int = 40,
                 example: Optional[str] = None, constrain: str = "grammar"):
        """Configure the single sampling call and the step budget."""
        self.temperature, self.max_tokens, self.max_steps = float(temperature), int(max_tokens), int(max_steps)
        self.constrain = constrain
        self.example = load_example("plan") if example is None else example   # the same examples as Tree-Planner

    def config(self) -> dict:
        """The planner's settings as a dict."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    def run(self, executor, llm, *, task: str = "", seed: Optional[int] = None, backend: str = "",
            trace=None) -> EpisodeRecord:
        """Plan once and execute every line; returns the EpisodeRecord."""
        ep = Episode(self.name, executor, llm, task=task, seed=seed, backend=backend, trace=trace,
                     constrain=self.constrain,
                     max_steps=self.max_steps, max_corrections=0, config=self.config())
        texts = ep.ask("tree_sample", tag="openloop_sample", n=1, temperature=self.temperature,
                       max_tokens=self.max_tokens, constraint=ep.constraint("plan"), state=executor.observe(),
                       example=self.example,
                       **ep.skill_fields())
        if texts is None:
            return ep.finish()
        plan = parse_plan(texts[0], ep.stats)
        if plan.errors:
            ep.count_malformed("openloop_sample", f"{len(plan.errors)} line(s) were not skill calls", k=len(plan.errors))
        items = [ep.ground(c) for c in plan.calls]   # in reply order; an ungrounded call runs as a failed step
        if not items:
            ep.stop("the plan contained no skill call")
        for item in items:
            if not ep.budget_left():
                break
            ep.execute(item, source="plan")
            if ep.stopped:
                break
        return ep.finish(plan_length=len(items))

