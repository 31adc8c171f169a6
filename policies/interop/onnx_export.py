"""ONNX export of a policy checkpoint: the unrolled DDIM sampler, the denoising network and the observation encoder.

`export_onnx(checkpoint, "policy.onnx")` writes (staged, renamed into place together; policy.onnx last):
  policy.onnx           (observation..., noise) -> action [, done]: the observation encoder, N DDIM steps of
                        the U-Net (eta 0, the policy's clipping and prediction type) and unnormalisation, in
                        data units (B, pred_horizon, action_dim); noise ~ N(0, 1); `done` (B, pred_horizon)
                        probabilities when the policy has a done head
  policy.denoiser.onnx  (sample, timestep, global_cond) -> the U-Net's prediction (epsilon, sample or v)
  policy.encoder.onnx   (observation...) -> global_cond, the FiLM condition
  policy.json           inputs and shapes, skill and task vocabularies (skill_id / task_id index them),
                        the DDIM timesteps and alphas, horizons, and the export's own torch-vs-onnxruntime check
The observation inputs follow the policy (`input_spec`): `state` (or `proprio`), `rgb` (or `rgb_<camera>` per
camera), `skill_id` and, when the policy embeds the task, `task_id`. The batch axis is dynamic.
"""
from __future__ import annotations

import copy
import inspect
import os
import warnings
from typing import Optional

import numpy as np
import torch
from torch import nn

from taskweave.sim.fileio import atomic_path, atomic_write_json

from .common import InteropError, check_output, require

OPSET = 18
TOLERANCE = 1e-4


def input_spec(policy) -> list:
    """(ONNX input name, policy batch key, per-sample shape, dtype) of each observation input, in graph order."""
    cfg = policy.config
    low = getattr(policy, "low_dim_key", "state")
    spec = [(low, low, [cfg.obs_horizon, int(policy.state_normalizer.min.shape[0])], "float32")]
    if getattr(policy, "vision_encoder", None) is not None:
        spec += [(f"rgb_{c}", f"rgb:{c}", [cfg.obs_horizon, *cfg.image_shape], "uint8") for c in cfg.cameras]
    elif getattr(policy, "rgb_encoder", None) is not None:
        spec.append(("rgb", "rgb", [cfg.obs_horizon, *cfg.image_shape], "uint8"))
    spec.append(("skill_id", "skill_id", [], "int64"))
    if getattr(policy, "task_embedding", None) is not None:
        spec.append(("task_id", "task_id", [], "int64"))
    return spec


