"""Tree-Planner (Hu et al., ICLR 2024): sample many plans at once, merge them into an action tree, and
ask the LLM only where the tree branches; on failure, correct among siblings or backtrack.
(~420 lines: the tree, its walk with physical or restoring backtracking, and the five ways to decide a branch.)

1. Plan sampling: ONE request for N plans (default 50, temperature 0.8, top_p 0.95). Each plan is
   grounded line by line (near-miss names mapped to scene names); plans still invalid are dropped.
2. Action tree: a trie keyed by the exact normalised action line; `[END]` closes every plan; identical
   prefixes merge; every node keeps the indices of the plans through it.
3. Grounded deciding: from the root, a node with one valid child costs no LLM call; otherwise k votes
   (default 20, temperature 0.7) over lettered options, shown the text observation cut down to the objects
   the candidate children name (`episode.describe_subset` of `executor.observe()`), the task and the
   actions executed so far. `decide="logprobs"` (`--decide`) replaces the k votes by one forward pass that
   reads the log-probability of each option letter as the reply (`LLMClient.score_options`; the embedded
   llama backend can); "auto" uses it where the backend can; "permuted" scores the letters once per cyclic
   order of the options and averages, so a letter or position bias cancels (k passes for k options);
   "majority" asks nothing at a branch point and follows the child most sampled plans pass through (the
   N samples' self-consistency; the observation then only matters through failures and corrections). The
   record's `decide_mode` says which ran.
4. Correction: a failed child is marked invalid and the LLM re-decides among the valid siblings with the
   failure (`episode.outcome_line`, the feedback every planner gets) in the prompt; with none left, the
   planner backtracks to the nearest ancestor with valid children. Correction budget: 10.
   Retry budget per node: a transient failure (`TRANSIENT_FAILURES`: grasp_slipped, grasp_failed, timeout)
   leaves the node valid for up to `node_retries` (default 1) more tries; any other failure (invalid_args,
   unreachable, not_holding, ...) rules it out at once.

Backtracking, `backtrack=` (`taskweave plan --backtrack`):
- "physical" (default; what a robot can do): no simulator undo, `executor.restore` is never called. After
  a failure the world stays as the failed skill left it and the next choice among the siblings is grounded
  on that real state. Backtracking to an ancestor does not undo anything either: it means continuing from
  the real state with the ancestor's remaining valid children (the actions below the ancestor that did run
  stay done). The history shown to the LLM is every skill that really ran, in order, failures included.
  A candidate whose action already failed (not transiently) in exactly the observation seen now is ruled
  out without running it again (the same call in the same observed state fails the same way).
- "restore" (the paper's code; privileged): the snapshot taken before the failed child is restored, and a
  backtrack restores the ancestor's snapshot. The history shown to the LLM is the path from the root to the
  current node, so undone actions never appear. Every restore is counted (`extra["restores"]`) and the
  record says `privileged: true`. A restore rewinds the physics only: the perturbation clock is not
  rewound and a perturbation that fired never fires again (`TaskEnv.restore`). On an executor that cannot
  restore (`can_restore` false, e.g. ROS) the planner falls back to physical and notes it.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from taskweave.planning.episode import Episode, EpisodeRecord, describe_subset, format_history, outcome_line
from taskweave.planning.grounding import LineError, clean_line, ground_plan, is_terminator
from taskweave.planning.prompts import load_example
from taskweave.planning.grounding import format_options, vote_option
from taskweave.sim.errors import UserError
from taskweave.sim.skill_types import SkillCall, SkillSyntaxError

END = "[END]"
END_OPTION = "[END] (stop: the task is complete)"
BACKTRACK_MODES = ("physical", "restore")
DECIDE_MODES = ("votes", "logprobs", "auto", "permuted", "majority")
SCORING_MODES = ("logprobs", "permuted")   # decide modes that read the option letters' log-probabilities
TRANSIENT_FAILURES = frozenset({"grasp_slipped", "grasp_failed", "timeout"})   # worth trying the node again


class BacktrackModeError(UserError, ValueError):
    """A --backtrack value that is not a mode."""


class DecideModeError(UserError, ValueError):
    """A --decide value that is not a mode, or logprobs asked of a backend that cannot read them."""


def normalize_action(action) -> str:
    """The exact key of an action line: the canonical text of its skill call, or '[END]'."""
    if isinstance(action, SkillCall):
        return str(action)
    text = str(action)
    if is_terminator(text):
        return END
    line = clean_line(text)
    try:
        return str(SkillCall.parse(line))
    except (SkillSyntaxError, RecursionError, ValueError):
        return line


@dataclass(eq=False)
class TreeNode:
    """One action of the tree: its call, the plans through it, its children and its search state."""

    action: str
    call: Optional[SkillCall] = None
    parent: Optional["TreeNode"] = field(default=None, repr=False)
    depth: int = 0
    children: dict = field(default_factory=dict, repr=False)
    plan_ids: list = field(default_factory=list)
    valid: bool = True
    error: str = ""
    failures: int = 0       # times this node's action ran and failed
    snapshot: Any = field(default=None, repr=False)  # the scene after this node's action ran (the root's: before anything ran)

    @property
    def is_end(self) -> bool:
        """True for the `[END]` leaf that closes a plan."""
        return self.action == END

    def valid_children(self) -> list:
        """Children not yet ruled out, the most popular (most plans through them) first."""
        kids = [c for c in self.children.values() if c.valid]
        return sorted(kids, key=lambda c: -len(c.plan_ids))

    def path(self) -> list:
        """Nodes from the root's first child down to this one."""
        out, node = [], self
        while node is not None and node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


