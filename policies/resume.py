"""What an exact training resume needs beyond weights and optimiser: RNG states, the data order, an LR schedule
that stays monotone when a run is extended.

- `LRSchedule`: the warm-up + cosine / linear / constant factor of diffusers' `get_scheduler`, as a callable
  object whose state (kind, warm-up, total, restarts) LambdaLR saves with the checkpoint. `extend(step, total)`
  on a resume with more (or fewer) `--steps` keeps the factor reached at `step` and decays it from there to
  the new end, instead of rebuilding the curve over the new total (which would jump back up).
- `ResumableSampler`: a DistributedSampler that can begin its epoch part-way through, so a resumed run sees
  the batches a straight run would have seen.
- `rng_state()` / `set_rng_state(state)`: torch (CPU and CUDA), numpy and Python RNG states as checkpoint-safe
  data (tensors, lists, numbers; loadable with `torch.load(weights_only=True)`).
"""
from __future__ import annotations

import math
import random
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DistributedSampler

SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup")


class LRSchedule:
    """LR factor by optimiser step: warm-up, then cosine / linear decay to 0 at `total` (or constant).

    The same curve as diffusers' get_scheduler for the four kinds. `restarts` ([step, factor, total] each) is
    where a resumed run changed its total: from there the factor decays from the value it had to 0 at the
    new total, so the schedule never rises again after warm-up.
    """

    def __init__(self, kind: str, warmup: int, total: int) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"LR schedule must be one of {SCHEDULES}, got {kind!r}")
        self.kind, self.warmup, self.total = kind, int(warmup), int(total)
        self.restarts: list = []

    def _shape(self, x: float) -> float:
        """Decay from 1 at x = 0 to 0 at x = 1 (1 throughout for the constant kinds)."""
        x = min(max(x, 0.0), 1.0)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * x))
        if self.kind == "linear":
            return 1.0 - x
        return 1.0

    def base(self, step: int) -> float:
        """The factor of the original curve (warm-up, then decay over total)."""
        if self.kind != "constant" and step < self.warmup:
            return float(step) / float(max(1, self.warmup))
        if self.kind in ("constant", "constant_with_warmup"):
            return 1.0
        span = max(1, self.total - self.warmup)
        return max(0.0, self._shape((step - self.warmup) / span))

    def __call__(self, step: int) -> float:
        """The LR factor at optimiser step `step`."""
        for at, factor, total in reversed(self.restarts):
            if step >= at:
                return factor * self._shape((step - at) / max(1, total - at))
        return self.base(step)

    @property
    def end(self) -> int:
        """The step at which the schedule now ends."""
        return int(self.restarts[-1][2]) if self.restarts else self.total

    def extend(self, step: int, total: int) -> None:
        """Make the schedule end at `total`, continuing from the factor it has at `step` (a resumed run)."""
        total = int(total)
        if total == self.end:
            return
        if not self.restarts and step < self.warmup:
            self.total = total      # still warming up: the decay that follows simply spans the new total
            return
        self.restarts.append([int(step), float(self(step)), total])


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose next epoch can skip its first `skip` samples (set before iterating)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def data_position(step: int, batches_per_epoch: int) -> tuple[int, int]:
    """(epoch, batches already taken in it) after `step` batches of batches_per_epoch per epoch."""
    bpe = max(1, int(batches_per_epoch))
    return step // bpe, step % bpe


def rng_state(device: Optional[torch.device] = None) -> dict:
    """This process's RNG states (torch CPU, the CUDA device's, numpy's global, Python's) as checkpoint data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "gauss": float(gauss)},
           "python": {"version": int(version), "internal": list(internal), "gauss": py_gauss}}
    if device is not None and device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict, device: Optional[torch.device] = None) -> None:
    """Restore RNG states saved by rng_state()."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
