"""LLM planning: clients, prompts, grounding, and the planners (Tree-Planner, CLEA, iterative, open loop)."""
from __future__ import annotations

PLANNERS = ("tree", "clea", "iterative", "openloop")


def make_planner(name: str, **kw):
    """A planner by name: 'tree', 'clea', 'iterative' or 'openloop' (kw go to its constructor)."""
    key = (name or "").strip().lower().replace("-", "_")
    aliases = {"tree": "tree", "tree_planner": "tree", "treeplanner": "tree", "clea": "clea",
               "iterative": "iterative", "iterative_planner": "iterative", "openloop": "openloop",
               "open_loop": "openloop", "zero_shot": "openloop"}
    if key not in aliases:
        raise ValueError(f"unknown planner {name!r} (choose one of: {', '.join(PLANNERS)})")
    key = aliases[key]
    if key == "tree":
        from taskweave.planning.tree_planner import TreePlanner
        return TreePlanner(**kw)
    if key == "clea":
        from taskweave.planning.clea import CleaAgent
        return CleaAgent(**kw)
    if key == "iterative":
        from taskweave.planning.iterative import IterativePlanner
        return IterativePlanner(**kw)
    from taskweave.planning.openloop import OpenLoopPlanner
    return OpenLoopPlanner(**kw)


def __getattr__(name):
    """Lazy access to the planner classes (keeps `import taskweave.planning` light)."""
    lazy = {"TreePlanner": "tree_planner", "ActionTree": "tree_planner", "CleaAgent": "clea",
            "IterativePlanner": "iterative", "OpenLoopPlanner": "openloop", "EnvSkillExecutor": "executors",
            "CallbackSkillExecutor": "executors", "run_episode": "runner", "OfflineLLM": "offline_llm"}
    if name in lazy:
        import importlib
        return getattr(importlib.import_module(f"taskweave.planning.{lazy[name]}"), name)
    raise AttributeError(f"module 'taskweave.planning' has no attribute {name!r}")


__all__ = ["PLANNERS", "make_planner", "TreePlanner", "ActionTree", "CleaAgent", "IterativePlanner",
           "OpenLoopPlanner", "EnvSkillExecutor", "CallbackSkillExecutor", "run_episode", "OfflineLLM"]
