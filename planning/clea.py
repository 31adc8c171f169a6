"""CLEA (Lei et al., IROS 2025): a closed-loop agent with separate observer, memory, planner and critic roles.

- observer: one LLM call turns the text observation into a short factual description;
- memory: an INCREMENTAL belief, updated from the previous belief and the latest record only
  (observation, action, feedback), never a re-summary of the whole history;
- planner: reasoning, then one fenced JSON block with a subgoal and 1-3 skill calls (strict parse);
- critic: before every action, k votes (default 5) give the probability that the action is feasible;
  below the threshold tau (default 0.5) the rest of the chunk is dropped and the critic's feedback
  becomes the next planner call's reflection;
- replanning after every chunk, after a failure, and after a perturbation (the executor's event log
  grew, or an object the skill did not name moved); a hard step budget and a planner-round budget.
"""
from __future__ import annotations

from typing import Optional

from taskweave.planning.episode import DONE_NAMES, Episode, EpisodeRecord, format_history, outcome_line
from taskweave.planning.grounding import GroundingError
from taskweave.planning.grounding import accept_probability, parse_subgoal_reply, parse_verdict

DONE_HINT = " (when the task is already complete, give the single action done())"
FIRST_BELIEF = "Nothing has been done yet; the observation below is all that is known."