class ActionTree:
    """A prefix tree (trie) of sampled plans keyed by normalised action lines, each plan closed by `[END]`."""

    def __init__(self):
        """An empty tree: just the root."""
        self.root = TreeNode("")
        self.num_plans = 0

    def add_plan(self, actions: Iterable, plan_id: Optional[int] = None) -> TreeNode:
        """Insert one plan (skill calls or lines; `[END]` appended) and return its `[END]` leaf."""
        pid = self.num_plans if plan_id is None else plan_id
        self.num_plans += 1
        node = self.root
        node.plan_ids.append(pid)
        seq = [a for a in actions if normalize_action(a) != END] + [END]
        for a in seq:
            key = normalize_action(a)
            child = node.children.get(key)
            if child is None:
                call = a if isinstance(a, SkillCall) else (None if key == END else _parse(key))
                child = TreeNode(key, call, node, node.depth + 1)
                node.children[key] = child
            child.plan_ids.append(pid)
            node = child
        return node

    @classmethod
    def from_plans(cls, plans: Iterable) -> "ActionTree":
        """A tree built from a list of plans."""
        tree = cls()
        for p in plans:
            tree.add_plan(p)
        return tree

    def nodes(self) -> list:
        """Every node but the root, depth first."""
        out, stack = [], list(reversed(list(self.root.children.values())))
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(list(n.children.values())))
        return out

    def branch_points(self) -> int:
        """Nodes (root included) with more than one child."""
        return sum(len(n.children) > 1 for n in [self.root] + self.nodes())

    def to_text(self) -> str:
        """An indented listing of the tree with plan counts, for debugging and traces."""
        return "\n".join(f"{'  ' * (n.depth - 1)}{n.action}  x{len(n.plan_ids)}{'' if n.valid else '  (invalid)'}"
                         for n in self.nodes())


def _parse(key: str) -> Optional[SkillCall]:
    try:
        return SkillCall.parse(key)
    except (SkillSyntaxError, RecursionError, ValueError):
        return None


