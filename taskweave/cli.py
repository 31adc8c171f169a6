"""The `taskweave` command line: tasks, rollout, demo, collect, train, eval, plan, generate, bringup."""
from __future__ import annotations

import argparse
import sys


def _cmd_tasks(args) -> int:
    if getattr(args, "tasks_cmd", None) == "validate":
        from taskweave.envs.gen_validate import validate_main
        return validate_main(args)
    from taskweave.envs import list_tasks
    rows = list_tasks()
    if args.json:
        import json
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        tag = " [long]" if r["long_horizon"] else ""
        print(f"{r['name']:<{width}}  {r['description']}{tag}")
    return 0


def build_parser(wanted: str = "") -> argparse.ArgumentParser:
    """The argument parser; only the `wanted` subcommand's module is imported."""
    p = argparse.ArgumentParser(prog="taskweave", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tasks", help="list tasks (or `tasks validate FILE.py`)")
    t.add_argument("--json", action="store_true")
    tsub = t.add_subparsers(dest="tasks_cmd")
    tl = tsub.add_parser("list", help="list tasks with descriptions")
    tl.add_argument("--json", action="store_true")
    tv = tsub.add_parser("validate", help="validate a generated task file on both backends")
    tv.add_argument("file")
    tv.add_argument("--json", action="store_true")
    tv.add_argument("--seeds", type=int, default=4)
    t.set_defaults(func=_cmd_tasks)

    for name, help_text, module, add_fn, main_fn in COMMANDS:
        _lazy(sub, name, help_text, module, add_fn, main_fn, wanted)
    return p


# name, help, module, argument adder, main: imported only when the command is used.
COMMANDS = (
    ("rollout", "run the oracle on a task and print the success rate", "taskweave.rollout",
     "add_rollout_arguments", "rollout_main"),
    ("demo", "offline end-to-end demo: instruction -> planner -> controller -> video", "taskweave.demo",
     "add_demo_arguments", "demo_main"),
    ("collect", "record oracle demonstrations", "taskweave.policies.collect", "add_collect_arguments",
     "collect_main"),
    ("train", "train the multitask diffusion policy", "taskweave.policies.train", "add_train_arguments",
     "train_main"),
    ("eval", "evaluate a policy checkpoint as the skill controller", "taskweave.policies.evaluate",
     "add_eval_arguments", "eval_main"),
    ("plan", "run an LLM planner on a task", "taskweave.wiring", "add_plan_arguments", "plan_main"),
    ("generate", "generate new tasks with an LLM (GenSim-style)", "taskweave.envs.gen_pipeline",
     "add_generate_arguments", "generate_main"),
    ("bringup", "run the ROS 2 node graph in one process", "taskweave.ros.bringup", "add_bringup_arguments",
     "bringup_main"),
)


def _lazy(sub, name, help_text, module, add_fn, main_fn, wanted) -> None:
    """Register a subcommand; its module is imported only when it is the command being run."""
    import importlib
    if name != wanted:
        sub.add_parser(name, help=help_text, add_help=False)
        return
    try:
        mod = importlib.import_module(module)
        adder, runner = getattr(mod, add_fn), getattr(mod, main_fn)
    except (ImportError, AttributeError) as e:
        s = sub.add_parser(name, help=help_text)
        s.set_defaults(func=lambda args, e=e: _unavailable(name, e))
        return
    s = sub.add_parser(name, help=help_text)
    adder(s)
    s.set_defaults(func=runner)


LIBRARY_COMMANDS = ("tasks", "rollout", "demo", "collect", "eval", "plan")


def _register_library() -> None:
    """Make accepted generated tasks ($TASKWEAVE_LIBRARY or ./task_library) available by name."""
    import os
    path = os.environ.get("TASKWEAVE_LIBRARY", "task_library")
    if os.path.isdir(path):
        from taskweave.envs.gen_library import register_library
        register_library(path)


def _unavailable(name, err) -> int:
    print(f"taskweave {name}: not available in this install ({err})", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    """Entry point of the `taskweave` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = next((a for a in argv if not a.startswith("-")), "")
    if wanted in LIBRARY_COMMANDS:
        _register_library()
    args = build_parser(wanted).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"taskweave {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
