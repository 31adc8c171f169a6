"""Task API, built-in task library, gymnasium envs and perturbations (task generation is `taskweave.generation`)."""
from taskweave.envs.env import TaskEnv, make_env
from taskweave.envs.oracle import validate_oracle
from taskweave.envs.perturb import Perturbation, parse_perturbations
from taskweave.envs.predicates import P, Predicate, SymbolicState
from taskweave.envs.registry import TASKS, UnknownTaskError, get_task, gym_id, list_tasks, register_task
from taskweave.envs.task import Task, TaskError

__all__ = ["TaskEnv", "make_env", "Perturbation", "parse_perturbations", "P", "Predicate", "SymbolicState",
           "TASKS", "UnknownTaskError", "get_task", "gym_id", "list_tasks", "register_task", "Task", "TaskError",
           "validate_oracle"]
