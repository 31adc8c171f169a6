"""`taskweave tasks [list] [--json]` lists the tasks; `taskweave tasks validate FILE.py` checks a generated one."""
from __future__ import annotations

import argparse
import json

HELP = "List the built-in and library tasks with descriptions ([long]: 4+ skills), or validate a generated task file."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave tasks` and its `list` / `validate` subcommands."""
    from taskweave.commands import validate
    p.add_argument("--json", action="store_true")
    sub = p.add_subparsers(dest="tasks_cmd")
    tl = sub.add_parser("list", help="list tasks with descriptions")
    tl.add_argument("--json", action="store_true")
    tv = sub.add_parser("validate", help="validate a generated task file on both backends")
    validate.add_arguments(tv)


def run(args) -> int:
    """List the tasks (text or JSON), or hand `validate` to its command module."""
    if getattr(args, "tasks_cmd", None) == "validate":
        from taskweave.commands import validate
        return validate.run(args)
    from taskweave.envs import list_tasks
    rows = list_tasks()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        tag = " [long]" if r["long_horizon"] else ""
        print(f"{r['name']:<{width}}  {r['description']}{tag}")
    return 0
