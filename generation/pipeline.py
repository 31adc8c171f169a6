"""GenSim-style task generation: propose, reference, implement, validate (with repair), dedupe, reflect.

Each stage is its own LLM call at its own temperature (propose 0.8, reference 0, implement 0,
repair 0, reflect 0.4 with k votes, any "no" rejects). Validation is `validate` (ast, static
policy, sandboxed build, sandboxed oracle on both engines); its error text goes back to the
model for at most `max_repairs` repairs. Survivors are checked for duplicates against the
built-ins and the library, reflected on, and saved into the library. `GenerationStats` counts
how far each candidate got: proposed >= parsed >= safe >= ran >= oracle_passed >= novel >= accepted.
A run folder keeps stats.json, candidates.jsonl and every prompt, reply, draft and report.

CLI: `taskweave generate --mode explore|target [--target NAME] --n N --llm offline|openai:M|replay:F`
(`taskweave.commands.generate`).
"""
from __future__ import annotations

import datetime
import inspect
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from taskweave.generation import prompts as gp
from taskweave.generation.spec import TASK_SPEC_SCHEMA, TaskSpecError, parse_task_spec, render_task_module
from taskweave.generation.library import NAME_RE, TaskLibrary, builtin_records, diversity, find_duplicate
from taskweave.generation.stats import STAGES, GenerationStats
from taskweave.generation.validate import BACKENDS, ValidationReport, validate_source
from taskweave.sim.errors import UserError
from taskweave.planning.llm.constraints import Constraint
from taskweave.sim.fileio import atomic_write_json, atomic_write_text

TEMPERATURES = {"propose": 0.8, "reference": 0.0, "implement": 0.0, "repair": 0.0, "reflect": 0.4}
# reply budgets (tokens) per stage: a module needs room, a spec less, a vote little
MAX_TOKENS = {"propose": 512, "reference": 128, "implement": 1536, "repair": 1536, "reflect": 256, "spec": 768}
IMPLEMENT_FORMATS = ("code", "spec")   # implement stage: a Python module, or a JSON task spec (data, no code)


class GenerationSettingError(UserError, ValueError):
    """A generation setting the user can fix: the mode, or a target task that is missing or unknown."""


@dataclass
class Candidate:
    """One proposed task on its way through the stages."""

    index: int
    proposal: dict
    references: list = field(default_factory=list)
    attempts: list = field(default_factory=list)     # [{"code_file", "stage", "reason", "accepted"}]
    reached: str = "proposed"
    reason: str = ""
    duplicate: Optional[dict] = None
    votes: list = field(default_factory=list)
    name: str = ""
    hashes: dict = field(default_factory=dict)       # stage -> hash of the prompt text sent
    last_spec: str = ""                               # --implement spec: the latest JSON task spec (or reply)
    spec_error: str = ""                              # why the latest spec reply broke the format ("" if it did not)
    truncated: list = field(default_factory=list)     # stages whose reply stopped at its token budget


