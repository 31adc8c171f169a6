"""Writing rendered frames to a video file, atomically (complete or absent)."""
from __future__ import annotations

import os

import numpy as np

from taskweave.sim.fileio import atomic_path


def write_video(path: str, frames: list, fps: int = 10) -> str:
    """Write RGB frames to an mp4 (or gif by extension) through a temp file, then rename; returns the path."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    path = os.path.abspath(path)
    ext = os.path.splitext(path)[1] or ".mp4"
    kw = {"fps": fps}
    if ext == ".mp4":
        kw.update(codec="libx264", macro_block_size=1, quality=7)
    with atomic_path(path if os.path.splitext(path)[1] else path + ext) as tmp:
        with imageio.get_writer(tmp, **kw) as w:
            for f in frames:
                w.append_data(np.asarray(f, dtype=np.uint8))
    return path
