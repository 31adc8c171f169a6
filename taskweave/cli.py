"""The `taskweave` command line: one module per command under `taskweave.commands`, a small dispatcher here.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and
calls library functions; only the module of the command being run is imported.

Exit codes (see `taskweave.commands.common`, documented in the README): 0 success; 1 the task failed (a
failed episode); 2 bad input: a `UserError` (unknown task, bad file, bad flag value, unusable output path)
prints one line naming the problem; 3 the run could not complete: a `RunError` (an LLM or physics backend
unavailable, a failed LLM request) prints one line. An OS error that escapes a run prints one line naming
the path (2 for a path the user can fix: permissions, read-only, missing; else 3); anything else is a bug
and shows its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from taskweave.commands.common import EXIT_INCOMPLETE, EXIT_USAGE, os_error_code, os_error_line
from taskweave.sim.errors import RunError, UserError

# command name -> module under taskweave.commands (imported only when that command runs)
COMMANDS = {
    "tasks": "tasks",
    "rollout": "rollout",
    "demo": "demo",
    "collect": "collect",
    "train": "train",
    "eval": "eval",
    "plan": "plan",
    "generate": "generate",
    "bringup": "bringup",
    "models": "models",
    "export-dataset": "export_dataset",
    "import-dataset": "import_dataset",
    "export-policy": "export_policy",
}
HELPS = {  # kept here so that `taskweave --help` imports no command module
    "tasks": "list tasks (or `tasks validate FILE.py`)",
    "rollout": "run the oracle on a task and print the success rate",
    "demo": "end-to-end demo: instruction -> planner -> controller -> video",
    "collect": "record oracle demonstrations",
    "train": "train the multitask diffusion policy",
    "eval": "evaluate a policy checkpoint as the skill controller",
    "plan": "run an LLM planner on a task",
    "generate": "generate new tasks with an LLM (GenSim-style)",
    "bringup": "run the ROS 2 node graph in one process",
    "models": "list the local language models (llama:NAME)",
    "export-dataset": "export a dataset as LeRobotDataset v3.0 or robomimic HDF5",
    "import-dataset": "import a LeRobotDataset v3.0 or robomimic HDF5 dataset",
    "export-policy": "export a policy checkpoint as ONNX",
}
LIBRARY_COMMANDS = ("tasks", "rollout", "demo", "collect", "eval", "plan")


def command_module(name: str):
    """The module of one command."""
    return importlib.import_module(f"taskweave.commands.{COMMANDS[name]}")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`taskweave CMD: error: ...`, exit 2), like a UserError's."""

    def error(self, message: str):
        """Print the one-line error and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(wanted: str = "") -> argparse.ArgumentParser:
    """The argument parser; only the `wanted` subcommand's module is imported."""
    p = OneLineParser(prog="taskweave", description="taskweave: LLM planners, a diffusion policy and "
                                "generated tasks on MuJoCo and PyBullet")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        if name != wanted:
            sub.add_parser(name, help=HELPS[name], add_help=False)
            continue
        mod = command_module(name)
        s = sub.add_parser(name, help=HELPS[name], description=mod.HELP)
        mod.add_arguments(s)
        s.set_defaults(func=mod.run)
    return p


def _register_library() -> None:
    """Make accepted generated tasks ($TASKWEAVE_LIBRARY or ./task_library) available by name."""
    path = os.environ.get("TASKWEAVE_LIBRARY", "task_library")
    if os.path.isdir(path):
        from taskweave.generation.library import register_library
        register_library(path)


def main(argv=None) -> int:
    """Entry point of the `taskweave` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = next((a for a in argv if not a.startswith("-")), "")
    if wanted not in COMMANDS:
        wanted = ""
    try:
        if wanted in LIBRARY_COMMANDS:
            _register_library()
        args = build_parser(wanted).parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"taskweave {wanted or 'error'}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RunError as e:
        print(f"taskweave {wanted or 'error'}: error: {e}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except OSError as e:   # the backstop: outputs are checked before a run, but disks fill and mounts vanish
        print(f"taskweave {wanted or 'error'}: error: {os_error_line(e)}", file=sys.stderr)
        return os_error_code(e)


if __name__ == "__main__":
    sys.exit(main())