class GenerationPipeline:
    """Generates tasks with an LLM (anything with `complete(messages, n, temperature, ..., tag)`)."""

    def __init__(self, llm, library: TaskLibrary, out_dir: str, mode: str = "explore", target: str = "",
                 seeds: int = 4, max_repairs: int = 2, reflect_votes: int = 2, backends=BACKENDS,
                 llm_name: str = "", temperatures: Optional[dict] = None, progress: bool = True, log=print,
                 implement: str = "code", executor=None) -> None:
        if mode not in ("explore", "target"):
            raise GenerationSettingError(f"mode must be explore or target, got {mode!r}")
        if implement not in IMPLEMENT_FORMATS:
            raise GenerationSettingError(f"implement must be one of {', '.join(IMPLEMENT_FORMATS)}, got {implement!r}")
        self.implement_format = implement
        self.executor = executor   # where the sandboxed validation jobs run (taskweave.sim.rollouts; None: local)
        self.llm, self.library, self.out_dir, self.mode = llm, library, out_dir, mode
        self.seeds, self.max_repairs, self.reflect_votes = int(seeds), int(max_repairs), int(reflect_votes)
        self.backends, self.progress, self.log = tuple(backends), progress, log
        self.llm_name = llm_name or str(getattr(llm, "model", "") or type(llm).__name__)
        self.temps = dict(TEMPERATURES, **(temperatures or {}))
        self.stats = GenerationStats()
        self.bad_examples: list = []
        self.proposed_names: list = []
        self.target = self._target_record(target) if mode == "target" else None
        self.run_id = os.path.basename(os.path.abspath(out_dir))

    # ---- context ----------------------------------------------------------------------------------
    def library_records(self) -> list:
        """Built-in and library tasks as prompt context: name, description, signature, assets."""
        return [{k: r[k] for k in ("name", "description", "signature", "assets")} for r in self.library.records()]

    def _target_record(self, target: str) -> dict:
        recs = {r["name"]: r for r in self.library.records()}
        name = target if target in recs else ("Gen_" + target if "Gen_" + target in recs else "")
        if not name:
            if not target:
                raise GenerationSettingError("--mode target needs --target NAME (a built-in or library task)")
            raise GenerationSettingError(f"unknown target task {target!r} (built-in or library: {', '.join(sorted(recs))})")
        return {k: recs[name][k] for k in ("name", "description", "signature", "assets")}

    def _source_of(self, name: str) -> str:
        from taskweave.envs.tasks import BUILTIN_TASKS
        for cls in BUILTIN_TASKS:
            if cls.name == name:
                return inspect.getsource(cls)
        if name.startswith("Gen_") and name[4:] in self.library.names():
            return self.library.source(name)
        return ""

    # ---- LLM calls ----------------------------------------------------------------------------------
    def _ask(self, stage: str, user: str, cand: Optional[Candidate] = None, n: int = 1, schema=None,
             max_tokens: Optional[int] = None) -> list:
        """One LLM call of a stage; schema: the JSON schema its reply must follow (where the backend can enforce it;
        code stages are free text, checked by validation and run only in the sandbox)."""
        msgs = gp.messages(user)
        constraint = Constraint("json_schema", stage, schema=schema) if schema is not None else None
        resp = self.llm.complete(msgs, n=n, temperature=self.temps[stage], tag=f"generate.{stage}",
                                 constraint=constraint, max_tokens=max_tokens or MAX_TOKENS[stage])
        if getattr(resp, "truncated", False) and cand is not None:
            cand.truncated.append(stage)
        self.stats.usage(stage, resp)
        texts = [str(t) for t in getattr(resp, "texts", [])]
        if cand is not None:
            cand.hashes.setdefault(stage, gp.text_hash(user))
            self._write_jsonl(cand, "llm.jsonl", {"stage": stage, "temperature": self.temps[stage], "prompt": user,
                                                  "replies": texts})
        return texts

    def propose(self, n: int = 1) -> list:
        """Proposals from one propose call: one (explore) or a curriculum of n (target)."""
        bad = ""
        if self.bad_examples:
            bad = "Rejected earlier (avoid these mistakes):\n```json\n" + gp.as_json(self.bad_examples[-8:]) + "\n```\n"
        if self.mode == "target":
            user = gp.PROPOSE_TARGET.substitute(api=gp.API, library=gp.as_json(self.library_records()),
                                                target=gp.as_json(self.target), bad_section=bad, n=n)
        else:
            prev = ("Already proposed in this run (propose something else):\n```json\n"
                    + gp.as_json([{"name": p} for p in self.proposed_names]) + "\n```\n") if self.proposed_names else ""
            user = gp.PROPOSE_EXPLORE.substitute(api=gp.API, library=gp.as_json(self.library_records()),
                                                 bad_section=bad, previous_section=prev)
        one = {"type": "object", "required": ["name", "description", "assets", "goal_sketch", "parents"],
               "additionalProperties": False,
               "properties": {"name": {"type": "string", "pattern": "^[A-Z][A-Za-z0-9]{2,40}$"},
                              "description": {"type": "string", "minLength": 8, "maxLength": 300},
                              "assets": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 8},
                              "goal_sketch": {"type": "string", "maxLength": 300},
                              "parents": {"type": "array", "items": {"type": "string", "maxLength": 40},
                                          "maxItems": 4}}}
        schema = one if self.mode != "target" else {"type": "array", "items": one, "minItems": 1, "maxItems": n}
        texts = self._ask("propose", user, schema=schema)
        self._propose_prompt_hash = gp.text_hash(user)
        try:
            got = gp.extract_json(texts[0] if texts else "")
        except ValueError:
            return [{"_error": "the proposal is not JSON", "_reply": (texts or [""])[0][:500]}]
        got = got if isinstance(got, list) else [got]
        out = [g if isinstance(g, dict) else {"_error": f"proposal {g!r} is not an object"} for g in got]
        return out[:n]

    def reference(self, cand: Candidate, k: int = 3) -> list:
        """Library tasks whose code the implement stage reads (the model's pick, filtered to real names)."""
        recs = self.library.records()
        listing = "\n".join(f"- {r['name']}: {r['description']}" for r in recs)
        user = gp.REFERENCE.substitute(proposal=gp.as_json(cand.proposal), listing=listing, k=k)
        texts = self._ask("reference", user, cand, schema={
            "type": "array", "maxItems": k, "items": {"type": "string", "enum": [r["name"] for r in recs] or [""]}})
        try:
            names = gp.extract_json(texts[0] if texts else "")
        except ValueError:
            names = []
        known = {r["name"] for r in recs}
        return [n for n in (names if isinstance(names, list) else []) if isinstance(n, str) and n in known][:k]

    def implement(self, cand: Candidate) -> str:
        """The first draft of the module (with --implement spec: rendered from the model's JSON task spec)."""
        if self.implement_format == "spec":
            user = gp.IMPLEMENT_SPEC.substitute(example=gp.as_json(gp.SPEC_EXAMPLE), proposal=gp.as_json(cand.proposal),
                                                name=cand.proposal.get("name", "NewTask"))
            return self._spec_module(cand, self._ask("implement", user, cand, schema=TASK_SPEC_SCHEMA,
                                                     max_tokens=MAX_TOKENS["spec"]))
        refs = "\n".join(f"# --- {n} ---\n```python\n{self._source_of(n)}```" for n in cand.references) or "(none)"
        user = gp.IMPLEMENT.substitute(api=gp.API, references=refs, proposal=gp.as_json(cand.proposal),
                                       name=cand.proposal.get("name", "NewTask"))
        return gp.extract_code((self._ask("implement", user, cand) or [""])[0])

    def _spec_module(self, cand: Candidate, texts: list) -> str:
        """The module rendered from a JSON task spec reply; a reply that breaks the format gives "" and sets
        `cand.spec_error` (validation then rejects it at `parse` with that reason as the repair feedback)."""
        reply = (texts or [""])[0]
        try:
            try:             # a constrained reply is the JSON object itself
                data = json.loads(reply.strip())
            except ValueError:
                data = gp.extract_json(reply)
            spec = parse_task_spec(data)
        except (ValueError, TaskSpecError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            if cand.truncated and cand.truncated[-1] in ("implement", "repair"):
                why = f"the reply stopped at the {MAX_TOKENS['spec']}-token budget before the JSON ended ({why})"
            cand.last_spec, cand.spec_error = reply[:4000], why
            return ""
        cand.last_spec, cand.spec_error = gp.as_json(spec), ""
        self._write(cand, f"spec_{len(cand.attempts) + 1}.json", cand.last_spec)
        return render_task_module(spec)

    def repair(self, cand: Candidate, code: str, rep: ValidationReport) -> str:
        """A corrected module, given the previous one and the validation error."""
        if self.implement_format == "spec":
            user = gp.REPAIR_SPEC.substitute(proposal=gp.as_json(cand.proposal), attempt=len(cand.attempts),
                                             spec=getattr(cand, "last_spec", ""), stage=rep.stage,
                                             error=rep.feedback())
            self.stats.repairs += 1
            return self._spec_module(cand, self._ask("repair", user, cand, schema=TASK_SPEC_SCHEMA,
                                                     max_tokens=MAX_TOKENS["spec"]))
        user = gp.REPAIR.substitute(api=gp.API, proposal=gp.as_json(cand.proposal), attempt=len(cand.attempts),
                                    code=code.rstrip("\n"), stage=rep.stage, error=rep.feedback())
        self.stats.repairs += 1
        return gp.extract_code((self._ask("repair", user, cand) or [""])[0])

    def reflect(self, cand: Candidate, record: dict) -> list:
        """k votes on whether the candidate is new and useful: [{"yes": bool, "reason": str}]."""
        others = [{k: r[k] for k in ("name", "description", "signature")} for r in self.library.records()]
        shown = {k: record[k] for k in ("name", "description", "instruction", "signature", "assets")}
        user = gp.REFLECT.substitute(library=gp.as_json(others), candidate=gp.as_json(shown))
        votes = []
        schema = {"type": "object", "required": ["new", "useful", "reason"], "additionalProperties": False,
                  "properties": {"new": {"type": "boolean"}, "useful": {"type": "boolean"},
                                 "reason": {"type": "string", "maxLength": 300}}}
        for t in self._ask("reflect", user, cand, n=self.reflect_votes, schema=schema):
            try:
                v = gp.extract_json(t)
            except ValueError:
                v = {}
            ok = isinstance(v, dict) and v.get("new") is True and v.get("useful") is True
            reason = str(v.get("reason", "")) if isinstance(v, dict) else ""
            votes.append({"yes": ok, "reason": reason[:300] or ("" if ok else "no parseable vote")})
        return votes

    # ---- one candidate ----------------------------------------------------------------------------
    def process(self, cand: Candidate) -> Candidate:
        """Take one proposal through reference, implement, validation with repairs, dedupe, reflect, save."""
        self._write(cand, "proposal.json", gp.as_json(cand.proposal))
        if "_error" in cand.proposal or not cand.proposal.get("name") or not cand.proposal.get("description"):
            cand.reason = "proposal: " + cand.proposal.get("_error", "needs a name and a description")
            return self._finish(cand)
        self.proposed_names.append(str(cand.proposal["name"]))
        cand.references = self.reference(cand)
        code = self.implement(cand)
        rep = None
        for attempt in range(self.max_repairs + 1):
            if attempt:
                code = self.repair(cand, code, rep)
            fname = f"attempt_{attempt + 1}.py"
            self._write(cand, fname, code)
            if cand.spec_error:      # --implement spec: the reply was not a valid task spec
                rep = ValidationReport(file=fname, seeds=list(range(self.seeds)), passed={"parse": False},
                                       reason=f"task spec: {cand.spec_error}")
            else:
                rep = validate_source(code, fname, self.seeds, self.backends, executor=self.executor)
            self._write(cand, f"attempt_{attempt + 1}.json", json.dumps(rep.to_dict(), indent=1))
            cand.attempts.append({"code_file": fname, "stage": rep.stage, "reason": rep.reason[:500],
                                  "accepted": rep.accepted, "duration_s": rep.duration_s})
            cand.reached = max(cand.reached, _reached(rep), key=STAGES.index)
            if rep.accepted:
                break
        if not rep.accepted:
            cand.reason = f"{rep.stage}: {rep.reason}"
            self.bad_examples.append({"name": cand.proposal.get("name"), "rejected_at": rep.stage,
                                      "reason": rep.reason[:300]})
            return self._finish(cand)
        if len(cand.attempts) > 1:
            self.stats.repaired += 1
        record = dict(rep.task)
        name = record["name"]
        dup = find_duplicate(record, self.library.records())
        if dup or not NAME_RE.match(name):
            cand.duplicate = dup
            cand.reason = f"duplicate: {dup['why']}" if dup else f"name {name!r} is not CamelCase"
            self.bad_examples.append({"name": name, "rejected_at": "novelty", "reason": cand.reason[:300]})
            return self._finish(cand)
        cand.reached = "novel"
        cand.votes = self.reflect(cand, record)
        noes = [v for v in cand.votes if not v["yes"]]
        if not cand.votes or noes:
            cand.reason = (f"reflect: {len(noes)} of {len(cand.votes)} votes said not new or not useful"
                           + (f" ({noes[0]['reason']})" if noes and noes[0]["reason"] else ""))
            return self._finish(cand)
        self._save(cand, code, rep)
        cand.reached, cand.name = "accepted", name
        return self._finish(cand)

    def _save(self, cand: Candidate, code: str, rep: ValidationReport) -> None:
        t = rep.task
        parents = [p for p in list(cand.references) + list(cand.proposal.get("parents") or [])
                   if isinstance(p, str)]
        meta = {"description": t["description"], "instruction": t["instruction"], "goals": t["goals"],
                "signature": t["signature"], "assets": t["assets"], "parents": list(dict.fromkeys(parents)),
                "mode": self.mode, "target": (self.target or {}).get("name", ""), "llm": self.llm_name,
                "prompt_hashes": {s: gp.template_hash(s) for s in gp.TEMPLATES},
                "call_hashes": dict(cand.hashes, propose=getattr(self, "_propose_prompt_hash", "")),
                "validation": {b: f"{o['successes']}/{len(o['seeds'])}" for b, o in rep.oracle.items()},
                "repairs": len(cand.attempts) - 1, "run": self.run_id, "proposal": cand.proposal,
                "implement": self.implement_format,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self.library.save(t["name"], code, meta)
        self._write(cand, "accepted.py", code)

    def _finish(self, cand: Candidate) -> Candidate:
        self.stats.add(cand.reached)
        out = {k: v for k, v in asdict(cand).items()}
        self._write(cand, "outcome.json", gp.as_json(out))
        with open(os.path.join(self.out_dir, "candidates.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(out, sort_keys=True) + "\n")
        return cand

    # ---- the run -----------------------------------------------------------------------------------
    def run(self, n: int) -> dict:
        """Propose n candidates and take each through every stage; the run summary (also in stats.json)."""
        from tqdm import tqdm
        os.makedirs(self.out_dir, exist_ok=True)
        t0 = time.monotonic()
        before = set(self.library.names())
        bar = tqdm(total=n, desc=f"generate [{self.mode}]", unit="task", file=sys.stderr,
                   disable=not self.progress or None)
        cands = []
        try:
            queue = self.propose(n) if self.mode == "target" else []
            i = 0
            while i < n:
                if self.mode == "explore":
                    queue = self.propose(1)
                if not queue:
                    break
                cand = self.process(Candidate(index=i + 1, proposal=queue.pop(0)))
                cands.append(cand)
                i += 1
                bar.set_postfix_str(f"accepted {self.stats.accepted}, last: {cand.reached}")
                bar.update(1)
                if self.mode == "target" and not queue:
                    break
        finally:
            bar.close()
        new = sorted(set(self.library.names()) - before)
        recs = self.library.records(include_builtin=True)
        summary = {"run": self.run_id, "mode": self.mode, "target": (self.target or {}).get("name", ""),
                   "llm": self.llm_name, "implement": self.implement_format, "n": n, "seeds": self.seeds, "backends": list(self.backends),
                   "max_repairs": self.max_repairs, "reflect_votes": self.reflect_votes,
                   "stats": self.stats.to_dict(), "accepted_tasks": ["Gen_" + x for x in new],
                   "library": self.library.path, "library_size": len(self.library.names()),
                   "diversity": {"generated": self.library.diversity(False),
                                 "builtin": diversity(builtin_records()), "builtin_plus_generated": diversity(recs)},
                   "candidates": [{"index": c.index, "name": c.proposal.get("name"), "reached": c.reached,
                                   "attempts": len(c.attempts), "reason": c.reason[:300]} for c in cands],
                   "wall_time_s": round(time.monotonic() - t0, 1)}
        atomic_write_json(os.path.join(self.out_dir, "stats.json"), summary, indent=1)
        return summary

    # ---- run folder ----------------------------------------------------------------------------------
    def _cand_dir(self, cand: Candidate) -> str:
        safe = "".join(ch for ch in str(cand.proposal.get("name", "")) if ch.isalnum())[:40] or "unnamed"
        d = os.path.join(self.out_dir, "candidates", f"{cand.index:03d}_{safe}")
        os.makedirs(d, exist_ok=True)
        return d

    def _write(self, cand: Candidate, name: str, text: str) -> None:
        atomic_write_text(os.path.join(self._cand_dir(cand), name), text if text.endswith("\n") else text + "\n")

    def _write_jsonl(self, cand: Candidate, name: str, row: dict) -> None:
        with open(os.path.join(self._cand_dir(cand), name), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _reached(rep: ValidationReport) -> str:
    """The last STAGES name a validation report got through."""
    p = rep.passed
    if rep.accepted:
        return "oracle_passed"
    if p.get("inspect") and not any(o.get("error") for o in rep.oracle.values()) and rep.oracle:
        return "ran"
    if p.get("static"):
        return "safe"
    return "parsed" if p.get("parse") else "proposed"


# ---- the generation LLM -------------------------------------------------------------------------------
def make_generator_llm(spec: str, seed: int = 0, flaw_rate: float = 0.3):
    """The generation LLM for a spec: `offline` is the task composer; others go through planning.make_llm."""
    if spec in ("offline", "offline-gen"):
        from taskweave.generation.offline import OfflineTaskComposer
        return OfflineTaskComposer(seed=seed, flaw_rate=flaw_rate)
    from taskweave.planning.llm import make_llm
    return make_llm(spec)
