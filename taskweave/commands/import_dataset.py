"""`taskweave import-dataset SRC OUT --format lerobot|robomimic`: another tool's dataset as a taskweave dataset.

SRC is a LeRobotDataset v3.0 folder or a robomimic HDF5 file; OUT becomes a taskweave dataset folder
(meta.json + data.zarr) that `taskweave train --data OUT` reads. A malformed SRC gets one line naming
the file and field. OUT is built beside itself and renamed into place; an existing OUT is refused
unless --force.
"""
from __future__ import annotations

import argparse
import json

HELP = "import a LeRobotDataset v3.0 folder or a robomimic HDF5 file as a demonstration dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave import-dataset`."""
    p.add_argument("src", metavar="SRC", help="LeRobot v3.0 folder (lerobot) or .hdf5 file (robomimic)")
    p.add_argument("out", metavar="OUT", help="taskweave dataset folder to create")
    p.add_argument("--format", required=True, choices=("lerobot", "robomimic"))
    p.add_argument("--task", help="task name for episodes that carry none (default: the folder name / env_name)")
    p.add_argument("--camera", help="camera to import as rgb (needed when SRC has several; default: the only one)")
    p.add_argument("--obs-keys", help="robomimic: comma-separated obs keys concatenated into the state "
                                      "(default: obs/state, else every non-image key, sorted)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT (only once the new one is complete)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    """Import and print one summary line (or JSON)."""
    from taskweave.policies.interop import import_dataset
    from taskweave.sim.errors import UserError

    opts = {"task": args.task, "camera": args.camera, "force": args.force}
    if args.obs_keys:
        if args.format != "robomimic":
            raise UserError("--obs-keys applies to --format robomimic only")
        opts["obs_keys"] = [k.strip() for k in args.obs_keys.split(",") if k.strip()]
    res = import_dataset(args.src, args.out, args.format, **opts)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        cam = res.get("camera") or res.get("image_key")
        print(f"imported {res['episodes']} episodes ({res['steps']} steps) from {args.format} to {res['out']}"
              f", rgb {cam or 'none'}; train with: taskweave train --data {res['out']} --out RUN")
    return 0