def _ddim_schedule(policy, steps: int) -> list:
    """(t, alpha_prod_t, alpha_prod_t_prev) per DDIM step, as diffusers' DDIMScheduler (eta 0) takes them."""
    sched = copy.deepcopy(policy._samplers["ddim"])  # the policy's own DDIMScheduler (from_config imports them all)
    sched.set_timesteps(steps)
    ratio = sched.config.num_train_timesteps // steps
    ac = sched.alphas_cumprod.double()
    out = []
    for t in sched.timesteps.tolist():
        prev = t - ratio
        out.append((int(t), float(ac[t]), float(ac[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)))
    return out


class EncoderGraph(nn.Module):
    """(observation...) -> the policy's global condition (B, G)."""

    def __init__(self, policy) -> None:
        super().__init__()
        self.policy, self.keys = policy, [key for _, key, _, _ in input_spec(policy)]

    def forward(self, *obs):
        """The FiLM condition of one batch of observations."""
        return self.policy.global_condition(dict(zip(self.keys, obs)))


class DenoiserGraph(nn.Module):
    """(sample, timestep, global_cond) -> the U-Net's prediction for the noisy normalised chunk."""

    def __init__(self, policy) -> None:
        super().__init__()
        self.unet = policy.unet

    def forward(self, sample, timestep, global_cond):
        """One denoising network evaluation."""
        return self.unet(sample, timestep, global_cond)


class DDIMGraph(nn.Module):
    """(observation..., noise) -> action chunk in data units (and done probabilities): N unrolled DDIM steps."""

    def __init__(self, policy, steps: int) -> None:
        super().__init__()
        self.policy, cfg = policy, policy.config
        self.keys = [key for _, key, _, _ in input_spec(policy)]
        self.schedule = _ddim_schedule(policy, steps)
        self.prediction_type, self.clip = cfg.prediction_type, cfg.clip_sample
        self.clip_range = float(cfg.clip_sample_range)
        self.has_done = getattr(policy, "done_head", None) is not None

    def forward(self, *inputs):
        """Sample a chunk from the observations and the noise (B, pred_horizon, action_dim), the last input."""
        p = self.policy
        cond = p.global_condition(dict(zip(self.keys, inputs[:-1])))
        x = inputs[-1]
        for t, a_t, a_prev in self.schedule:
            out = p.unet(x, torch.tensor([t]), cond)
            sa, sb = a_t ** 0.5, (1.0 - a_t) ** 0.5
            if self.prediction_type == "epsilon":
                x0, eps = (x - sb * out) / sa, out
            elif self.prediction_type == "sample":
                x0, eps = out, (x - sa * out) / sb
            else:  # v_prediction
                x0, eps = sa * x - sb * out, sa * out + sb * x
            if self.clip:
                x0 = x0.clamp(-self.clip_range, self.clip_range)
            x = a_prev ** 0.5 * x0 + (1.0 - a_prev) ** 0.5 * eps
        action = p.action_normalizer.unnormalize(x)
        return (action, torch.sigmoid(p.done_head(cond))) if self.has_done else action


def example_inputs(policy, batch: int = 2, seed: int = 0) -> dict:
    """Random observations keyed by ONNX input name (low-dim values within the normaliser's range)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, key, shape, dtype in input_spec(policy):
        if dtype == "uint8":
            out[name] = torch.randint(0, 256, (batch, *shape), generator=g, dtype=torch.uint8)
        elif name == "skill_id":
            out[name] = torch.randint(0, policy.skill_table.shape[0], (batch,), generator=g)
        elif name == "task_id":
            out[name] = torch.randint(0, policy.config.num_tasks, (batch,), generator=g)
        else:
            lo, hi = policy.state_normalizer.min.cpu(), policy.state_normalizer.max.cpu()
            out[name] = lo + (hi - lo) * torch.rand(batch, *shape, generator=g)
    return out


def as_batch(policy, inputs: dict) -> dict:
    """The policy's batch dict for inputs keyed by ONNX input name."""
    return {key: inputs[name] for name, key, _, _ in input_spec(policy)}


def _export(module: nn.Module, args: tuple, names: list, outputs: list, path: str, opset: int) -> None:
    kw = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer and deprecation notes
        with atomic_path(path) as tmp:
            torch.onnx.export(module.eval(), args, tmp, input_names=names, output_names=outputs, opset_version=opset,
                              dynamic_axes={n: {0: "batch"} for n in names + outputs}, do_constant_folding=True, **kw)


def _outputs(policy) -> list:
    return ["action", "done"] if getattr(policy, "done_head", None) is not None else ["action"]


def export_sampler(policy, path: str, steps: Optional[int] = None, opset: int = OPSET) -> list:
    """Write only the unrolled DDIM graph of a live policy to path (benchmarks); returns its input names."""
    inp = example_inputs(policy)
    names = list(inp) + ["noise"]
    noise = torch.randn(2, policy.config.pred_horizon, policy.config.action_dim)
    _export(DDIMGraph(policy, steps or policy.config.num_inference_steps), tuple(inp.values()) + (noise,),
            names, _outputs(policy), path, opset)
    return names


def session(path: str, threads: Optional[int] = None):
    """An onnxruntime CPU InferenceSession on path (threads: intra-op threads, default onnxruntime's)."""
    ort = require("onnxruntime", "running ONNX models")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def verify(policy, files: dict, steps: int, batch: int = 3, seed: int = 1) -> dict:
    """Max |onnxruntime - torch| per graph on random inputs; the sampler graph against predict_action_chunk."""
    cfg = policy.config
    inp = example_inputs(policy, batch, seed)
    feeds = {k: v.numpy() for k, v in inp.items()}
    noise = torch.randn(batch, cfg.pred_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = policy.predict_action_chunk(as_batch(policy, inp), generator=torch.Generator().manual_seed(seed),
                                           sampler="ddim", num_inference_steps=steps).numpy()
        cond = policy.global_condition(as_batch(policy, inp))
        sample = torch.randn(batch, cfg.pred_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(seed + 1))
        tstep = torch.randint(0, cfg.num_train_timesteps, (batch,), generator=torch.Generator().manual_seed(seed))
        want_eps = policy.unet(sample, tstep, cond).numpy()
    got = session(files["policy"]).run(None, {**feeds, "noise": noise.numpy()})
    got_cond = session(files["encoder"]).run(None, feeds)[0]
    got_eps = session(files["denoiser"]).run(None, {"sample": sample.numpy(), "timestep": tstep.numpy(),
                                                    "global_cond": cond.numpy()})[0]
    report = {"policy": float(np.abs(got[0] - want).max()), "encoder": float(np.abs(got_cond - cond.numpy()).max()),
              "denoiser": float(np.abs(got_eps - want_eps).max()), "batch": batch}
    if len(got) > 1:
        with torch.no_grad():
            report["done"] = float(np.abs(got[1] - policy.predict_done(as_batch(policy, inp), cond).numpy()).max())
    return report


def sidecar_paths(out: str) -> dict:
    """The files one export writes, by role: policy (out itself), denoiser, encoder, meta (.json)."""
    stem = out[:-5] if out.endswith(".onnx") else out
    return {"policy": out, "denoiser": f"{stem}.denoiser.onnx", "encoder": f"{stem}.encoder.onnx",
            "meta": f"{stem}.json"}


def export_onnx(checkpoint: str, out: str, *, steps: Optional[int] = None, use_ema: bool = True,
                opset: int = OPSET, check: bool = True, force: bool = False) -> dict:
    """Export a checkpoint as ONNX graphs (see the module doc); with check, verify them with onnxruntime."""
    require("onnx", "export-policy")
    from ..diffusion.checkpoint import load_policy

    if not out.endswith(".onnx"):
        raise InteropError(f"{out}: the output must be a .onnx file name")
    files = sidecar_paths(os.path.abspath(out))
    for path in files.values():
        check_output(path, force)
    policy = load_policy(checkpoint, "cpu", use_ema=use_ema)
    cfg = policy.config
    steps = steps or cfg.num_inference_steps
    if not 1 <= steps <= cfg.num_train_timesteps:
        raise InteropError(f"--steps {steps}: must lie in 1..{cfg.num_train_timesteps} (num_train_timesteps)")
    inp = example_inputs(policy)
    names, obs = list(inp), tuple(inp.values())
    noise = torch.randn(2, cfg.pred_horizon, cfg.action_dim)
    with torch.no_grad():
        cond = policy.global_condition(as_batch(policy, inp))
    ddim = DDIMGraph(policy, steps)
    staged = {k: f"{v}.staged" for k, v in files.items()}
    try:
        _export(EncoderGraph(policy), obs, names, ["global_cond"], staged["encoder"], opset)
        _export(DenoiserGraph(policy), (noise, torch.tensor([3, 7]), cond), ["sample", "timestep", "global_cond"],
                ["prediction"], staged["denoiser"], opset)
        _export(ddim, obs + (noise,), names + ["noise"], _outputs(policy), staged["policy"], opset)
        report = verify(policy, staged, steps) if check else None
        if report and max(v for k, v in report.items() if k != "batch") > TOLERANCE:
            raise InteropError(f"{out}: onnxruntime disagrees with torch by more than {TOLERANCE} ({report}); "
                               "nothing was written")
        atomic_write_json(staged["meta"], _meta(policy, checkpoint, files, steps, ddim, use_ema, opset, report),
                          indent=2)
        for role in ("meta", "encoder", "denoiser", "policy"):  # policy.onnx last: its presence means complete
            os.replace(staged[role], files[role])
    finally:
        for path in staged.values():
            if os.path.exists(path):
                os.unlink(path)
    return {"files": files, "steps": steps, "check": report, "inputs": names + ["noise"], "outputs": _outputs(policy)}


def _meta(policy, checkpoint, files, steps, ddim, use_ema, opset, report) -> dict:
    """The policy.json contents: how to feed the graphs and what they were exported from."""
    cfg = policy.config
    inputs = {n: {"shape": ["batch", *shape], "dtype": dtype, "batch_key": key}
              for n, key, shape, dtype in input_spec(policy)}
    inputs["noise"] = {"shape": ["batch", cfg.pred_horizon, cfg.action_dim], "dtype": "float32"}
    outputs = {"action": {"shape": ["batch", cfg.pred_horizon, cfg.action_dim], "dtype": "float32"}}
    if "done" in _outputs(policy):
        outputs["done"] = {"shape": ["batch", cfg.pred_horizon], "dtype": "float32"}
    return {"format": "taskweave-onnx-policy", "version": 1, "checkpoint": os.path.abspath(checkpoint),
            "step": policy.step, "ema": use_ema, "opset": opset,
            "files": {k: os.path.basename(v) for k, v in files.items()}, "inputs": inputs, "outputs": outputs,
            "skills": policy.skills, "tasks": policy.tasks, "sampler": "ddim", "num_inference_steps": steps,
            "schedule": [{"timestep": t, "alpha_prod_t": a, "alpha_prod_t_prev": b} for t, a, b in ddim.schedule],
            "obs_horizon": cfg.obs_horizon, "pred_horizon": cfg.pred_horizon, "action_horizon": cfg.action_horizon,
            "prediction_type": cfg.prediction_type, "config": cfg.to_dict(), "check": report}
