"""`taskweave export-dataset DATA OUT --format lerobot|robomimic`: a taskweave dataset in another tool's format.

lerobot writes a LeRobotDataset v3.0 folder (parquet + mp4, fps = the control rate, the skill text as
the per-frame task); robomimic writes one HDF5 file (data/demo_K, mask/train|valid|test). OUT is
built beside itself and renamed into place when complete; an existing OUT is refused unless --force.
"""
from __future__ import annotations

import argparse
import json

HELP = "export a demonstration dataset as LeRobotDataset v3.0 or robomimic HDF5"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave export-dataset`."""
    p.add_argument("data", metavar="DATA", help="taskweave dataset folder (meta.json + data.zarr)")
    p.add_argument("out", metavar="OUT", help="output: a folder (lerobot) or an .hdf5 file (robomimic)")
    p.add_argument("--format", required=True, choices=("lerobot", "robomimic"))
    p.add_argument("--camera", default="front",
                   help="camera name of the frames: observation.images.<camera> / obs/<camera>_image (default front)")
    p.add_argument("--video-codec", default="libx264rgb", choices=("libx264rgb", "h264", "libsvtav1"),
                   help="lerobot mp4 codec: libx264rgb is lossless (default); h264 and libsvtav1 are lossy, smaller")
    p.add_argument("--force", action="store_true", help="replace an existing OUT (only once the new one is complete)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    """Export and print one summary line (or JSON)."""
    from taskweave.policies.interop import export_dataset

    opts = {"camera": args.camera, "force": args.force}
    if args.format == "lerobot":
        opts["video_codec"] = args.video_codec
    res = export_dataset(args.data, args.out, args.format, **opts)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        extra = (f", splits {res['splits']}, video {res['video'] or 'none'}" if args.format == "lerobot"
                 else f", masks {res['masks']}, images {res['image_key'] or 'none'}")
        print(f"exported {res['episodes']} episodes ({res['frames']} frames) as {args.format} to {res['out']}{extra}")
    return 0
