"""What every converter shares: reading a taskweave dataset episode by episode, writing one, staged outputs.

An output is built in a temp folder (or file) beside OUT and renamed onto OUT only when complete, so
OUT is either absent, its old self, or the whole new thing; an existing non-empty OUT is refused unless
`force` (then it is replaced only after the new output is complete).
"""
from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from taskweave.sim.errors import UserError
from taskweave.sim.fileio import read_json_object

from ..dataset import DatasetWriter, DemoDataset

INSTALL_HINT = "pip install 'taskweave[interop]'"
# EEDeltaController's action: position step, yaw step, gripper (taskweave.sim.control)
ACTION_NAMES = ["dx", "dy", "dz", "dyaw", "gripper"]


class InteropError(UserError, RuntimeError):
    """An input that cannot be converted (malformed file, missing field, existing output); names the file."""


def require(module: str, what: str, package: Optional[str] = None):
    """Import an optional package, or raise InteropError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InteropError(f"{what} needs the '{package or module}' package: {INSTALL_HINT}") from None


@dataclass
class Episode:
    """One episode in taskweave terms; rgb is (T, H, W, 3) uint8 or None, segment_ends are episode-relative."""

    task: str
    seed: int
    split: str
    state: np.ndarray
    action: np.ndarray
    skills: list
    segment_ends: np.ndarray
    rgb: Optional[np.ndarray] = None
    info: dict = field(default_factory=dict)


class TaskweaveSource:
    """A finalised taskweave dataset opened for export (checked by DemoDataset, frames read per episode)."""

    def __init__(self, path: str) -> None:
        import zarr

        self.path = path
        self._ds = DemoDataset(path, split=None, load_rgb=False)  # the dataset's own consistency checks
        self.meta = self._ds.meta
        zpath = self._ds.zarr_path
        try:
            root = zarr.open_group(zpath, mode="r")
            self.segment_ends = np.asarray(root["meta/segment_ends"][:self.meta["num_segments"]], dtype=np.int64)
            self._rgb = root["data/rgb"] if self._ds.has_rgb else None
        except Exception as exc:  # noqa: BLE001 - DemoDataset has checked these; a race or a corrupt chunk
            raise InteropError(f"{zpath}: unreadable ({type(exc).__name__}: {exc})") from None

    @property
    def has_rgb(self) -> bool:
        """Whether the dataset stores camera frames."""
        return self._rgb is not None

    @property
    def rgb_shape(self) -> Optional[tuple]:
        """(H, W, 3) of the stored frames, or None."""
        return tuple(self.meta["obs"]["rgb"]) if self.has_rgb else None

    @property
    def state(self) -> np.ndarray:
        """All states (N, D) float32, in storage order."""
        return self._ds.state

    @property
    def action(self) -> np.ndarray:
        """All actions (N, A) float32, in storage order."""
        return self._ds.action

    @property
    def skills(self) -> list:
        """The skill text vocabulary (index = skill_id)."""
        return list(self.meta["skills"])

    def arrays(self, e: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(state, action, skill_id) of one meta.json episode entry."""
        a, b = e["start"], e["start"] + e["length"]
        return self._ds.state[a:b], self._ds.action[a:b], self._ds.skill_id[a:b].astype(np.int64)

    def segments(self, e: dict) -> np.ndarray:
        """Episode-relative exclusive ends of the skill segments of one episode."""
        a, b = e["start"], e["start"] + e["length"]
        ends = self.segment_ends[(self.segment_ends > a) & (self.segment_ends <= b)]
        return ends - a

    def frames(self, e: dict) -> Optional[np.ndarray]:
        """The episode's frames (T, H, W, 3) uint8, or None without rgb."""
        if self._rgb is None:
            return None
        a, b = e["start"], e["start"] + e["length"]
        try:
            return np.asarray(self._rgb[a:b])
        except Exception as exc:  # noqa: BLE001 - a corrupt chunk
            raise InteropError(f"{self._ds.zarr_path}/data/rgb: corrupt frames {a}..{b} ({exc})") from None


def write_taskweave(out: str, episodes: Iterator[Episode], *, tasks: list, backend: str, control_hz: float,
                    extra: dict, where: str) -> dict:
    """Write episodes as a taskweave dataset in folder out (through DatasetWriter); returns counts."""
    writer = DatasetWriter(out, tasks=tasks, backend=backend, control_hz=control_hz, extra=extra)
    n = steps = 0
    for ep in episodes:
        lengths = np.diff(np.concatenate([[0], np.asarray(ep.segment_ends, dtype=np.int64)]))
        try:
            added = writer.add_episode(ep.task, ep.seed, ep.state, ep.action, ep.skills, rgb=ep.rgb, split=ep.split,
                                       segment_lengths=lengths.tolist(), info=ep.info)
        except ValueError as exc:
            raise InteropError(f"{where}: episode {n} (task {ep.task}, seed {ep.seed}): {exc}") from None
        if not added:
            raise InteropError(f"{where}: episode {n} repeats task {ep.task!r} seed {ep.seed}")
        n += 1
        steps += len(ep.state)
    if n == 0:
        raise InteropError(f"{where}: no episodes")
    writer.finalize()
    return {"episodes": n, "steps": steps}


def _same_or_nested(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def check_output(out: str, force: bool, inputs: tuple = ()) -> str:
    """Refuse an OUT that holds something (unless force) or that is, holds or lies in an input; returns abspath."""
    out = os.path.abspath(out)
    for src in inputs:
        if _same_or_nested(out, src):
            raise InteropError(f"{out}: the output must not be, contain or lie inside the input {src}")
    if os.path.lexists(out) and not force:
        if not os.path.isdir(out) or os.listdir(out):
            raise InteropError(f"{out}: already exists; choose a new output or pass --force to replace it")
    return out


@contextmanager
def staged_folder(out: str, force: bool = False, inputs: tuple = ()) -> Iterator[str]:
    """A temp folder beside out to build into; renamed onto out when the block ends without an error."""
    out = check_output(out, force, inputs)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(out):  # only with force (or an empty folder): swap, then drop the old one
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
        os.rename(out, os.path.join(old, "x"))
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_json(path: str) -> dict:
    """A JSON object from path; a missing or malformed file raises InteropError naming it."""
    return read_json_object(path, InteropError)


def state_names(extra: dict, dim: int) -> Optional[list]:
    """Per-dimension names from a dataset's state_layout ('robot(7) + skill_features(16) ...'), if it adds up."""
    import re

    layout = extra.get("state_layout", "") if isinstance(extra, dict) else ""
    parts = re.findall(r"([A-Za-z][\w-]*)\((\d+)\)", layout)
    names = [f"{name}_{i}" for name, n in parts for i in range(int(n))]
    return names if len(names) == dim else None
