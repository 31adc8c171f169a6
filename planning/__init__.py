"""LLM planning: clients (`planning.llm`), prompts, reply reading and grounding, the episode harness,
executors, and the planners (Tree-Planner, CLEA, iterative, open loop) behind one registry."""
from __future__ import annotations

from taskweave.planning.registry import PLANNERS, Planner, make_planner, register_planner


def __getattr__(name):
    """Lazy access to the planner classes and the episode runner (keeps `import taskweave.planning` light)."""
    lazy = {"TreePlanner": "tree_planner", "ActionTree": "tree_planner", "CleaAgent": "clea",
            "IterativePlanner": "iterative", "OpenLoopPlanner": "openloop", "EnvSkillExecutor": "executors",
            "SkillExecutor": "executors", "run_episode": "episode", "EpisodeRecord": "episode",
            "OfflineLLM": "llm.offline"}
    if name in lazy:
        import importlib
        return getattr(importlib.import_module(f"taskweave.planning.{lazy[name]}"), name)
    raise AttributeError(f"module 'taskweave.planning' has no attribute {name!r}")


__all__ = ["PLANNERS", "Planner", "make_planner", "register_planner", "TreePlanner", "ActionTree", "CleaAgent",
           "IterativePlanner", "OpenLoopPlanner", "EnvSkillExecutor", "SkillExecutor", "run_episode",
           "EpisodeRecord", "OfflineLLM"]
