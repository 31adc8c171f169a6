"""The offline task generator: answers the generation stages' prompts without a network.

It is NOT a language model, though it speaks the `LLMClient` interface. It reads the machine-readable parts of each prompt (the library's
goal signatures and assets, the proposal, the validation error) and composes new tasks from
"clauses" -- goal patterns the library already uses (blocks into a bowl, into a zone, stacks,
placing beside, turning a bar) -- into new task modules, deterministically for a seed. To
exercise the pipeline honestly, a configurable share of drafts is flawed the way LLM drafts
are (a goal naming a missing object, an object too wide to grasp, a zone out of reach, a
forbidden import, a syntax error, a non-deterministic build) and a share of proposals are
renamed library tasks; a repair request fixes a flaw only when the error text shows it, and
then only with probability `fix_rate` (a repair can fail, as a model's can).
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field

import numpy as np

from taskweave.generation import prompts as gp
from taskweave.planning.llm import LLMClient, LLMResponse

# kind -> (name word, description, colours, fixtures, predicates, assets, library parents)
CLAUSES = {
    "bowl1": ("BowlPlace", "put a block in a bowl", 2, 1, {"inside"}, {"block", "container"}, ["BlockInBowl"]),
    "bowl2": ("BowlPair", "put two blocks in one bowl", 3, 1, {"inside"}, {"block", "container"},
              ["AllColorBlocksInBowl"]),
    "zone1": ("ZonePlace", "put a block in a zone", 2, 1, {"inside"}, {"block", "zone"}, ["PlaceInZone"]),
    "zone2": ("ZonePair", "gather two blocks in one zone", 3, 1, {"inside"}, {"block", "zone"},
              ["PlaceInZone", "SortByColour"]),
    "stack2": ("Stack", "stack one block on another", 2, 0, {"on"}, {"block"}, ["StackOnBlock"]),
    "stack3": ("Tower", "build a three-block tower", 3, 0, {"on"}, {"block"}, ["StackTower"]),
    "zonestack": ("ZoneStack", "put a base block in a zone and stack a block on it", 3, 1, {"inside", "on"},
                  {"block", "zone"}, ["PlaceInZone", "StackOnBlock"]),
    "beside": ("Beside", "put a block right next to another", 2, 1, {"near"}, {"block"}, ["AlignInLine"]),
    "turn": ("Turn", "turn a bar to an angle", 1, 1, {"yaw"}, {"bar"}, ["RotateBlock"]),
    "sizestack": ("SizeStack", "stack three blocks of different sizes, largest at the bottom", 3, 0, {"on"},
                  {"block"}, ["StackTower", "TowerOfHanoi"]),
}
DUPLICATES = {"bowl1": "PutBlockInBowl", "zone1": "MoveBlockToZone", "stack2": "PlaceBlockOnBlock",
              "stack3": "ColourTower", "turn": "AlignBar"}
FUTURE = "from __future__ import annotations\n"
FLAWS = ("missing_object", "too_wide", "unreachable", "forbidden_import", "syntax", "nondeterministic")
EVIDENCE = {"missing_object": ("not in the scene",), "too_wide": ("wider than the gripper",),
            "unreachable": ("unreachable", "out of reach"), "forbidden_import": ("import",),
            "syntax": ("syntaxerror", "syntax error"), "nondeterministic": ("not deterministic",)}
MAX_COLOURS = 8
RELATED = {"at": {"near", "on", "inside"}, "near": {"at"}}      # predicates that teach part of another


@dataclass
class _Draft:
    clauses: tuple
    name: str
    flaw: str = ""
    repairs: int = 0
    history: list = field(default_factory=list)


class OfflineTaskComposer(LLMClient):
    """An LLM stand-in for task generation: composes library goal patterns into new task modules."""

    model = "offline-task-composer"
    disclaimer = ("offline task composer: not a language model; it composes the library's goal patterns into "
                  "new tasks and drafts deliberate flaws at a set rate")

    def __init__(self, seed: int = 0, flaw_rate: float = 0.3, duplicate_rate: float = 0.15,
                 fix_rate: float = 0.75) -> None:
        super().__init__(model=self.model)
        self.rng = np.random.default_rng(seed)
        self.flaw_rate, self.duplicate_rate, self.fix_rate = float(flaw_rate), float(duplicate_rate), float(fix_rate)
        self.drafts: dict = {}
        self.calls = 0

    def __repr__(self) -> str:
        return (f"OfflineTaskComposer(flaw_rate={self.flaw_rate}, duplicate_rate={self.duplicate_rate}, "
                f"fix_rate={self.fix_rate})")

    # ---- the LLMClient interface (`complete` is LLMClient's: it checks, times and meters) ------
    def _complete(self, messages, n, temperature, top_p, max_tokens, stop, tag) -> LLMResponse:
        """Answer a generation-stage prompt n times (stage read from its `### STAGE:` line)."""
        self.calls += 1
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        stage = gp.stage_of(messages)
        handler = {"propose": self._propose, "reference": self._reference, "implement": self._implement,
                   "repair": self._repair, "reflect": self._reflect}.get(stage)
        if handler is None:
            texts = [f"The offline task composer only answers generation stages, not {stage or 'this prompt'}."] * n
        else:
            texts = [handler(user) for _ in range(n)]
        return LLMResponse(texts, prompt_tokens=len(prompt) // 4, completion_tokens=sum(len(t) for t in texts) // 4,
                           model=self.model, usage_estimated=True)

    # ---- stages ---------------------------------------------------------------------------------
    def _library(self, user: str) -> list:
        blocks = gp.json_blocks(user)
        return blocks[0] if blocks and isinstance(blocks[0], list) else []

    def _available(self, library: list) -> list:
        """Clause kinds whose predicates and assets the library already uses."""
        preds = {s.split("(")[0] for r in library for s in r.get("signature", [])}
        assets = {a for r in library for a in r.get("assets", [])}
        return [k for k, c in CLAUSES.items() if c[4] <= preds and c[5] <= assets]

    def _combos(self, kinds: list) -> list:
        out = []
        for a, b in itertools.permutations(kinds, 2):
            ca, cb = CLAUSES[a], CLAUSES[b]
            if ca[2] + cb[2] > MAX_COLOURS or ca[3] + cb[3] > 2 or a[:4] == b[:4] or {a, b} == {"stack2", "stack3"}:
                continue
            out.append((a, b))
        for k in ("bowl2", "zone2", "zonestack", "sizestack", "beside"):
            if k in kinds:
                out.append((k,))
        return out

    def _proposal(self, clauses: tuple, name: str = "") -> dict:
        name = name or "Then".join(CLAUSES[k][0] for k in clauses)
        parts = [CLAUSES[k][1] for k in clauses]
        desc = parts[0] + (", then " + ", then ".join(parts[1:]) if len(parts) > 1 else "")
        assets = set().union(*(CLAUSES[k][5] for k in clauses))
        sketch = "; ".join(f"{k}: {', '.join(sorted(CLAUSES[k][4]))}" for k in clauses)
        parents = list(dict.fromkeys(p for k in clauses for p in CLAUSES[k][6]))
        self.drafts[name] = _Draft(tuple(clauses), name)
        return {"name": name, "description": desc, "assets": sorted(assets), "goal_sketch": sketch,
                "parents": parents}

    def _propose(self, user: str) -> str:
        library = self._library(user)
        taken = {r.get("name", "").lower() for r in library}
        taken |= {n.lower() for n in re.findall(r'"name": "(\w+)"', user)}
        taken |= {n.lower() for n in self.drafts}
        kinds = self._available(library)
        if "### MODE: target" in user:
            blocks = gp.json_blocks(user)
            target = blocks[1] if len(blocks) > 1 and isinstance(blocks[1], dict) else {}
            want = {s.split("(")[0] for s in target.get("signature", [])}
            want |= set().union(*(RELATED.get(p, set()) for p in want))
            m = re.search(r"curriculum of (\d+)", user)
            n = int(m.group(1)) if m else 3
            combos = [c for c in self._combos(kinds) if "Then".join(CLAUSES[k][0] for k in c).lower() not in taken]
            rank = lambda c: (-len(set().union(*(CLAUSES[k][4] for k in c)) & want), len(c),  # noqa: E731
                              sum(CLAUSES[k][2] for k in c), float(self.rng.random()))
            chosen = sorted(combos, key=rank)[:n]
            chosen.sort(key=lambda c: (len(c), sum(CLAUSES[k][2] for k in c)))
            return "```json\n" + json.dumps([self._proposal(c) for c in chosen], indent=1) + "\n```"
        dups = [k for k in DUPLICATES if k in kinds and DUPLICATES[k].lower() not in taken]
        if dups and self.rng.random() < self.duplicate_rate:
            k = dups[int(self.rng.integers(len(dups)))]
            return "```json\n" + json.dumps(self._proposal((k,), DUPLICATES[k]), indent=1) + "\n```"
        combos = [c for c in self._combos(kinds) if "Then".join(CLAUSES[k][0] for k in c).lower() not in taken]
        if not combos:
            return "I have no new combination of the library's goal patterns left to propose."
        c = combos[int(self.rng.integers(len(combos)))]
        return "```json\n" + json.dumps(self._proposal(c), indent=1) + "\n```"

    def _reference(self, user: str) -> str:
        proposal = next((b for b in gp.json_blocks(user) if isinstance(b, dict)), {})
        names = re.findall(r"^- (\w+):", user, re.M)
        parents = [p for p in proposal.get("parents", []) if p in names]
        m = re.search(r"up to (\d+)", user)
        return "```json\n" + json.dumps(parents[: int(m.group(1)) if m else 3]) + "\n```"

    def _draft_for(self, user: str) -> _Draft:
        proposal = next((b for b in gp.json_blocks(user) if isinstance(b, dict)), {})
        name = str(proposal.get("name", ""))
        if name not in self.drafts:            # a proposal this composer did not make: pick clauses for it
            words = str(proposal.get("goal_sketch", "")) + " " + str(proposal.get("description", ""))
            kinds = [k for k in CLAUSES if CLAUSES[k][0].lower() in words.lower()] or ["zonestack"]
            self.drafts[name or "ComposedTask"] = _Draft(tuple(kinds[:2]), name or "ComposedTask")
        return self.drafts[name or "ComposedTask"]

    def _implement(self, user: str) -> str:
        d = self._draft_for(user)
        if self.rng.random() < self.flaw_rate:
            d.flaw = FLAWS[int(self.rng.integers(len(FLAWS)))]
        return "```python\n" + self._code(d) + "```"

    def _repair(self, user: str) -> str:
        d = self._draft_for(user)
        err = "\n".join(gp.fenced(user, "text")).lower()
        if d.flaw and any(e in err for e in EVIDENCE[d.flaw]) and self.rng.random() < self.fix_rate:
            d.repairs += 1
            if not (d.flaw == "too_wide" and d.repairs == 1):
                d.flaw = ""                    # fixed; a too-wide object first shrinks, but not enough
        return "```python\n" + self._code(d) + "```"

    def _reflect(self, user: str) -> str:
        blocks = gp.json_blocks(user)
        library = blocks[0] if blocks and isinstance(blocks[0], list) else []
        cand = blocks[1] if len(blocks) > 1 and isinstance(blocks[1], dict) else {}
        words = lambda t: set(re.findall(r"[a-z]+", str(t).lower())) - {"a", "the", "in", "on", "of"}  # noqa: E731
        mine, sig = words(cand.get("description", "")), set(cand.get("signature", []))
        for r in library:
            other, osig = words(r.get("description", "")), set(r.get("signature", []))
            same_goals = len(sig & osig) / max(1, len(sig | osig)) >= 0.5
            if mine and len(mine & other) / len(mine | other) >= 0.6 and same_goals:
                return "```json\n" + json.dumps({"new": False, "useful": True,
                                                 "reason": f"it reads like {r.get('name')}"}) + "\n```"
        return "```json\n" + json.dumps({"new": True, "useful": True, "reason": "a new combination of goal "
                                         "patterns: " + ", ".join(cand.get("signature", []))}) + "\n```"

    # ---- code ------------------------------------------------------------------------------------
    def _code(self, d: _Draft) -> str:
        return compose_module(d.name, d.clauses, self._proposal_desc(d), d.flaw, d.repairs)

    def _proposal_desc(self, d: _Draft) -> str:
        parts = [CLAUSES[k][1] for k in d.clauses]
        return parts[0] + (", then " + ", then ".join(parts[1:]) if len(parts) > 1 else "")


def _clause_lines(kind: str, i: int) -> tuple:
    """(fixture lines, item lines) of one clause; c{i} holds its colours."""
    c = f"c{i}"
    if kind in ("bowl1", "bowl2"):
        k = 1 if kind == "bowl1" else 2
        fix = [f'objs.append(bowl(f"{{{c}[0]}}_bowl", {c}[0], lay.spot(0.075), half=0.065))']
        items = [f'objs.append(block(f"{{{c}[{j}]}}_block", {c}[{j}], lay.spot(), rng=rng))' for j in range(1, k + 1)]
        items += [f'goals += [P("inside", f"{{x}}_block", f"{{{c}[0]}}_bowl") for x in {c}[1:]]',
                  f'says.append(f"put the {{\' and \'.join({c}[1:])}} block{"s" if k > 1 else ""} in the '
                  f'{{{c}[0]}} bowl")']
    elif kind in ("zone1", "zone2"):
        k = 1 if kind == "zone1" else 2
        fix = [f'zones.append(zone(f"{{{c}[0]}}_zone", {c}[0], lay.spot(0.08), half=0.07))']
        items = [f'objs.append(block(f"{{{c}[{j}]}}_block", {c}[{j}], lay.spot(), rng=rng))' for j in range(1, k + 1)]
        items += [f'goals += [P("inside", f"{{x}}_block", f"{{{c}[0]}}_zone") for x in {c}[1:]]',
                  f'says.append(f"put the {{\' and \'.join({c}[1:])}} block{"s" if k > 1 else ""} in the '
                  f'{{{c}[0]}} zone")']
    elif kind in ("stack2", "stack3", "sizestack"):
        n = 2 if kind == "stack2" else 3
        size = ["", ", size=0.026", ", size=0.021", ", size=0.016"]
        fix = []
        sz = size if kind == "sizestack" else [""] * 4
        items = [f'objs.append(block(f"{{{c}[{j}]}}_block", {c}[{j}], lay.spot(){sz[j + 1]}, rng=rng))'
                 for j in range(n)]
        items += [f'goals += [P("on", f"{{{c}[j + 1]}}_block", f"{{{c}[j]}}_block") for j in range({n - 1})]',
                  'says.append("stack the blocks, largest at the bottom")' if kind == "sizestack" else
                  f'says.append("stack the blocks: " + ", then ".join({c}) + " on top")']
    elif kind == "zonestack":
        fix = [f'zones.append(zone(f"{{{c}[0]}}_zone", {c}[0], lay.spot(0.08), half=0.07))']
        items = [f'objs.append(block(f"{{{c}[{j}]}}_block", {c}[{j}], lay.spot(), rng=rng))' for j in (1, 2)]
        items += [f'goals += [P("inside", f"{{{c}[1]}}_block", f"{{{c}[0]}}_zone"), '
                  f'P("on", f"{{{c}[2]}}_block", f"{{{c}[1]}}_block")]',
                  f'says.append(f"put the {{{c}[1]}} block in the {{{c}[0]}} zone and the {{{c}[2]}} block on it")']
    elif kind == "beside":
        fix = [f"a{i} = lay.spot(0.11)", f"t{i} = (a{i}[0], a{i}[1] + (0.08 if a{i}[1] < 0 else -0.08))"]
        items = [f'objs.append(block(f"{{{c}[0]}}_block", {c}[0], a{i}, rng=rng))',
                 f'objs.append(block(f"{{{c}[1]}}_block", {c}[1], lay.spot(), rng=rng))',
                 f'goals.append(P("near", f"{{{c}[1]}}_block", t{i}, 0.03))',
                 f'says.append(f"put the {{{c}[1]}} block next to the {{{c}[0]}} block")']
    elif kind == "turn":
        fix = [f"yaw{i} = float(rng.uniform(-60, 60))", f"goal{i} = float(rng.choice([-45.0, 0.0, 45.0, 90.0]))",
               f"while abs(((goal{i} - yaw{i}) + 90) % 180 - 90) < 25:",
               f"    goal{i} = float(rng.choice([-45.0, 0.0, 45.0, 90.0]))", f"p{i} = lay.spot(0.05)"]
        items = [f'objs.append(ObjectSpec(f"{{{c}[0]}}_bar", "box", (0.045, 0.018, 0.02), {c}[0], '
                 f'pos=(p{i}[0], p{i}[1], 0.02), yaw=math.radians(yaw{i}), category="bar"))',
                 f'goals.append(P("yaw", f"{{{c}[0]}}_bar", goal{i}, 10.0))',
                 f'says.append(f"turn the {{{c}[0]}} bar to {{goal{i}:g}} degrees")']
    else:
        raise KeyError(kind)
    return fix, items


def compose_module(name: str, clauses: tuple, description: str, flaw: str = "", repairs: int = 0) -> str:
    """The source of a task module composing clauses in order, with an optional deliberate flaw."""
    ncol = sum(CLAUSES[k][2] for k in clauses)
    head = ["colors = pick_colors(rng, %d)" % ncol]
    fix, items, off = [], [], 0
    for i, k in enumerate(clauses):
        head.append(f"c{i} = colors[{off}:{off + CLAUSES[k][2]}]")
        off += CLAUSES[k][2]
        f, it = _clause_lines(k, i)
        fix += f
        items += it
    body = ["lay = Layout(rng)"] + head + ["objs, zones, goals, says = [], [], [], []"] + fix + items + [
        'self.instruction = ", then ".join(says)', "self.goals = goals", "return SceneSpec(objects=objs, zones=zones)"]
    imports = ["from __future__ import annotations", ""]
    if "turn" in clauses:
        imports += ["import math", ""]
    imports += ["from taskweave.envs.task import P, Layout, SceneSpec, Task, block, bowl, pick_colors, zone"]
    if "turn" in clauses:
        imports += ["from taskweave.sim.spec import ObjectSpec"]
    code = "\n".join([f'"""{name}: {description} (composed offline, not by a language model)."""'] + imports + [
        "", "", f"class {name}(Task):", f'    """{description[0].upper() + description[1:]}."""', "",
        f'    name = "{name}"', f'    description = "{description}"', "", "    def build(self, rng):"]
                     + ["        " + line for line in body]) + "\n"
    return inject_flaw(code, flaw, repairs)


def inject_flaw(code: str, flaw: str, repairs: int = 0) -> str:
    """The module with one deliberate defect (the code unchanged when the flaw does not apply)."""
    if flaw == "missing_object":
        return re.sub(r'(P\("\w+", f"\{\w+(?:\[\d\])?\})_block"', r'\1_blok"', code, count=1)
    if flaw == "too_wide":
        size = "0.039" if repairs else "0.045"
        new, k = re.subn(r"(objs\.append\(block\([^\n]*lay\.spot\(\)), rng=rng\)\)", rf"\1, size={size}, rng=rng))",
                         code, count=1)
        return new if k else inject_flaw(code, "missing_object")
    if flaw == "unreachable":
        new, k = re.subn(r"lay\.spot\(0\.0[78]\d*\)", "(0.86, float(rng.uniform(-0.1, 0.1)))", code, count=1)
        return new if k else inject_flaw(code, "missing_object")
    if flaw == "forbidden_import":
        code = code.replace(FUTURE, FUTURE + "\nimport random\n")
        return re.sub(r"(colors = pick_colors\(rng, \d+\))", r"\1\n        random.shuffle(colors)", code, count=1)
    if flaw == "syntax":
        return code.replace("def build(self, rng):", "def build(self, rng)", 1)
    if flaw == "nondeterministic":
        code = code.replace(FUTURE, FUTURE + "\nimport numpy as np\n")
        return code.replace(", rng=rng))", ", rng=np.random.default_rng()))", 1)
    return code
