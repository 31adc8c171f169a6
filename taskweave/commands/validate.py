"""`taskweave tasks validate FILE.py [--json] [--seeds N]`: validate a generated task file on both engines.

Exit status 0 when the file is accepted, 1 when it is rejected (the reason goes to stderr); a
missing file, a folder, a non-.py or non-UTF-8 file or a bad --seeds value is a `UserError` (one line, exit 2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from taskweave.commands.common import add_executor_arguments, make_executor_from_args
from taskweave.sim.errors import UserError

HELP = "validate a generated task file on both backends"
MAX_SEEDS = 32


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave tasks validate`: the file, --json and --seeds."""
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--seeds", type=int, default=4)
    add_executor_arguments(p, 2)   # the sandboxed jobs: one worker per backend by default


def run(args) -> int:
    """Validate args.file and print the report (text or JSON); 0 accepted, 1 rejected."""
    path, seeds = args.file, int(getattr(args, "seeds", 4) or 0)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder, not a task file (give one FILE.py)")
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise UserError(f"{path}: not a .py file")
    try:
        with open(path, encoding="utf-8") as f:
            f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it: {e.strerror or e}") from None
    if not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds must be in 1..{MAX_SEEDS}")
    from taskweave.generation.validate import validate_task_file
    with make_executor_from_args(args) as executor:
        rep = validate_task_file(path, seeds, executor=executor)
    if getattr(args, "json", False):
        print(json.dumps(rep.to_dict(), indent=1))
    else:
        print(rep.summary())
    if not rep.accepted:
        print(f"rejected: {rep.stage}: {rep.reason}", file=sys.stderr)
    return 0 if rep.accepted else 1
