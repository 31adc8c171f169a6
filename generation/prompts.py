"""Prompt templates of the task-generation stages (propose, reference, implement, repair, reflect).

Templates are `string.Template` texts (`$name` placeholders, so code braces need no escaping).
Every stage prompt starts with a `### STAGE: <name>` line; machine-readable context (the task
library, the proposal) travels in fenced ```json blocks so that any model, the offline
generator included, can read it. `template_hash` identifies a template version in task metadata.
"""
from __future__ import annotations

import hashlib
import json
from string import Template

SYSTEM = """You write simulated tabletop robot tasks for a task library, in the style of GenSim.
A task is a Python module with exactly one subclass of `Task`. It builds a scene from a seeded
random generator and states its goals as data; a generic oracle solves every task from its goals,
so a task never writes a policy and never calls a physics engine. Answer in the format asked for."""

API = """Task API (the only modules a task may import: math, numpy, dataclasses, typing, __future__,
taskweave.envs.task, taskweave.envs.predicates, taskweave.sim.spec):

    from taskweave.envs.task import P, Layout, SceneSpec, Task, TaskError, block, bowl, zone, pick_colors, BLOCK
    from taskweave.sim.spec import ObjectSpec, ZoneSpec

    class MyTask(Task):
        name = "MyTask"                      # CamelCase, unique in the library
        description = "one sentence"
        def build(self, rng):                # rng: numpy Generator; use it for every random choice
            lay = Layout(rng)                # lay.spot(radius) -> free (x, y) on the table
            c1, c2 = pick_colors(rng, 2)     # distinct colour names
            objs = [block(f"{c1}_block", c1, lay.spot(), rng=rng), bowl(f"{c2}_bowl", c2, lay.spot(0.075), half=0.065)]
            self.instruction = f"put the {c1} block in the {c2} bowl"
            self.goals = [P("inside", f"{c1}_block", f"{c2}_bowl")]
            return SceneSpec(objects=objs, zones=[])

Helpers: block(name, colour, xy, size=0.02 half size, rng=None for random yaw, z=0.0 to rest on a stack);
bowl(name, colour, xy, half=0.055, height=0.045) (an open container; leave room around it);
zone(name, colour, xy, half=0.06); ObjectSpec(name, shape "box"|"cylinder"|"sphere"|"container",
size, colour, pos=(x, y, z), yaw, category). Table: x 0.36..0.64, y -0.24..0.24 (metres), top at z = 0.
The gripper opens 8 cm: every object the oracle picks must be narrower than that on one side.
Goal predicates (goals are satisfied in list order by pick and place, or rotate for yaw):
  on(a, b)  inside(a, container_or_zone)  on_table(a)  near(a, (x, y), tol)  at(a, (x, y, z), tol)
  yaw(a, degrees, tol)  clear(a)  holding(a)
Rules: one Task subclass with a build method; set self.instruction and self.goals in build; goals only
name objects and zones of the scene; do not override oracle_plan, achieve, success, progress or reset;
no file, network or process access; module level holds only imports, constants, classes and functions."""

PROPOSE_EXPLORE = Template("""### STAGE: propose
### MODE: explore
$api

The library already has these tasks (name, description, goal structure, assets):
```json
$library
```
$bad_section$previous_section
Propose ONE new task that is different from every library task and useful for training a robot:
a new combination of the goal predicates and assets above. Answer with one JSON object in a ```json
block: {"name": "CamelCaseName", "description": "...", "assets": ["block", ...],
"goal_sketch": "predicates in order", "parents": ["LibraryTaskItBuildsOn", ...]}.""")

PROPOSE_TARGET = Template("""### STAGE: propose
### MODE: target
$api

The library already has these tasks (name, description, goal structure, assets):
```json
$library
```
The target task, which a policy should eventually master:
```json
$target
```
$bad_section
Propose a curriculum of $n NEW stepping-stone tasks toward the target, easiest first: each uses a
subset of the target's goal predicates and assets, combined so that it teaches a part of the
target. Answer with a JSON list of $n objects in a ```json block, each {"name": "CamelCaseName",
"description": "...", "assets": [...], "goal_sketch": "...", "parents": [...]}.""")

REFERENCE = Template("""### STAGE: reference
The proposed task:
```json
$proposal
```
Library tasks you may read as reference code (name: description):
$listing

Pick up to $k library tasks whose code is the most useful reference for implementing the proposal.
Answer with a JSON list of names in a ```json block.""")

IMPLEMENT = Template("""### STAGE: implement
$api

Reference code from the library:
$references

The task to implement:
```json
$proposal
```
Write the complete Python module for this task. Name the class and its `name` attribute
"$name". Answer with the module in one ```python block.""")

REPAIR = Template("""### STAGE: repair
$api

The task to implement:
```json
$proposal
```
Your previous module (attempt $attempt):
```python
$code
```
It was rejected at the `$stage` stage of validation:
```text
$error
```
Fix the module so that it passes (the oracle must succeed on at least 3 of 4 seeds in MuJoCo and in
PyBullet). Answer with the complete corrected module in one ```python block.""")

