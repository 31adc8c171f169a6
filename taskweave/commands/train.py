"""`taskweave train`: train the multitask diffusion policy on a demonstration dataset.

Under torchrun (DDP) run `torchrun --nproc_per_node=N -m taskweave.policies.train FLAGS` (or
`-m taskweave.cli train FLAGS`): the same flags; only rank 0 prints the final line.
"""
from __future__ import annotations

import argparse
import os

from taskweave.commands.common import check_output_dir, positive_int


def task_list(text: str) -> list:
    """--tasks: comma-separated, non-empty, no repeats."""
    names = [t.strip() for t in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct task names separated by commas")
    return names

HELP = "train the multitask diffusion policy"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Flags of `taskweave train`."""
    ap.add_argument("--data", required=True, help="dataset folder (meta.json + data.zarr)")
    ap.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints)")
    ap.add_argument("--config", help="JSON file of DiffusionConfig fields")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto: CUDA when available)")
    ap.add_argument("--steps", type=positive_int, help="total optimiser steps (overrides the config)")
    ap.add_argument("--batch-size", type=positive_int, help="batch size per process (overrides the config)")
    ap.add_argument("--seed", type=int, help="training seed: weights, noise and data order (overrides the config)")
    ap.add_argument("--tasks", type=task_list,
                    help="comma-separated tasks of the dataset to train on, the rest left out (overrides the "
                         "config's train_tasks; default: all)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Train (or resume) the run and print the final step, loss and checkpoint."""
    from taskweave.policies.device import select_device
    from taskweave.policies.diffusion.configuration import DiffusionConfig
    from taskweave.policies.train import train

    select_device(args.device)  # a bad --device fails before the config or dataset is read
    check_output_dir(args.out)   # a run folder that cannot be written fails before any training
    cfg = DiffusionConfig.load(args.config) if args.config else None
    res = train(args.data, args.out, cfg, device=args.device, steps=args.steps, batch_size=args.batch_size,
                resume=args.resume, progress=not args.no_progress, seed=args.seed, tasks=args.tasks)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: step {res.step}, loss {res.loss:.4f}, checkpoint {res.checkpoint}")
    return 0
