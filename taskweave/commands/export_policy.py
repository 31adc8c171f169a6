"""`taskweave export-policy CHECKPOINT OUT.onnx`: the policy as ONNX graphs for onnxruntime (no Python on the robot).

OUT.onnx maps (state, skill_id, task_id[, rgb], noise) to an action chunk through N unrolled DDIM steps;
OUT.denoiser.onnx is the denoising network, OUT.encoder.onnx the observation encoder and OUT.json says
how to feed them (shapes, skill and task vocabularies, timesteps). Unless --no-check, onnxruntime's
outputs are compared with torch's on random inputs and nothing is written past 1e-4.
"""
from __future__ import annotations

import argparse
import json

from taskweave.commands.common import positive_int

HELP = "export a policy checkpoint as ONNX (unrolled DDIM sampler + denoising network)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave export-policy`."""
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or run folder")
    p.add_argument("out", metavar="OUT.onnx", help="the sampler graph; siblings .denoiser.onnx, .encoder.onnx, .json")
    p.add_argument("--steps", type=positive_int, help="DDIM steps unrolled (default: the config's num_inference_steps)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA ones")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch comparison")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    """Export and print the files and the measured torch/onnxruntime difference."""
    from taskweave.policies.interop.onnx_export import export_onnx

    res = export_onnx(args.checkpoint, args.out, steps=args.steps, use_ema=not args.no_ema,
                      check=not args.no_check, force=args.force)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    chk = res["check"]
    diff = ("unchecked" if chk is None else
            f"max |onnxruntime - torch|: sampler {chk['policy']:.2e}, denoiser {chk['denoiser']:.2e}, "
            f"encoder {chk['encoder']:.2e}")
    print(f"exported DDIM-{res['steps']} policy to {res['files']['policy']} (inputs {', '.join(res['inputs'])}), "
          f"denoiser {res['files']['denoiser']}, encoder {res['files']['encoder']}, meta {res['files']['meta']}; {diff}")
    return 0