IMPLEMENT_SPEC = Template("""### STAGE: implement_spec
Write the task as a JSON task spec (no code). Objects are blocks (graspable, narrower than the
gripper) or bowls (open containers, too wide to pick); zones are coloured squares on the table;
positions are sampled for you on every seed. Goals are predicates over the spec's own names, satisfied
in list order: on(block, block_or_bowl), inside(block, bowl_or_zone), on_table(block), clear(object).
Example:
```json
$example
```
The task to write:
```json
$proposal
```
Answer with one JSON object: {"name": "$name", "description": "...", "instruction": "...",
"objects": [{"name": ..., "kind": "block"|"bowl", "color": ...}], "zones": [{"name": ..., "color": ...}],
"goals": [{"predicate": ..., "args": [...]}]}.""")

REPAIR_SPEC = Template("""### STAGE: repair_spec
The task to write:
```json
$proposal
```
Your previous JSON task spec (attempt $attempt):
```json
$spec
```
It was rejected at the `$stage` stage of validation:
```text
$error
```
Fix the spec so that it passes (the oracle must succeed on at least 3 of 4 seeds in MuJoCo and in
PyBullet). Answer with the complete corrected JSON task spec.""")

SPEC_EXAMPLE = {"name": "RedOnBlue", "description": "stack the red block on the blue block",
                "instruction": "put the red block on the blue block",
                "objects": [{"name": "red_block", "kind": "block", "color": "red"},
                            {"name": "blue_block", "kind": "block", "color": "blue"}],
                "zones": [], "goals": [{"predicate": "on", "args": ["red_block", "blue_block"]}]}

REFLECT = Template("""### STAGE: reflect
The library already has these tasks:
```json
$library
```
A new candidate task passed validation:
```json
$candidate
```
Is the candidate new (not a renamed or trivially changed library task) and useful for teaching a
robot? Answer with one JSON object in a ```json block: {"new": true|false, "useful": true|false,
"reason": "..."}.""")

TEMPLATES = {"system": SYSTEM, "api": API, "propose_explore": PROPOSE_EXPLORE.template,
             "propose_target": PROPOSE_TARGET.template, "reference": REFERENCE.template,
             "implement": IMPLEMENT.template, "repair": REPAIR.template, "reflect": REFLECT.template,
             "implement_spec": IMPLEMENT_SPEC.template, "repair_spec": REPAIR_SPEC.template}


def template_hash(name: str) -> str:
    """Short SHA-256 of one template's text (identifies the prompt version in metadata)."""
    return hashlib.sha256(TEMPLATES[name].encode("utf-8")).hexdigest()[:16]


def text_hash(text: str) -> str:
    """Short SHA-256 of any prompt text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def as_json(value) -> str:
    """Compact, stable JSON for embedding in a prompt."""
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False)


def messages(user: str) -> list:
    """A chat of the system prompt and one user message."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def stage_of(messages_: list) -> str:
    """The stage named by the `### STAGE:` line of the last user message ('' if none)."""
    for m in reversed(messages_):
        if m.get("role") == "user":
            for line in str(m.get("content", "")).splitlines():
                if line.startswith("### STAGE:"):
                    return line.split(":", 1)[1].strip()
            return ""
    return ""


def json_blocks(text: str) -> list:
    """Every ```json fenced block of a text, parsed (unparseable blocks are skipped)."""
    out = []
    for body in fenced(text, "json"):
        try:
            out.append(json.loads(body))
        except ValueError:
            continue
    return out


def fenced(text: str, lang: str) -> list:
    """Bodies of the fenced blocks of one language (```lang ... ```), in order."""
    out, inside, buf = [], False, []
    for line in text.splitlines():
        s = line.strip()
        if not inside and s.startswith("```") and s[3:].strip().lower() == lang:
            inside, buf = True, []
        elif inside and s.startswith("```"):
            out.append("\n".join(buf))
            inside = False
        elif inside:
            buf.append(line)
    if inside and buf:
        out.append("\n".join(buf))            # unterminated block: take what is there
    return out


def extract_code(text: str) -> str:
    """The Python module in a reply: the longest ```python block, else the whole text if it parses as code."""
    blocks = fenced(text, "python") or fenced(text, "py")
    if blocks:
        return max(blocks, key=len).strip() + "\n"
    generic = [b for b in fenced(text, "") if "class " in b]
    if generic:
        return max(generic, key=len).strip() + "\n"
    return text.strip() + "\n"


def extract_json(text: str):
    """The first JSON value in a reply: a ```json block, else the first {...} or [...] that parses."""
    blocks = json_blocks(text)
    if blocks:
        return blocks[0]
    dec = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "[{":
            try:
                return dec.raw_decode(text[i:])[0]
            except ValueError:
                continue
    raise ValueError("no JSON found in the reply")
