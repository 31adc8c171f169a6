"""Torch device selection, the one home for it: training, the runner, evaluation and the ROS policy node.

`select_device("auto" | "cpu" | "cuda" | "cuda:N", local_rank)` validates the same way for every
caller: an unknown string, or CUDA asked for where there is none, raises `DeviceError` (a
`UserError`, so the CLI prints it as one line); "auto" takes CUDA when present, else the CPU.
"""
from __future__ import annotations

from typing import Union

import torch

from taskweave.sim.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


class DeviceError(UserError, ValueError):
    """A device string that is unknown or names hardware this machine does not have."""


def _choices() -> str:
    return ", ".join(DEVICE_CHOICES)


def select_device(device: Union[str, torch.device, None] = "auto", local_rank: int = 0) -> torch.device:
    """Map 'auto' | 'cpu' | 'cuda' | 'cuda:N' to a torch.device ('cuda' and CUDA 'auto' use GPU local_rank)."""
    if device is None:
        device = "auto"
    name = str(device).strip().lower() if isinstance(device, (str, torch.device)) else None
    if name is None:
        raise DeviceError(f"device {device!r} is not a device name; choices: {_choices()}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    kind, sep, index = name.partition(":")
    if kind != "cuda" or (sep and not index.isdigit()):
        raise DeviceError(f"unknown device {str(device)!r}; choices: {_choices()}")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {str(device)!r} requested but no CUDA GPU is available; use auto or cpu")
    idx = int(index) if sep else int(local_rank)
    count = torch.cuda.device_count()
    if not 0 <= idx < count:
        raise DeviceError(f"device {str(device)!r}: no GPU {idx} ({count} visible); choices: {_choices()}")
    return torch.device("cuda", idx)


__all__ = ["DEVICE_CHOICES", "DeviceError", "select_device"]
