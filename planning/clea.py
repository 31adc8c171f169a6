"""CLEA (Lei et al., IROS 2025): a closed-loop agent with separate observer, memory, planner and critic roles.

- observer: one LLM call turns the text observation into a short factual description;
- memory: an INCREMENTAL belief, updated from the previous belief and the latest record only
  (observation, action, feedback), never a re-summary of the whole history;
- planner: reasoning, then one fenced JSON block with a subgoal and 1-3 skill calls (strict parse);
- critic: before every action, k votes (default 5) give the probability that the action is feasible;
  below the threshold tau (default 0.5) the rest of the chunk is dropped and the critic's feedback
  becomes the next planner call's reflection;
- replanning after every chunk, after a failure, and after a change the observation shows: the text
  observation after a skill is compared with the one before it (`episode.observation_change`; objects the
  skill names are ignored). The agent never reads the env's event log or true poses, so a perturbation
  counts as noticed only when the observation text shows it; feedback is `episode.outcome_line`, as for
  every planner. A hard step budget, a correction budget and a planner-round budget.

Deviations from the released code (SP4595/CLEA-Closed-Loop-Embodied-Agent), on purpose:
- [DEVIATION: incremental memory] the released summariser re-summarises the whole trajectory (up to 30
  observation/action/feedback records) after every action; here the belief is updated from the previous
  belief and the newest record only.
- [DEVIATION: vote-based feasibility] the released critic is one boolean call ("Action Suitability") on
  the camera images; here k sampled YES/NO votes give a feasibility probability compared with tau (the
  paper's probabilistic assessment), and its feedback becomes the reflection only on a rejection (the
  released loop passes the critic's feedback on as the reflection even when it accepts).
- [DEVIATION: text observer] the released observer and critic are VLMs on two robots' camera images (the
  observer focused by the subgoal); here the observer describes the same text observation every planner
  gets, without a subgoal focus, and the critic reads that description.
- [DEVIATION: abort on failure] in the released loop a failed skill only goes into memory and the rest of
  the chunk still runs; here a failure (or an observed change) drops the rest of the chunk and replans
  with a reflection.
- [DEVIATION: change trigger] the released loop replans only after a chunk or a critic rejection; here a
  change the observation text shows beyond the skill's own objects also ends the chunk.
- [DEVIATION: termination and budgets] the released loop has no done action and no limit (`while True`);
  here the planner can answer done(), and step, correction and round budgets end the episode.
- [DEVIATION: parsed skills] the released planner writes a YAML block of Python calls that are run with
  `eval`; here a JSON block of calls is parsed by a strict grammar and grounded in the scene's names.
- [DEVIATION: one-line notes] the observer's description and the memory's belief are each one line of at
  most 240 characters (`NOTE_CHARS`, a grammar where the backend has one; at most `NOTE_TOKENS` tokens);
  the released roles write free text. Unbounded, a 135M model filled 300 tokens per call, two thirds of
  an episode's generated tokens.
- [DEVIATION: prompts] no task knowledge file; planner temperature 0 (released: 0.2), critic votes at 0.7.
"""
from __future__ import annotations

from typing import Optional

from taskweave.planning.episode import (DONE_NAMES, Episode, EpisodeRecord, format_history, observation_change,
                                         outcome_line)
from taskweave.planning.grounding import GroundingError
from taskweave.planning.grounding import accept_probability, parse_subgoal_reply, parse_verdict

DONE_HINT = " (when the task is already complete, give the single action done())"
FIRST_BELIEF = "Nothing has been done yet; the observation below is all that is known."


NOTE_CHARS = 240    # observer description and memory belief: one line of at most this many characters
NOTE_TOKENS = 96