class CleaAgent:
    """Observer, incremental memory, subgoal planner and probabilistic critic in a closed loop."""

    name = "clea"

    def __init__(self, critic_votes: int = 5, threshold: float = 0.5, max_calls: int = 3, max_steps: int = 40,
                 max_corrections: int = 10, max_rounds: Optional[int] = None, max_malformed: int = 3,
                 temperature: float = 0.0, critic_temperature: float = 0.7, use_critic: bool = True):
        """Configure the critic (k votes, threshold tau), the chunk size and the budgets."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"critic threshold must be in [0, 1], got {threshold}")
        self.critic_votes, self.threshold, self.max_calls = int(critic_votes), float(threshold), int(max_calls)
        self.max_steps, self.max_corrections, self.max_malformed = int(max_steps), int(max_corrections), int(max_malformed)
        self.max_rounds = int(max_rounds) if max_rounds is not None else self.max_steps + self.max_corrections
        self.temperature, self.critic_temperature, self.use_critic = float(temperature), float(critic_temperature), \
            bool(use_critic)

    def config(self) -> dict:
        """The agent's settings as a dict."""
        return {"critic_votes": self.critic_votes, "threshold": self.threshold, "max_calls": self.max_calls,
                "max_rounds": self.max_rounds, "use_critic": self.use_critic}

    # ---- roles ------------------------------------------------------------------------------
    def observe(self, ep: Episode) -> Optional[str]:
        """Observer: the text observation turned into a short description (one LLM call)."""
        texts = ep.ask("clea_observer", tag="clea_observer", max_tokens=300, task=ep.executor.instruction,
                       observation=ep.executor.observe())
        if texts is None:
            return None
        if not texts[0].strip():
            ep.count_malformed("clea_observer", "empty description")
            return ep.executor.observe()
        return texts[0].strip()

    def remember(self, ep: Episode, belief: str, record: str) -> str:
        """Memory: the new belief from the previous belief and the latest record only (one LLM call)."""
        texts = ep.ask("clea_memory", tag="clea_memory", max_tokens=300, task=ep.executor.instruction,
                       belief=belief, records=record)
        if texts is None:
            return belief
        if not texts[0].strip():
            ep.count_malformed("clea_memory", "empty belief")
            return belief
        return texts[0].strip()

    def criticise(self, ep: Episode, belief: str, description: str, history: list, call) -> tuple:
        """Critic: (probability the action is feasible now or None if unreadable, feedback) from k votes."""
        texts = ep.ask("clea_critic", tag="clea_critic", n=self.critic_votes, temperature=self.critic_temperature,
                       max_tokens=80, task=ep.executor.instruction, belief=belief, observation=description,
                       history=format_history(history), action=str(call))
        if texts is None:
            return None, ""
        p, readable = accept_probability(texts)
        if readable < len(texts):
            ep.count_malformed("clea_critic", f"{len(texts) - readable} of {len(texts)} verdicts unreadable",
                               k=len(texts) - readable)
        verdicts = [parse_verdict(t) for t in texts]
        against = [v.feedback for v in verdicts if v.accept is False and v.feedback]
        feedback = against[0] if against else next((v.feedback for v in verdicts if v.feedback), "")
        return p, feedback

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, executor, llm, *, task: str = "", seed: Optional[int] = None, backend: str = "",
            trace=None) -> EpisodeRecord:
        """Run the closed loop for one episode; returns the EpisodeRecord."""
        ep = Episode(self.name, executor, llm, task=task, seed=seed, backend=backend, trace=trace,
                     max_steps=self.max_steps, max_corrections=self.max_corrections, config=self.config())
        counts = {"rounds": 0, "critic_rejections": 0, "perturbations_noticed": 0, "failure_replans": 0,
                  "memory_updates": 0}
        belief, history, reflection, correction, bad = FIRST_BELIEF, [], "", False, 0
        description = self.observe(ep)
        done = False
        while not ep.stopped and not done and description is not None:
            if counts["rounds"] >= self.max_rounds:
                ep.stop(f"planner round budget of {self.max_rounds} exhausted")
                break
            counts["rounds"] += 1
            fields = ep.skill_fields()
            fields["task"] += DONE_HINT
            texts = ep.ask("clea_planner", tag="clea_planner", temperature=self.temperature, max_tokens=400,
                           belief=belief, observation=description, history=format_history(history),
                           reflection=reflection, max_calls=self.max_calls, **fields)
            if texts is None:
                break
            reply = parse_subgoal_reply(texts[0], self.max_calls)
            if not reply.ok:
                bad += 1
                why = "; ".join(reply.errors) or "no actions"
                ep.count_malformed("clea_planner", why)
                if bad >= self.max_malformed:
                    ep.stop(f"{bad} malformed planner replies in a row")
                    break
                reflection = (f"Reflection: your last reply could not be used ({why}). Write exactly one fenced "
                              f"JSON block with \"subgoal\" and \"actions\".")
                continue
            bad, reflection = 0, ""
            ep.emit("subgoal", subgoal=reply.subgoal, actions=[str(c) for c in reply.calls])
            for call in reply.calls:
                if call.name.lower() in DONE_NAMES and not call.args:
                    ep.note("the planner says the task is complete")
                    done = True
                    break
                g = ep.ground(call)
                if isinstance(g, GroundingError):
                    ep.execute(g, source="clea", correction=correction)
                    history.append(f"{call} -> rejected: {g.reason}")
                    reflection = f"Reflection: {call} cannot run: {g.reason}. Use only the scene's names."
                    correction = True
                    ep.use_correction()
                    break
                if self.use_critic:
                    p, feedback = self.criticise(ep, belief, description, history, g.call)
                    if ep.stopped:
                        break
                    ep.emit("critic", action=str(g.call), p=p, feedback=feedback)
                    if p is not None and p < self.threshold:
                        counts["critic_rejections"] += 1
                        reflection = (f"Reflection: the critic rejected {g.call} (feasibility {p:.2f} < "
                                      f"{self.threshold:g}): {feedback}")
                        ep.note(f"critic rejected {g.call} (p={p:.2f}); replanning")
                        break
                if not ep.budget_left():
                    break
                n_events, before = len(ep.events()), ep.positions()
                result = ep.execute(g, source="clea", correction=correction)
                correction = False
                if ep.stopped:
                    break
                history.append(outcome_line(g.call, result))
                changed = ep.unexpected_change(g.call, n_events, before)
                description = self.observe(ep)
                if description is None:
                    break
                feedback = result.message or ("ok" if result.success else result.failure)
                if not result.success:
                    feedback = f"failed ({result.failure}): {feedback}"
                if changed:
                    feedback += f" The scene changed unexpectedly: {changed}."
                belief = self.remember(ep, belief, f"Observation: {description}\nAction: {g.call}\n"
                                                   f"Feedback: {feedback}")
                counts["memory_updates"] += 1
                if not result.success:
                    counts["failure_replans"] += 1
                    reflection = f"Reflection: {g.call} failed ({result.failure}): {result.message}. Replan from here."
                    correction = True
                    ep.use_correction()
                    break
                if changed:
                    counts["perturbations_noticed"] += 1
                    ep.note(f"perturbation noticed: {changed}; replanning")
                    reflection = (f"Reflection: the scene changed unexpectedly ({changed}); the old plan may no "
                                  f"longer fit. Replan from the current observation.")
                    correction = True
                    ep.use_correction()
                    break
        return ep.finish(**counts, belief=belief)


__all__ = ["CleaAgent"]
