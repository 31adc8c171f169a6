"""Task registry: built-in and library tasks by name, and their gymnasium ids."""
from __future__ import annotations

import difflib

import gymnasium as gym

from taskweave.sim.errors import UserError
from taskweave.envs.task import Task
from taskweave.envs.tasks import BUILTIN_TASKS

TASKS: dict = {}


class UnknownTaskError(UserError, KeyError):
    """A task name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def gym_id(name: str) -> str:
    """The gymnasium id of a task: taskweave/<Task>-v0."""
    return f"taskweave/{name}-v0"


def register_task(factory, name: str = "") -> None:
    """Register a Task class (or zero-argument factory) under its name, with a gymnasium id."""
    name = name or factory.name
    TASKS[name] = factory
    if gym_id(name) not in gym.registry:
        gym.register(id=gym_id(name), entry_point="taskweave.envs.env:TaskEnv", kwargs={"task": name})


def get_task(name) -> Task:
    """A fresh task instance by name (a Task instance passes through)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}{hint} (run `taskweave tasks` to list them)")
    return TASKS[name]()


def list_tasks() -> list:
    """Info dicts of every registered task, sorted by name."""
    return [TASKS[n]().info() for n in sorted(TASKS)]


for _cls in BUILTIN_TASKS:
    register_task(_cls)
