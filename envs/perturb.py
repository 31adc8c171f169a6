"""Perturbations scheduled inside an episode, for testing closed-loop planners in dynamic scenes."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from taskweave.sim.errors import UserError


KINDS = ("move", "remove", "knock", "grasp_fail")
OFF_TABLE = (1.6, 0.0)


class PerturbationError(UserError, ValueError):
    """A perturbation spec that cannot be parsed or applied."""


@dataclass
class Perturbation:
    """One event: move/remove/knock an object, or make the next grasp fail with probability prob.

    It fires before the `at_skill`-th skill call of the episode (0-based) or at control tick `at_step`.
    """

    kind: str
    target: str = ""
    at_skill: Optional[int] = None
    at_step: Optional[int] = None
    prob: float = 1.0
    pos: Optional[tuple] = None
    fired: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PerturbationError(f"unknown perturbation {self.kind!r} (kinds: {', '.join(KINDS)})")
        if (self.at_skill is None) == (self.at_step is None):
            raise PerturbationError(f"perturbation {self.kind!r} needs exactly one of at_skill or at_step")
        if not 0.0 <= self.prob <= 1.0:
            raise PerturbationError(f"perturbation probability must be in [0, 1], got {self.prob}")


def parse_perturbations(text: str) -> list:
    """Parse 'move:red_block@2,knock@3,remove:blue_block@t40,grasp_fail:0.5@0' into Perturbations."""
    out = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        m = re.fullmatch(r"([a-z_]+)(?::([A-Za-z0-9_.]+))?@(t?)(\d+)", part)
        if not m:
            raise PerturbationError(f"bad perturbation {part!r}: expected kind[:arg]@N (before skill N) or @tN (tick N)")
        kind, arg, tick, when = m.group(1), m.group(2) or "", m.group(3), int(m.group(4))
        kw = {"at_step": when} if tick else {"at_skill": when}
        if kind == "grasp_fail":
            try:
                kw["prob"] = float(arg) if arg else 1.0
            except ValueError:
                raise PerturbationError(f"grasp_fail takes a probability, got {arg!r}") from None
            out.append(Perturbation(kind, **kw))
        else:
            out.append(Perturbation(kind, target=arg, **kw))
    return out


def check_perturbations(perturbations, env) -> None:
    """Refuse (PerturbationError) a schedule that cannot happen in the env's episode, at reset: a target that
    is not an object of the scene, a skill index past the episode's skill budget, or (under low-level
    control) a tick past its step budget."""
    names = list(env.backend.spec.object_names)
    for p in perturbations:
        what = f"perturbation {p.kind}{':' + p.target if p.target else ''}@{'t' if p.at_step is not None else ''}" \
               f"{p.at_skill if p.at_skill is not None else p.at_step}"
        if p.target and p.kind != "grasp_fail" and p.target not in names:
            raise PerturbationError(f"{what}: no object {p.target!r} in the {env.task.name} scene "
                                    f"(objects: {', '.join(names)})")
        if p.at_skill is not None and p.at_skill >= env.max_skills:
            raise PerturbationError(f"{what}: fires before skill {p.at_skill}, but an episode has at most "
                                    f"{env.max_skills} skills (0..{env.max_skills - 1})")
        if p.at_step is not None and env.control == "ee_delta" and p.at_step >= env.max_steps:
            raise PerturbationError(f"{what}: fires at tick {p.at_step}, but an episode has at most "
                                    f"{env.max_steps} control ticks")


def apply_perturbation(p: Perturbation, env, rng: np.random.Generator) -> str:
    """Carry out one perturbation on a TaskEnv; returns a description of what happened."""
    st = env.symbolic_state()
    b = env.backend
    movable = [o.name for o in b.spec.objects if not o.fixed and o.name != st.held
               and o.category != "container" and st.objects[o.name].visible]
    if p.kind == "grasp_fail":
        env._grasp_fail_armed = bool(rng.random() < p.prob)
        return f"next grasp will fail: {env._grasp_fail_armed}"
    if p.kind == "knock":
        stacked = sorted(f.args[0] for f in st.facts if f.name == "on" and (not p.target or f.args[0] == p.target))
        if not stacked:
            return "knock: nothing stacked"
        name = stacked[0]
        base = next(f.args[1] for f in st.facts if f.name == "on" and f.args[0] == name)
        bp = st.objects[base].pos
        ang = float(rng.uniform(0, 2 * math.pi))
        xy = (float(np.clip(bp[0] + 0.09 * math.cos(ang), 0.3, 0.7)), float(np.clip(bp[1] + 0.09 * math.sin(ang), -0.3, 0.3)))
        b.set_object_pose(name, (xy[0], xy[1], st.objects[name].half_extents[2] + 0.002))
        return f"knocked {name} off {base}"
    name = p.target or (str(rng.choice(movable)) if movable else "")
    if not name:
        return f"{p.kind}: no object to perturb"
    if name not in b.spec.object_names:
        raise PerturbationError(f"perturbation names unknown object {name!r}")
    hz = st.objects[name].half_extents[2]
    if p.kind == "remove":
        b.set_object_pose(name, (OFF_TABLE[0], OFF_TABLE[1] + 0.1 * b.spec.object_names.index(name), hz + 0.001))
        return f"removed {name} from the table"
    from taskweave.envs.task import free_spot
    xy = p.pos or free_spot(st, avoid=name, clearance=0.08 + float(rng.uniform(0, 0.03)))
    b.set_object_pose(name, (xy[0], xy[1], hz + 0.002))
    return f"moved {name} to ({xy[0]:.2f}, {xy[1]:.2f})"
