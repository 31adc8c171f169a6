"""Datasets and models that other tools read: LeRobotDataset v3.0, robomimic HDF5, ONNX, TensorBoard.

- `export_dataset(data, out, fmt)` / `import_dataset(src, out, fmt)`: fmt `lerobot` (`lerobot`,
  `lerobot_import`, `video`) or `robomimic` (`robomimic`); outputs are staged and renamed into place
  (`common.staged_folder`), an existing output is refused unless `force`.
- `onnx_export.export_onnx(checkpoint, out)`: the denoising network and an unrolled DDIM graph.
- `tensorboard.open_tensorboard(run_dir)`: a SummaryWriter beside metrics.jsonl when TensorBoard is installed.
The optional packages (the `interop` extra) are imported on use; a missing one is a one-line error.
"""
from __future__ import annotations

from .common import InteropError

FORMATS = ("lerobot", "robomimic")


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InteropError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")


def export_dataset(data: str, out: str, fmt: str, **options) -> dict:
    """Export the taskweave dataset folder data to out in format fmt; returns a summary dict."""
    _check(fmt)
    if fmt == "lerobot":
        from .lerobot import export_lerobot
        return export_lerobot(data, out, **options)
    from .robomimic import export_robomimic
    return export_robomimic(data, out, **options)


def import_dataset(src: str, out: str, fmt: str, **options) -> dict:
    """Import src (a LeRobot folder or a robomimic file) as the taskweave dataset folder out; returns a summary."""
    _check(fmt)
    if fmt == "lerobot":
        from .lerobot_import import import_lerobot
        return import_lerobot(src, out, **options)
    from .robomimic import import_robomimic
    return import_robomimic(src, out, **options)


__all__ = ["FORMATS", "InteropError", "export_dataset", "import_dataset"]
