"""Compare the four planners (Tree-Planner, CLEA, iterative, open loop) on the task library, static and perturbed.

Every planner sees the same offline LLM (the task's symbolic model with the same seeded error rates; it
is not a language model), the same tasks, seeds and perturbation schedules, on one physics backend.
Writes `docs/results/planning.md` (tables, headline, the exact command, backend, date), a per-episode
JSON file beside it and, when matplotlib is installed, `docs/results/planning.png`.

    python experiments/planners.py                       # the default subset, 5 seeds, mujoco
    python experiments/planners.py --tasks all --seeds 10
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import time
from collections import defaultdict

from taskweave.sim.errors import RunError, UserError
from taskweave.sim.fileio import atomic_write_json, atomic_write_text
from taskweave.sim.locks import FolderLock
from taskweave.sim.rollouts import make_executor
from taskweave.planning import PLANNERS
from taskweave.envs.metrics import rate_cell
from taskweave.planning.llm import LLMClient, estimate_tokens, make_llm, messages_text
from taskweave.planning.llm.replay import ReplayClient
from taskweave.planning.llm.offline import ErrorRates, OfflineLLM
from taskweave.planning.episode import run_episode
from taskweave.planning.prompts import load_example
from taskweave.planning.tree_planner import DECIDE_MODES

DEFAULT_TASKS = ("BlockInBowl", "PlaceInZone", "StackOnBlock", "StackTower", "SortByColour", "PackTray")
# one schedule per task, fired before the N-th skill (@N); $goalN is the object of goal N (names depend on the seed)
PERTURBATIONS = {
    "BlockInBowl": "move:$goal0@1", "PlaceInZone": "move:$goal0@1", "StackOnBlock": "grasp_fail:1.0@0",
    "StackTower": "knock@2", "SortByColour": "move:$goal0@2", "PackTray": "move:$goal0@2",
    "AllColorBlocksInBowl": "move:$goal0@2", "StackPyramid": "move:$goal0@2", "AlignInLine": "move:$goal0@2",
    "SwapBlocks": "grasp_fail:1.0@4", "TowerOfHanoi": "grasp_fail:1.0@2", "Unstack": "grasp_fail:1.0@1",
    "PushToZone": "move:$goal0@0", "RotateBlock": "grasp_fail:1.0@0",
}
CRITIC_COUNTS = ("critic_checks", "critic_rejections", "critic_accepted_failed")   # CLEA's, per episode
NAMES = {"tree": "Tree-Planner", "clea": "CLEA", "iterative": "Iterative", "openloop": "Open loop"}
METRICS = ("success", "goal_condition_recall", "executability", "corrections", "failures", "llm_calls",
           "total_tokens", "malformed", "restores", "wall_time")
# where this CLEA deviates from the released code (SP4595/CLEA-Closed-Loop-Embodied-Agent); planning/clea.py says more
CLEA_DEVIATIONS = (
    "incremental memory: the belief is updated from the previous belief and the newest record only (released: "
    "the whole trajectory, up to 30 records, is re-summarised after every action)",
    "vote-based feasibility: k sampled YES/NO critic votes give a probability compared with tau (released: one "
    "boolean critic call on camera images); its feedback becomes the reflection only on a rejection",
    "text observer: the observer and critic read the same text observation as every planner (released: VLMs "
    "on two robots' images, the observer focused by the subgoal)",
    "abort on failure: a failed skill or an observed change drops the rest of the chunk and replans (released: "
    "a failure only goes into memory and the chunk runs on)",
    "termination and budgets: a done() action and step, correction and round budgets (released: `while True`)",
    "parsed skills: a JSON block of calls parsed by a strict grammar and grounded (released: a YAML block of "
    "Python calls run with `eval`); no task knowledge file; planner temperature 0 (released: 0.2)",
)


class FirstPrompts(LLMClient):
    """Any client, noting the rendered length of the first prompt of each tag (order, characters, tokens)."""

    def __init__(self, inner: LLMClient):
        super().__init__(inner.model)
        self.inner, self.first = inner, {}
        self.constraint_kinds = inner.constraint_kinds | (
            frozenset({"grammar", "json_schema", "choice"}) if isinstance(inner, ReplayClient) else frozenset())

    def _complete(self, messages, n, temperature, top_p, max_tokens, stop, tag, constraint=None):
        if tag not in self.first:
            text = messages_text(messages)
            self.first[tag] = [len(self.first), len(text), estimate_tokens(text)]
        return self.inner.complete(messages, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                   stop=stop, tag=tag, constraint=constraint)

    @property
    def supports_scoring(self) -> bool:
        """Whether the wrapped client scores options (Tree-Planner's --decide logprobs)."""
        return self.inner.supports_scoring

    def _score(self, messages, options, tag):
        if tag not in self.first:
            text = messages_text(messages)
            self.first[tag] = [len(self.first), len(text), estimate_tokens(text)]
        return self.inner.score_options(messages, options, tag=tag)

    def bind(self, world):
        """Pass the world on (the offline oracle answers from it)."""
        self.inner.bind(world)
        return self

    def close(self) -> None:
        """Close the wrapped client."""
        self.inner.close()


def make_job_llm(job: dict) -> FirstPrompts:
    """The LLM of one episode: the offline oracle with its error rates, or a real backend (recorded when asked)."""
    if job["llm"] == "offline":
        return FirstPrompts(OfflineLLM(seed=job["seed"], errors=ErrorRates.parse(job["errors"])))
    kw = {"seed": job["seed"]} if job["llm"].startswith("llama:") else {}
    inner = make_llm(job["llm"], **kw)
    if job.get("record"):   # one record file per worker process, merged by the parent at the end
        part = f"{job['record']}.part{os.getpid()}"
        if os.path.isfile(job["record"]) and not os.path.exists(part):
            shutil.copyfile(job["record"], part)   # answers recorded by an earlier run are replayed, not re-asked
        inner = ReplayClient(part, inner=inner, mode="auto")
    return FirstPrompts(inner)


def episode_job(job: dict) -> dict:
    """Run one episode and return its summary row (for a worker process)."""
    kw = {"tree": {"n_samples": job["samples"], "n_votes": job["votes"], "backtrack": job["backtrack"],
                   "decide": job.get("decide", "votes")},
          "clea": {"critic_votes": job["critic_votes"]}}
    llm = make_job_llm(job)
    try:
        rec = run_episode(job["task"], job["planner"], backend=job["backend"], seed=job["seed"], llm=llm,
                          perturb=job["perturb"], planner_kwargs={**kw.get(job["planner"], {}),
                                                                  "constrain": job["constrain"]})
    finally:
        llm.close()
    followed, repeats = rec.repeats_after_failure()
    return {"task": job["task"], "planner": job["planner"], "condition": job["condition"], "seed": job["seed"],
            "perturb": rec.extra.get("perturbations", ""), "success": bool(rec.success),
            "goal_condition_recall": rec.goal_condition_recall, "executability": rec.executability,
            "corrections": rec.corrections, "failures": rec.failures, "llm_calls": rec.llm_calls,
            "prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens,
            "total_tokens": rec.total_tokens, "malformed": rec.extra.get("malformed_replies", 0),
            "skills": len(rec.steps), "wall_time": rec.wall_time, "error": rec.error,
            "restores": rec.extra.get("restores", 0), "privileged": bool(rec.extra.get("privileged", False)),
            "first_prompts": llm.first, "events": rec.extra.get("events", []), "llm": rec.llm,
            "prompt_tokens_sent": rec.prompt_tokens_sent, "cached_calls": llm.meter.cached_calls,
            "failures_followed": followed, "repeats_after_failure": repeats,
            **{k: int(rec.extra.get(k, 0)) for k in CRITIC_COUNTS}}


def merge_records(path: str) -> None:
    """Join the workers' record files into one replay file (kept lines first, then new ones), atomically."""
    import glob
    parts = sorted(glob.glob(glob.escape(path) + ".part*"))
    if not parts:
        return
    lines = []
    for f in ([path] if os.path.isfile(path) else []) + parts:
        with open(f, encoding="utf-8") as fh:
            lines += [ln if ln.endswith("\n") else ln + "\n" for ln in fh if ln.strip()]
    atomic_write_text(path, "".join(dict.fromkeys(lines)))
    for f in parts:
        os.unlink(f)


def prompt_lengths(rows: list) -> dict:
    """planner -> [(tag, mean characters, mean est. tokens)] of the first prompt of each tag, in asking order."""
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for tag, (order, chars, tokens) in r.get("first_prompts", {}).items():
            acc[r["planner"]][tag].append((order, chars, tokens))
    out = {}
    for planner, tags in acc.items():
        means = [(sum(o for o, _, _ in v) / len(v), tag, sum(c for _, c, _ in v) / len(v),
                  sum(t for _, _, t in v) / len(v)) for tag, v in tags.items()]
        out[planner] = [(tag, c, t) for _, tag, c, t in sorted(means)]
    return out


def aggregate(rows: list, keys=("planner", "condition")) -> dict:
    """Mean of every metric per group of rows."""
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return {g: {"n": len(rs), **{m: sum(float(r[m]) for r in rs) / len(rs) for m in METRICS}}
            for g, rs in groups.items()}


def _rel(new: float, base: float) -> str:
    return f"{100.0 * (new - base) / base:+.1f}%" if base else "n/a"


def headline(agg: dict, real: bool = True) -> list:
    """The comparisons the papers report: Tree vs Iterative (tokens, corrections), CLEA vs open loop (success).

    The papers' figures are set beside ours only for a real language model: against the offline oracle the
    numbers test control flow, not a replication."""
    out = []

    def paper(text: str) -> str:
        return f"; paper: {text}" if real else ""
    for cond in ("static", "perturbed"):
        t, i = agg.get(("tree", cond)), agg.get(("iterative", cond))
        if t and i:
            out.append(f"- {cond}: Tree-Planner vs Iterative — tokens {t['total_tokens']:.0f} vs {i['total_tokens']:.0f} "
                       f"per episode ({_rel(t['total_tokens'], i['total_tokens'])}{paper('-92.2% vs the best earlier method')}), "
                       f"corrections {t['corrections']:.2f} vs {i['corrections']:.2f} "
                       f"({_rel(t['corrections'], i['corrections'])}{paper('-40.5%')}), success "
                       f"{100 * t['success']:.0f}% vs {100 * i['success']:.0f}%.")
    c, o = agg.get(("clea", "perturbed")), agg.get(("openloop", "perturbed"))
    if c and o:
        out.append(f"- perturbed: CLEA vs open loop — success {100 * c['success']:.1f}% vs {100 * o['success']:.1f}% "
                   f"({100 * (c['success'] - o['success']):+.1f} points{paper('+67.3%')}), goal-condition recall "
                   f"{c['goal_condition_recall']:.2f} vs {o['goal_condition_recall']:.2f}.")
    return out


def write_markdown(path: str, rows: list, args, command: str, elapsed: float, plot: str) -> list:
    """Write the results page and return the headline lines."""
    agg = aggregate(rows)
    per_task = aggregate(rows, ("task", "planner", "condition"))
    conds = [c for c in ("static", "perturbed") if c in args.conditions]
    planners = [p for p in PLANNERS if p in args.planners]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    real = args.llm != "offline"
    head = headline(agg, real)
    lengths, example = prompt_lengths(rows), load_example("plan")
    model = rows[0].get("llm", args.llm) if rows else args.llm
    replay = args.llm.split(":", 1)[1] if args.llm.startswith("replay:") else ""
    about_llm = ((f"The LLM is `{model}`, a real language model, its replies answered here from the record file "
                  f"`{replay}` (no model is run; the record holds every exchange of the live run). Replies were "
                  f"constrained " if replay else
                  f"The LLM is `{args.llm}` (`{model}`), a real language model run locally, replies constrained ")
                 + f"(`--constrain {args.constrain}`) to the scene's skill grammar, option letters, YES/NO verdicts "
                 "and CLEA's JSON. Tokens are the model's own counts (a request's prompt counted once; "
                 "`prompt_tokens_sent` in the episode rows counts it per sampling pass)."
                 + (f" Every exchange is recorded in `{os.path.basename(args.record)}`: `--llm replay:"
                    f"{args.record}` regenerates this table without the model." if args.record else ""))
    about_oracle = ("The LLM is `offline-symbolic-oracle` (`planning/llm/offline.py`): **not a language model** but "
                    "the task's symbolic model (the oracle plan of the current state) with seeded mistakes, the same "
                    f"for every planner: `{json.dumps(ErrorRates.parse(args.errors).to_dict())}` (per plan line: "
                    "wrong object, missing step, extra step, hallucinated object, swapped order; `judge`: a wrong "
                    "deciding/critic vote). It ignores most of what a prompt says. Tokens are estimates (about 4 "
                    "characters a token; a request's prompt counted once, its n completions summed). This is a "
                    "**control-flow test** of the planners against a fixed error model, not a measure of planning "
                    "with a language model, and not a replication of the papers' figures.")
    title = (f"# Planner comparison on a real language model: {model}" if real else
             "# Control-flow test of the planners (offline symbolic oracle, not a language model)")
    lines = [title, "",
             f"Date: {dt.date.today().isoformat()} · backend: **{args.backend}** · seeds per task: {args.seeds} · "
             f"episodes: {len(rows)} · run time: {elapsed / 60:.1f} min on {args.workers} worker(s)", "",
             "Command:", "", "```", command, "```", "",
             about_llm if real else about_oracle, "",
             *([f"Replayed: {sum(r.get('cached_calls', 0) for r in rows)} of {sum(r['llm_calls'] for r in rows)} LLM "
                "calls were answered from the record file, not the model: wall times (and the run time) of those "
                "episodes do not include generation.", ""] if any(r.get("cached_calls") for r in rows) else []),
             *([args.note, ""] if getattr(args, "note", None) else []),
             *([f"Scope: planners run: {', '.join(NAMES[p] for p in planners)}"
                + (f"; not run: {', '.join(NAMES[p] for p in PLANNERS if p not in planners)}"
                   if len(planners) < len(PLANNERS) else "")
                + f"; {args.seeds} seed(s) per task; Tree-Planner N={args.samples}, k={args.votes}.", ""]
               if real else []),
             f"Planners: Tree-Planner N={args.samples} plans (T=0.8, top_p 0.95), "
             + (f"{args.votes} votes (T=0.7), " if args.decide == "votes" else
                "branch points decided by `--decide majority` (no LLM call: the child most sampled plans go "
                "through), " if args.decide == "majority" else
                f"branch points decided by `--decide {args.decide}` (the option letters' log-probabilities"
                + (", averaged over every cyclic order of the options" if args.decide == "permuted" else
                   " in one forward pass") + f" where the backend reads them, else {args.votes} votes at T=0.7), ")
             + 
             f"correction budget 10, backtracking **{args.backtrack}**"
             + (" (privileged: simulator restores, counted in the `restores` column)" if args.backtrack == "restore"
                else " (no simulator undo: the next choice is grounded on the real state)")
             + f", 1 retry per node after a transient failure; CLEA k={args.critic_votes} critic votes, tau=0.5, "
             "1-3 skills per subgoal; Iterative one skill per call, correction budget 10; open loop one plan, no "
             "feedback. Step budget 40.", "",
             "One contract for all: every planner sees the scene only through the same text observation and the "
             "same feedback line per skill (`outcome_line`); none reads the env's event log or true poses (CLEA "
             "notices a perturbation only when the observation text shows it). Tree-Planner, Iterative and open "
             "loop share one few-shot example file (`planning/prompts/examples/plan.txt`).", "",
             "## Overall (mean per episode; success with its 95% Wilson interval)", "",
             "| condition | planner | success | GCR | executability | corrections | failures | LLM calls | tokens "
             "| malformed | restores | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cond in conds:
        for p in planners:
            a = agg.get((p, cond))
            if a:
                k = round(a["success"] * a["n"])
                lines.append(f"| {cond} | {NAMES[p]} | {rate_cell(k, a['n'])} | {a['goal_condition_recall']:.2f} | "
                             f"{a['executability']:.2f} | {a['corrections']:.2f} | {a['failures']:.2f} | "
                             f"{a['llm_calls']:.1f} | {a['total_tokens']:.0f} | {a['malformed']:.2f} | "
                             f"{a['restores']:.2f} | {a['wall_time']:.2f} |")
    lines += ["", "## Headline", "", *head, "", "## Prompt lengths", "",
              "The first rendered prompt of each kind (system message included), mean over episodes; tokens are "
              "`planning.llm.estimate_tokens` estimates. The shared few-shot example is "
              f"{len(example)} characters (~{estimate_tokens(example)} tokens).", "",
              "| planner | prompt | characters | est. tokens |", "|---|---|---|---|"]
    for p in planners:
        for k, (tag, chars, tokens) in enumerate(lengths.get(p, [])):
            lines.append(f"| {NAMES[p]} | `{tag}`{' (first)' if k == 0 else ''} | {chars:.0f} | {tokens:.0f} |")
    lines += ["", "## Success rate per task", "",
              "| task | perturbation | " + " | ".join(f"{NAMES[p]} {c}" for c in conds for p in planners) + " |",
              "|---|---|" + "---|" * (len(conds) * len(planners))]
    for t in tasks:
        cells = [f"{100 * per_task[(t, p, c)]['success']:.0f}%" if (t, p, c) in per_task else "-"
                 for c in conds for p in planners]
        lines.append(f"| {t} | `{PERTURBATIONS.get(t, '')}` | " + " | ".join(cells) + " |")
    errors = defaultdict(int)
    for r in rows:
        if r["error"]:
            errors[(NAMES[r["planner"]], r["error"].split(":")[0][:70])] += 1
    if errors:
        lines += ["", "## Why episodes stopped early", "", "| planner | reason | episodes |", "|---|---|---|"]
        lines += [f"| {p} | {e} | {n} |" for (p, e), n in sorted(errors.items())]
    lines += recovery_section(rows, planners, conds)
    lines += ["", "## Notes", "",
              "- GCR is taken at the end of the episode; executability is the fraction of attempted skill calls "
              "that were grounded and ran without failing.",
              ("- Tree-Planner restores simulator snapshots when it backtracks (`--backtrack restore`): privileged "
               "information no robot has, counted per episode in `restores`. A restore rewinds the physics only: "
               "the perturbation clock is not rewound and a fired perturbation never fires again."
               if args.backtrack == "restore" else
               "- Tree-Planner backtracks physically (`--backtrack physical`): it never restores a simulator "
               "snapshot; after a failure it re-decides among the valid siblings from the real state, and "
               "backtracking to an ancestor continues from the real state with that ancestor's other children."),
              "- CLEA deviates from the released code (SP4595/CLEA-Closed-Loop-Embodied-Agent) on purpose; "
              "details in `planning/clea.py`:",
              *[f"  - [DEVIATION] {d}" for d in CLEA_DEVIATIONS],
              "- Per-episode rows: `" + os.path.basename(os.path.splitext(path)[0]) + "_episodes.json`."
              + (f" Plot: `{os.path.basename(plot)}`." if plot else " No plot (matplotlib is not installed).")]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return head


def recovery_section(rows: list, planners: list, conds: list) -> list:
    """What each planner did right after a failed skill, and how CLEA's critic judged the skills it let run.

    Rows from an older run (without these fields) give no section rather than zeros."""
    if not rows or any("repeats_after_failure" not in r for r in rows):
        return []
    critic_cols = "clea" in planners
    lines = ["", "## After a failed skill", "",
             "Summed over episodes. *Same call again*: the next skill the planner ran after a failure was the "
             "identical call (for Tree-Planner this includes its one retry per node after a transient failure)."
             + (" CLEA's critic: skills it judged, skills it rejected (tau=0.5), and skills it accepted that then "
                "failed when run." if critic_cols else ""), "",
             "| condition | planner | failed skills | followed by another skill | same call again |"
             + (" critic checks | critic rejections | accepted, then failed |" if critic_cols else ""),
             "|---|---|---|---|---|" + ("---|---|---|" if critic_cols else "")]
    for cond in conds:
        for p in planners:
            rs = [r for r in rows if r["planner"] == p and r["condition"] == cond]
            if not rs:
                continue
            total = {k: sum(int(r.get(k, 0)) for r in rs) for k in ("failures", "failures_followed",
                                                                    "repeats_after_failure", *CRITIC_COUNTS)}
            same = (f"{total['repeats_after_failure']} ({100 * total['repeats_after_failure'] / total['failures_followed']:.0f}%)"
                    if total["failures_followed"] else "0")
            critic = ([str(total[k]) for k in CRITIC_COUNTS] if p == "clea" else ["-", "-", "-"]) if critic_cols else []
            lines.append(f"| {cond} | {NAMES[p]} | {total['failures']} | {total['failures_followed']} | {same} |"
                         + "".join(f" {c} |" for c in critic))
    return lines


def write_plot(path: str, rows: list, args) -> str:
    """Bar charts of success rate and tokens per planner and condition; '' when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install matplotlib)", file=sys.stderr)
        return ""
    agg = aggregate(rows)
    planners = [p for p in PLANNERS if p in args.planners]
    conds = [c for c in ("static", "perturbed") if c in args.conditions]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    width = 0.8 / max(1, len(conds))
    for k, (metric, title, scale) in enumerate((("success", "success rate (%)", 100.0),
                                                ("total_tokens", "tokens per episode", 1.0),
                                                ("corrections", "corrections per episode", 1.0))):
        ax = axes[k]
        for j, c in enumerate(conds):
            vals = [scale * agg[(p, c)][metric] if (p, c) in agg else 0.0 for p in planners]
            ax.bar([i + j * width for i in range(len(planners))], vals, width, label=c)
        ax.set_xticks([i + width * (len(conds) - 1) / 2 for i in range(len(planners))])
        ax.set_xticklabels([NAMES[p] for p in planners], fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"planners with the offline symbolic LLM ({args.backend}, {args.seeds} seeds x {len(set(r['task'] for r in rows))} tasks)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    """Run the comparison and write the results page."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="default", help="'default' (a representative subset), 'all', or A,B,...")
    p.add_argument("--planners", default=",".join(PLANNERS))
    p.add_argument("--conditions", default="static,perturbed")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--note", default=None, help="a paragraph on how this run was made (e.g. resumed, replayed), "
                                                "printed in the report under the command")
    p.add_argument("--backend", default="mujoco")
    p.add_argument("--errors", default="default", help="offline LLM error rates: default | none | name=rate,...")
    p.add_argument("--samples", type=int, default=50, help="Tree-Planner plans sampled")
    p.add_argument("--votes", type=int, default=20, help="Tree-Planner votes per decision")
    p.add_argument("--critic-votes", type=int, default=5)
    p.add_argument("--decide", default="votes", choices=DECIDE_MODES,
                   help="Tree-Planner branch points: k sampled votes (the paper's), or one forward pass reading the "
                        "option letters' log-probabilities (llama backend), permuted (averaged over the "
                        "options' cyclic orders), or majority (no call: the child most sampled plans go through)")
    p.add_argument("--backtrack", default="physical", choices=("physical", "restore"),
                   help="Tree-Planner backtracking: physical (no simulator undo) or restore (privileged, counted)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="run the episodes on Ray: auto, HOST:PORT or local "
                   "(--record part files are written where each job runs: use a shared folder on several nodes)")
    p.add_argument("--llm", default="offline", help="offline (the symbolic oracle: a control-flow test) | "
                   "llama:MODEL | openai:MODEL | replay:FILE")
    p.add_argument("--constrain", default="grammar", choices=("grammar", "none"))
    p.add_argument("--record", default=None, help="record every exchange to this JSONL replay file (default for a "
                   "real model: beside --out, planning_<model>.jsonl)")
    p.add_argument("--out", default=None, help="default docs/results/planning.md (offline) or "
                   "docs/results/planning_<model>.md")
    args = p.parse_args(argv)
    slug = args.llm.split(":", 1)[-1].replace("/", "_").replace(".gguf", "") if args.llm != "offline" else ""
    if args.llm.startswith("replay:"):
        slug = os.path.splitext(os.path.basename(slug))[0].replace("planning_", "")
    args.out = args.out or (f"docs/results/planning_{slug}.md" if slug else "docs/results/planning.md")
    if args.record is None and args.llm.split(":", 1)[0] in ("llama", "openai"):
        args.record = os.path.splitext(args.out)[0] + ".jsonl"
    from taskweave.envs import TASKS
    tasks = list(TASKS) if args.tasks == "all" else (list(DEFAULT_TASKS) if args.tasks == "default"
                                                      else [t.strip() for t in args.tasks.split(",") if t.strip()])
    args.planners = [x.strip() for x in args.planners.split(",") if x.strip()]
    args.conditions = [x.strip() for x in args.conditions.split(",") if x.strip()]
    ErrorRates.parse(args.errors)
    jobs = [{"task": t, "planner": pl, "condition": c, "seed": s, "backend": args.backend, "errors": args.errors,
             "perturb": PERTURBATIONS.get(t, "grasp_fail:1.0@0") if c == "perturbed" else "",
             "samples": args.samples, "votes": args.votes, "critic_votes": args.critic_votes,
             "backtrack": args.backtrack, "decide": args.decide, "llm": args.llm, "constrain": args.constrain, "record": args.record}
            for t in tasks for c in args.conditions for s in range(args.seeds) for pl in args.planners]
    # one run at a time per record file: a second run would merge (and delete) this run's live part files
    with (FolderLock.for_file(args.record, "experiments/planners.py --record") if args.record
          else contextlib.nullcontext()):
        if args.record:
            merge_records(args.record)   # parts left by an interrupted run join the record first
        print(f"{len(jobs)} episodes: {len(tasks)} tasks x {len(args.conditions)} conditions x {args.seeds} seeds x "
              f"{len(args.planners)} planners on {args.backend}, {args.workers} worker(s)", flush=True)
        t0, rows = time.monotonic(), []
        rows = [None] * len(jobs)
        with make_executor(max(1, args.workers), args.ray) as pool:   # local workers end with this script, kill -9 too
            for i, (j, row) in enumerate(pool.imap_unordered(episode_job, [(job,) for job in jobs]), 1):
                rows[j] = row
                spent = time.monotonic() - t0
                print(f"  {i}/{len(jobs)} {row['task']} {row['planner']} {row['condition']} seed {row['seed']}: "
                      f"{'success' if row['success'] else 'failure'}, {row['llm_calls']} LLM calls "
                      f"({spent:.0f} s elapsed, about {spent / i * (len(jobs) - i):.0f} s left)", flush=True)
        elapsed = time.monotonic() - t0
        if args.record:
            merge_records(args.record)
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        stem = os.path.splitext(args.out)[0]
        atomic_write_json(stem + "_episodes.json", rows, indent=1)
        plot = write_plot(stem + ".png", rows, args)
        shown = list(argv if argv is not None else sys.argv[1:])
        for k in range(len(shown) - 1, -1, -1):      # the report prints --note's text as a paragraph, not in the command
            if shown[k] == "--note":
                del shown[k:k + 2]
            elif shown[k].startswith("--note="):
                del shown[k]
        command = "python experiments/planners.py " + " ".join(shlex.quote(a) for a in shown)
        for line in write_markdown(args.out, rows, args, command.strip(), elapsed, plot):
            print(line)
        print("first prompts (mean characters / est. tokens):")
        for pl, entries in prompt_lengths(rows).items():
            print(f"  {NAMES[pl]}: " + ", ".join(f"{tag} {c:.0f} chars / {t:.0f} tokens" for tag, c, t in entries))
        print(f"wrote {args.out}" + (f" and {plot}" if plot else ""))
    return 0


def _cli() -> int:
    """main() with the CLI's error contract: a UserError is one line and exit 2, a RunError exit 3."""
    try:
        return main()
    except UserError as e:
        print(f"planners.py: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"planners.py: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(_cli())
