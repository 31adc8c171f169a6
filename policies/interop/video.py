"""Camera streams as mp4 through PyAV: frame-exact timestamps (pts = frame number at the control rate).

`libx264rgb` at crf 0 (the default) is lossless RGB, so frames come back bit-identical; `h264` (yuv420p)
and `libsvtav1` (LeRobot's own default) are lossy and far smaller. A GOP of 2 keeps random access cheap,
as LeRobot's recorder does.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Optional

import numpy as np

from .common import InteropError, require

CODECS = {  # name -> (PyAV encoder, pixel format, options)
    "libx264rgb": ("libx264rgb", "rgb24", {"crf": "0", "preset": "veryfast", "g": "2"}),
    "h264": ("libx264", "yuv420p", {"crf": "18", "preset": "veryfast", "g": "2"}),
    "libsvtav1": ("libsvtav1", "yuv420p", {"crf": "30", "preset": "12", "g": "2"}),
}
LOSSLESS = ("libx264rgb",)


class Mp4Writer:
    """Appends (N, H, W, 3) uint8 frames to one mp4 at fps; `frames` and `bytes` count what was written."""

    def __init__(self, path: str, fps: int, height: int, width: int, codec: str = "libx264rgb") -> None:
        av = require("av", "writing mp4 camera streams")
        if codec not in CODECS:
            raise InteropError(f"video codec {codec!r}: choose one of {', '.join(CODECS)}")
        name, pix_fmt, options = CODECS[codec]
        if pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise InteropError(f"video codec {codec!r} needs even frame sizes, the frames are {height}x{width}; "
                               "use --video-codec libx264rgb")
        self.path, self.fps, self.frames, self.bytes = path, fps, 0, 0
        self._av = av
        self._out = av.open(path, "w", format="mp4")
        self._stream = self._out.add_stream(name, rate=fps, options=dict(options))
        self._stream.pix_fmt, self._stream.height, self._stream.width = pix_fmt, height, width
        self._stream.time_base = Fraction(1, fps)
        self._shape = (height, width, 3)

    def _mux(self, packets) -> None:
        for p in packets:
            self.bytes += p.size
            self._out.mux(p)

    def write(self, frames: np.ndarray) -> None:
        """Append frames (N, H, W, 3) uint8."""
        for f in np.asarray(frames, dtype=np.uint8):
            if f.shape != self._shape:
                raise ValueError(f"frame shape {f.shape} != stream {self._shape}")
            vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts, vf.time_base = self.frames, Fraction(1, self.fps)
            self._mux(self._stream.encode(vf))
            self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file."""
        self._mux(self._stream.encode())
        self._out.close()


def video_info(path: str) -> dict:
    """LeRobot's `info` block of a video feature (codec, pixel format, size, fps) read from the file."""
    av = require("av", "reading mp4 camera streams")
    with av.open(path) as c:
        s = c.streams.video[0]
        return {"video.height": s.height, "video.width": s.width, "video.codec": s.codec_context.name,
                "video.pix_fmt": s.pix_fmt, "video.is_depth_map": False, "video.fps": int(s.base_rate),
                "video.channels": 3, "has_audio": len(c.streams.audio) > 0}


class FrameReader:
    """Reads frames of one mp4 by frame number at fps (from pts), seeking only when a read goes backwards."""

    def __init__(self, path: str, fps: float) -> None:
        av = require("av", "reading mp4 camera streams")
        try:
            self._c = av.open(path)
            self._s = self._c.streams.video[0]
        except (av.error.FFmpegError, IndexError, OSError) as exc:
            raise InteropError(f"{path}: not a readable video ({exc})") from None
        self.path, self.fps = path, fps
        self._it = None
        self._next = 0  # frame number the iterator yields next (approximately: pts decide)
        self._pending: Optional[tuple] = None

    def _frames(self):
        for frame in self._c.decode(self._s):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else float(frame.time)
            yield int(round(t * self.fps)), frame

    def read(self, start: int, n: int) -> np.ndarray:
        """Frames start .. start+n-1 as (n, H, W, 3) uint8; a missing frame raises InteropError."""
        if self._it is None or start < self._next:
            self._c.seek(int(start / self.fps / self._s.time_base), stream=self._s, backward=True, any_frame=False)
            self._it, self._pending = self._frames(), None
        out = []
        while len(out) < n:
            if self._pending is not None:
                idx, frame = self._pending
                self._pending = None
            else:
                nxt = next(self._it, None)
                if nxt is None:
                    raise InteropError(f"{self.path}: ends before frame {start + len(out)} "
                                       f"(wanted {start}..{start + n - 1} at {self.fps} fps)")
                idx, frame = nxt
            if idx < start + len(out):
                continue
            if idx > start + len(out):
                raise InteropError(f"{self.path}: no frame at {(start + len(out)) / self.fps:.4f} s "
                                   f"(next is at {idx / self.fps:.4f} s)")
            out.append(frame.to_ndarray(format="rgb24"))
        self._next = start + n
        return np.stack(out) if out else np.zeros((0, self._s.height, self._s.width, 3), np.uint8)

    def close(self) -> None:
        """Close the file."""
        self._c.close()
