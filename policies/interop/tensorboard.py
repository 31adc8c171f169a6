"""TensorBoard logging for training runs: RUN/tensorboard/ beside metrics.jsonl, when `tensorboard` is installed."""
from __future__ import annotations

import os
from typing import Callable, Optional

TB_DIR = "tensorboard"


def open_tensorboard(run_dir: str, log: Optional[Callable] = print):
    """A SummaryWriter on RUN/tensorboard (saying where through log), or None without the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's wrapper raises this when the tensorboard package is missing
        return None
    path = os.path.join(run_dir, TB_DIR)
    writer = SummaryWriter(path)
    if log is not None:
        log(f"tensorboard: logging to {path} (view with: tensorboard --logdir {path})")
    return writer


def log_scalars(writer, record: dict, step: int, keys=("loss", "lr", "samples_per_s"), prefix: str = "train") -> None:
    """Write the record's scalar keys as prefix/key at step (no-op without a writer)."""
    if writer is None:
        return
    for k in keys:
        if k in record:
            writer.add_scalar(f"{prefix}/{k}", record[k], step)