class TreePlanner:
    """Tree-Planner: one sampling call, an action tree, LLM votes only at branch points, backtracking."""

    name = "tree"

    def __init__(self, n_samples: int = 50, temperature: float = 0.8, top_p: float = 0.95, n_votes: int = 20,
                 vote_temperature: float = 0.7, max_corrections: int = 10, max_steps: int = 40,
                 max_tokens: int = 400, example: Optional[str] = None, constrain: str = "grammar",
                 backtrack: str = "physical", node_retries: int = 1, decide: str = "votes"):
        """Configure sampling (N plans), deciding (k votes), the correction and step budgets, backtracking
        ('physical' or the privileged 'restore'), the retries a node gets after a transient failure, and how
        branch points are decided: 'votes' (k sampled votes, the paper's), 'logprobs' (one forward pass over
        the option letters; the backend must read log-probabilities) or 'auto' (logprobs where the backend
        can, else votes)."""
        if decide not in DECIDE_MODES:
            raise DecideModeError(f"unknown decide mode {decide!r} (choose one of: {', '.join(DECIDE_MODES)})")
        self.decide = decide
        if backtrack not in BACKTRACK_MODES:
            raise BacktrackModeError(f"unknown backtrack mode {backtrack!r} (choose one of: "
                                     f"{', '.join(BACKTRACK_MODES)})")
        if int(node_retries) < 0:
            raise ValueError(f"node_retries must be >= 0, got {node_retries}")
        self.backtrack, self.node_retries = backtrack, int(node_retries)
        self.n_samples, self.temperature, self.top_p = int(n_samples), float(temperature), float(top_p)
        self.n_votes, self.vote_temperature = int(n_votes), float(vote_temperature)
        self.max_corrections, self.max_steps, self.max_tokens = int(max_corrections), int(max_steps), int(max_tokens)
        self.example = load_example("plan") if example is None else example
        self.constrain = constrain
        self.last_tree: Optional[ActionTree] = None

    def config(self) -> dict:
        """The planner's settings as a dict."""
        return {"n_samples": self.n_samples, "temperature": self.temperature, "top_p": self.top_p,
                "n_votes": self.n_votes, "vote_temperature": self.vote_temperature, "backtrack": self.backtrack,
                "node_retries": self.node_retries, "privileged": self.backtrack == "restore", "decide": self.decide}

    def sample_tree(self, ep: Episode) -> Optional[ActionTree]:
        """Sample N plans in one request, drop the invalid ones and build the action tree."""
        texts = ep.ask("tree_sample", tag="tree_sample", n=self.n_samples, temperature=self.temperature,
                       top_p=self.top_p, max_tokens=self.max_tokens, constraint=ep.constraint("plan"),
                       state=ep.executor.observe(),
                       example=self.example, **ep.skill_fields())
        if texts is None:
            return None
        tree, dropped, unreadable = ActionTree(), 0, 0
        for i, text in enumerate(texts):
            g = ground_plan(text, ep.objects, ep.zones, ep.stats)
            if not g.ok:   # a plan with an unreadable line or a name that fits nothing is dropped
                dropped += 1
                unreadable += int(any(isinstance(e, LineError) for e in g.errors) or not text.strip())
                continue
            tree.add_plan([c.call for c in g.calls], plan_id=i)
        if unreadable:
            ep.count_malformed("tree_sample", f"{unreadable} of {len(texts)} sampled plans were not skill-call lists",
                               k=unreadable)
        ep.plans_dropped = dropped
        return tree

    def run(self, executor, llm, *, task: str = "", seed: Optional[int] = None, backend: str = "",
            trace=None) -> EpisodeRecord:
        """Plan and act one episode; returns its EpisodeRecord."""
        ep = Episode(self.name, executor, llm, task=task, seed=seed, backend=backend, trace=trace,
                     constrain=self.constrain,
                     max_steps=self.max_steps, max_corrections=self.max_corrections, config=self.config())
        ep.plans_dropped, ep.decide_calls, ep.retries, ep.scored_decisions = 0, 0, 0, 0
        ep.backtrack = self.backtrack
        scoring = bool(getattr(llm, "supports_scoring", False))
        if self.decide in SCORING_MODES and not scoring:
            raise DecideModeError(f"--decide {self.decide} needs a backend that reads log-probabilities "
                                  f"({type(llm).__name__} cannot); use --decide votes or auto")
        ep.decide_mode = (self.decide if self.decide in SCORING_MODES + ("majority",) else
                          "logprobs" if self.decide == "auto" and scoring else "votes")
        if self.backtrack == "restore" and not getattr(executor, "can_restore", True):
            ep.backtrack = "physical"
            ep.config["privileged"] = False
            ep.note(f"{getattr(executor, 'kind', 'this executor')} cannot restore a scene: backtracking physically")
        tree = self.last_tree = self.sample_tree(ep)
        if tree is None:
            return ep.finish(**self._extra(ep, None))
        if tree.num_plans == 0:
            ep.stop(f"none of the {self.n_samples} sampled plans was valid")
            return ep.finish(**self._extra(ep, tree))
        self._walk(ep, tree)
        return ep.finish(**self._extra(ep, tree))

    def _walk(self, ep: Episode, tree: ActionTree) -> None:
        restore = ep.backtrack == "restore"
        node = tree.root
        if restore:
            node.snapshot = ep.executor.snapshot()
        ran = []                       # outcome lines of every skill that really ran (physical history)
        failed_in = {}                 # physical: action -> observations it failed in (not transiently)
        error, correction = "", False
        while not ep.stopped:
            cands = node.valid_children()
            if failed_in and cands:    # the same action in the same observed state fails the same way: skip it
                seen = ep.executor.observe()
                for c in cands:
                    if seen in failed_in.get(c.action, ()):
                        c.valid, c.error = False, f"{c.action} already failed in this observed state"
                        ep.note(f"ruled out {c.action}: it already failed in the state observed now")
                cands = node.valid_children()
            if not cands:
                if node.parent is None:
                    ep.stop("every branch of the action tree failed")
                    return
                node.valid = False
                node.error = node.error or "no valid continuation"
                parent = node.parent
                if restore:
                    ep.restore(parent.snapshot, f"backtracked from {node.action} to {parent.action or 'the start'}")
                    error = f"Every continuation after {node.action} failed, so it was undone."
                else:
                    ep.note(f"backtracked from {node.action} to {parent.action or 'the start'} "
                            f"(nothing undone: continuing from the current state)")
                    error = (f"Every continuation after {node.action} failed. Nothing was undone: choose among "
                             f"the alternatives to {node.action} from the current state.")
                node, correction = parent, True
                continue
            if len(cands) == 1:
                child, source = cands[0], "tree"
            else:
                history = [f"{n.action} -> ok" for n in node.path()] if restore else ran
                child = self._decide(ep, cands, error, history)
                source = "decide"
                if child is None:
                    return
            if child.is_end:
                ep.note("reached [END]: the plan is complete")
                return
            if not ep.budget_left():
                return
            result = ep.execute(child.call, source=source, correction=correction)
            if ep.stopped:
                return
            line = outcome_line(child.call, result)
            ran.append(line)
            if result.success:
                if restore:
                    child.snapshot = ep.executor.snapshot()
                node, error, correction = child, "", False
                continue
            child.failures += 1
            child.error = line
            retry = result.failure in TRANSIENT_FAILURES and child.failures <= self.node_retries
            if retry:
                ep.retries += 1
                ep.note(f"{child.action} failed ({result.failure}), a transient failure: it may be tried again "
                        f"({child.failures} of {self.node_retries} retries used)")
            else:
                child.valid = False
                if not restore:
                    failed_in.setdefault(child.action, set()).add(ep.executor.observe())
            if not ep.use_correction():
                return
            if restore:
                ep.restore(node.snapshot, f"undid the failed {child.action}")
            error, correction = f"The last attempt failed: {line}", True

    def _decide(self, ep: Episode, cands: list, error: str, history: list) -> Optional[TreeNode]:
        """Majority of k votes over the lettered candidates (the most popular candidate if no vote is
        readable); by the option letters' scores (logprobs, permuted); or the sampled plans' majority."""
        ep.decide_calls += 1
        if ep.decide_mode == "majority":   # the sampled plans' own majority: no LLM call, no observation needed
            chosen = cands[0]               # valid_children(): the most plans through it first
            ep.emit("decide", options=[c.action for c in cands], plans={i: len(c.plan_ids) for i, c in enumerate(cands)},
                    chosen=chosen.action)
            return chosen
        names = [a for c in cands if c.call is not None for a in c.call.objects()]
        observation = describe_subset(ep.executor.observe(), names)
        if ep.decide_mode in SCORING_MODES:
            orders = len(cands) if ep.decide_mode == "permuted" else 1
            return self._decide_by_scores(ep, cands, error, history, observation, orders)
        options = format_options([END_OPTION if c.is_end else c.action for c in cands])
        texts = ep.ask("tree_decide", tag="tree_decide", n=self.n_votes, temperature=self.vote_temperature,
                       max_tokens=8, constraint=ep.constraint("option", n_options=len(cands)),
                       task=ep.executor.instruction, observation=observation, history=format_history(history),
                       options=options, error=error)
        if texts is None:
            return None
        idx, votes, bad = vote_option(texts, len(cands))
        if bad:
            ep.count_malformed("tree_decide", f"{bad} of {len(texts)} votes named no option", k=bad)
        if idx is None:
            ep.note("no readable vote; taking the most popular branch")
            idx = 0
        ep.emit("decide", options=[c.action for c in cands], votes={int(k): int(v) for k, v in votes.items()},
                chosen=cands[idx].action)
        return cands[idx]

    def _decide_by_scores(self, ep: Episode, cands: list, error: str, history: list, observation: str,
                          orders: int) -> Optional[TreeNode]:
        """The candidate whose option letter the model finds most likely as its reply: one forward pass
        ("logprobs", orders=1), or the letter scores averaged over `orders` = k cyclic orders of the k options,
        so no option gains from its letter or position ("permuted": a small model's first-letter bias; the
        cyclic-permutation debiasing of Zheng et al., ICLR 2024; k passes sharing their prefix up to the options)."""
        k = len(cands)
        letters = list(string.ascii_uppercase[:k])
        total = [0.0] * k
        for shift in range(orders):
            order = [(i + shift) % k for i in range(k)]   # order[j]: the candidate shown as letter j
            options = format_options([END_OPTION if cands[i].is_end else cands[i].action for i in order])
            scores = ep.score("tree_decide", letters, tag="tree_decide", task=ep.executor.instruction,
                              observation=observation, history=format_history(history), options=options,
                              error=error)
            if scores is None:
                return None
            for j, i in enumerate(order):
                total[i] += scores[letters[j]] / orders
        ep.scored_decisions += 1
        idx = max(range(k), key=lambda i: total[i])
        ep.emit("decide", options=[c.action for c in cands], logprobs={i: round(total[i], 4) for i in range(k)},
                **({"permutations": orders} if orders > 1 else {}), chosen=cands[idx].action)
        return cands[idx]

    def _extra(self, ep: Episode, tree: Optional[ActionTree]) -> dict:
        return {"plans_sampled": self.n_samples, "plans_valid": tree.num_plans if tree else 0,
                "plans_dropped": int(getattr(ep, "plans_dropped", 0)),
                "tree_nodes": len(tree.nodes()) if tree else 0, "tree_branch_points": tree.branch_points() if tree else 0,
                "decide_calls": int(getattr(ep, "decide_calls", 0)), "node_retries_used": int(getattr(ep, "retries", 0)),
                "backtrack": getattr(ep, "backtrack", self.backtrack),
                "decide_mode": getattr(ep, "decide_mode", "votes"),
                "scored_decisions": int(getattr(ep, "scored_decisions", 0))}


__all__ = ["TreePlanner", "ActionTree", "TreeNode", "normalize_action", "END", "BACKTRACK_MODES", "DECIDE_MODES",
           "DecideModeError",
           "TRANSIENT_FAILURES", "BacktrackModeError"]
