"""The `Planner` protocol and the planner registry: every planner is built by name through `make_planner`."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from taskweave.sim.errors import UserError


@runtime_checkable
class Planner(Protocol):
    """Turns an instruction into skills through an executor and an LLM, and returns the episode record.

    Every planner sees the same things: the executor's `instruction`, its text observation, the results
    of the skills it runs, and snapshot/restore where the executor can (a privileged undo, counted).
    """

    name: str

    def config(self) -> dict:
        """The planner's settings (stored in the record)."""
        ...

    def run(self, executor, llm, *, task: str = "", seed: Optional[int] = None, backend: str = "",
            trace: Optional[Callable[[dict], None]] = None) -> Any:
        """Run one episode to its end and return the EpisodeRecord."""
        ...


class UnknownPlannerError(UserError, ValueError):
    """A planner name that is not registered."""


# name -> (module, class); modules are imported only when their planner is built
_REGISTRY: dict = {
    "tree": ("taskweave.planning.tree_planner", "TreePlanner"),
    "clea": ("taskweave.planning.clea", "CleaAgent"),
    "iterative": ("taskweave.planning.iterative", "IterativePlanner"),
    "openloop": ("taskweave.planning.openloop", "OpenLoopPlanner"),
}
_ALIASES = {"tree_planner": "tree", "treeplanner": "tree", "iterative_planner": "iterative",
            "open_loop": "openloop", "zero_shot": "openloop"}
PLANNERS = tuple(_REGISTRY)


def register_planner(name: str, module: str, cls: str, aliases: tuple = ()) -> None:
    """Make a planner class (by module path and class name) available to `make_planner` under name."""
    global PLANNERS
    if not name or not name.isidentifier():
        raise ValueError(f"bad planner name {name!r}")
    _REGISTRY[name] = (module, cls)
    for a in aliases:
        _ALIASES[a] = name
    PLANNERS = tuple(_REGISTRY)


def planner_class(name: str) -> type:
    """The planner class registered under name (or an alias)."""
    key = (name or "").strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UnknownPlannerError(f"unknown planner {name!r} (choose one of: {', '.join(_REGISTRY)})")
    module, cls = _REGISTRY[key]
    return getattr(importlib.import_module(module), cls)


def make_planner(name: str, **kw) -> Planner:
    """A planner by name: 'tree', 'clea', 'iterative' or 'openloop' (kw go to its constructor)."""
    return planner_class(name)(**kw)


__all__ = ["Planner", "PLANNERS", "UnknownPlannerError", "make_planner", "planner_class", "register_planner"]