class CleaAgent:
    """Observer, incremental memory, subgoal planner and probabilistic critic in a closed loop."""

    name = "clea"

    def __init__(self, critic_votes: int = 5, threshold: float = 0.5, max_calls: int = 3, max_steps: int = 40,
                 max_corrections: int = 10, max_rounds: Optional[int] = None, max_malformed: int = 3,
                 temperature: float = 0.0, critic_temperature: float = 0.7, use_critic: bool = True,
                 constrain: str = "grammar"):
        """Configure the critic (k votes, threshold tau), the chunk size and the budgets."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"critic threshold must be in [0, 1], got {threshold}")
        self.critic_votes, self.threshold, self.max_calls = int(critic_votes), float(threshold), int(max_calls)
        self.max_steps, self.max_corrections, self.max_malformed = int(max_steps), int(max_corrections), int(max_malformed)
        self.max_rounds = int(max_rounds) if max_rounds is not None else self.max_steps + self.max_corrections
        self.temperature, self.critic_temperature, self.use_critic = float(temperature), float(critic_temperature), \
            bool(use_critic)
        self.constrain = constrain

    def config(self) -> dict:
        """The agent's settings as a dict."""
        return {"critic_votes": self.critic_votes, "threshold": self.threshold, "max_calls": self.max_calls,
                "max_rounds": self.max_rounds, "use_critic": self.use_critic}

    # ---- roles ------------------------------------------------------------------------------
    def observe(self, ep: Episode, observation: Optional[str] = None) -> Optional[str]:
        """Observer: the text observation (the executor's, unless given) turned into a short description
        (one LLM call)."""
        observation = ep.executor.observe() if observation is None else observation
        texts = ep.ask("clea_observer", tag="clea_observer", max_tokens=NOTE_TOKENS, task=ep.executor.instruction,
                       observation=observation, constraint=ep.constraint("note", max_chars=NOTE_CHARS))
        if texts is None:
            return None
        if not texts[0].strip():
            ep.count_malformed("clea_observer", "empty description")
            return observation
        return texts[0].strip()

    def remember(self, ep: Episode, belief: str, record: str) -> str:
        """Memory: the new belief from the previous belief and the latest record only (one LLM call)."""
        texts = ep.ask("clea_memory", tag="clea_memory", max_tokens=NOTE_TOKENS, task=ep.executor.instruction,
                       belief=belief, records=record, constraint=ep.constraint("note", max_chars=NOTE_CHARS))
        if texts is None:
            return belief
        if not texts[0].strip():
            ep.count_malformed("clea_memory", "empty belief")
            return belief
        return texts[0].strip()

    def criticise(self, ep: Episode, belief: str, description: str, history: list, call) -> tuple:
        """Critic: (probability the action is feasible now or None if unreadable, feedback) from k votes."""
        texts = ep.ask("clea_critic", tag="clea_critic", n=self.critic_votes, temperature=self.critic_temperature,
                       max_tokens=80, constraint=ep.constraint("verdict"), task=ep.executor.instruction,
                       belief=belief, observation=description,
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
                     constrain=self.constrain,
                     max_steps=self.max_steps, max_corrections=self.max_corrections, config=self.config())
        counts = {"rounds": 0, "critic_checks": 0, "critic_rejections": 0, "critic_accepted_failed": 0,
                  "perturbations_noticed": 0, "failure_replans": 0, "memory_updates": 0}
        belief, history, reflection, correction, bad = FIRST_BELIEF, [], "", False, 0
        seen = executor.observe()            # the last text observation the agent saw
        description = self.observe(ep, seen)
        done = False
        while not ep.stopped and not done and description is not None:
            if counts["rounds"] >= self.max_rounds:
                ep.stop(f"planner round budget of {self.max_rounds} exhausted")
                break
            counts["rounds"] += 1
            fields = ep.skill_fields()
            fields["task"] += DONE_HINT
            texts = ep.ask("clea_planner", tag="clea_planner", temperature=self.temperature, max_tokens=400,
                           constraint=ep.constraint("subgoal", max_calls=self.max_calls),
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
                    outcome = outcome_line(call, ep.execute(g, source="clea", correction=correction))
                    history.append(outcome)
                    reflection = f"Reflection: {outcome}. Use only the scene's names."
                    correction = True
                    ep.use_correction()
                    break
                accepted = False                 # the critic judged this skill feasible before it ran
                if self.use_critic:
                    p, feedback = self.criticise(ep, belief, description, history, g.call)
                    if ep.stopped:
                        break
                    ep.emit("critic", action=str(g.call), p=p, feedback=feedback)
                    counts["critic_checks"] += int(p is not None)
                    if p is not None and p < self.threshold:
                        counts["critic_rejections"] += 1
                        reflection = (f"Reflection: the critic rejected {g.call} (feasibility {p:.2f} < "
                                      f"{self.threshold:g}): {feedback}")
                        ep.note(f"critic rejected {g.call} (p={p:.2f}); replanning")
                        break
                    accepted = p is not None
                if not ep.budget_left():
                    break
                before = seen
                result = ep.execute(g, source="clea", correction=correction)
                correction = False
                if ep.stopped:
                    break
                outcome = outcome_line(g.call, result)
                history.append(outcome)
                seen = executor.observe()
                changed = observation_change(before, seen, g.call)   # what the observation text shows, only
                description = self.observe(ep, seen)
                if description is None:
                    break
                feedback = outcome
                if changed:
                    feedback += f" The scene changed unexpectedly: {changed}."
                belief = self.remember(ep, belief, f"Observation: {description}\nAction: {g.call}\n"
                                                   f"Feedback: {feedback}")
                counts["memory_updates"] += 1
                if not result.success:
                    counts["failure_replans"] += 1
                    counts["critic_accepted_failed"] += int(accepted)   # the critic let a failing skill run
                    reflection = f"Reflection: {outcome}. Replan from here."
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
