"""Policy checkpoints: one torch file with weights, EMA, optimiser, config, stats and vocabularies.

Files are written atomically (`taskweave.sim.fileio.atomic_write`) and carry a CRC32
over every tensor, so a truncated or bit-flipped file raises CheckpointError naming it.
"""
from __future__ import annotations

import os
import zlib
from typing import Any, Optional

import torch

from taskweave.sim.errors import UserError
from taskweave.sim.fileio import atomic_write

from ..device import select_device
from .configuration import ConfigError, DiffusionConfig, policy_inputs
from .modeling import DiffusionPolicy

CHECKPOINT_FORMAT = "taskweave-diffusion-policy"
CHECKPOINT_VERSION = 1
_REQUIRED = ("format", "version", "step", "config", "model", "normalizer", "skills", "tasks", "checksum")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, truncated, corrupt or incompatible; the message names the file."""


def _tensor_crc(obj: Any, crc: int = 0) -> int:
    """CRC32 over all tensors in a nested dict/list structure, in traversal order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous().reshape(-1)
        crc = zlib.crc32(str((obj.dtype, tuple(obj.shape))).encode(), crc)
        return zlib.crc32(t.view(torch.uint8).numpy().data, crc) if t.numel() else crc
    if isinstance(obj, dict):
        for k, v in obj.items():
            crc = _tensor_crc(v, zlib.crc32(str(k).encode(), crc))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            crc = _tensor_crc(v, crc)
    return crc


def resolve_checkpoint(path: str) -> str:
    """Return the checkpoint file for path: a file, a run folder (checkpoints/last.pt) or a checkpoint folder."""
    if os.path.isdir(path):
        for name in (os.path.join("checkpoints", "last.pt"), "last.pt", "checkpoint.pt"):
            cand = os.path.join(path, name)
            if os.path.isfile(cand):
                return cand
        raise CheckpointError(f"{path}: folder holds no checkpoints/last.pt, last.pt or checkpoint.pt")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def save_checkpoint(path: str, policy: DiffusionPolicy, *, step: int, skills: list, tasks: list,
                    ema: Optional[Any] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                    lr_scheduler: Optional[Any] = None, extra: Optional[dict] = None) -> str:
    """Write a checkpoint atomically to path (a .pt file, or a folder that gets checkpoint.pt); returns the file."""
    if not path.endswith(".pt"):
        path = os.path.join(path, "checkpoint.pt")
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": int(step),
        "config": policy.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "normalizer": policy.stats(), "skills": list(skills), "tasks": list(tasks),
        "extra": extra or {},
        **policy_inputs(policy.config),   # 'policy_inputs' and 'privileged'
        "text_encoder": text_encoder_identity(policy.config),
    }
    payload["checksum"] = _tensor_crc(payload)
    atomic_write(path, lambda fh: torch.save(payload, fh), binary=True)
    return path


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read and verify a checkpoint (file or folder); returns the payload dict with 'path' added."""
    path = resolve_checkpoint(path)
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file (interrupted write?)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupt "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a taskweave checkpoint (top level is {type(payload).__name__})")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a taskweave checkpoint, missing {missing}")
    if payload["format"] != CHECKPOINT_FORMAT or payload["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: format {payload['format']!r} v{payload['version']}, expected "
                              f"{CHECKPOINT_FORMAT!r} v{CHECKPOINT_VERSION}")
    stored = payload.pop("checksum")
    if _tensor_crc(payload) != stored:
        raise CheckpointError(f"{path}: checksum mismatch, the tensor data is corrupt")
    try:
        payload["config"] = DiffusionConfig.from_dict(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: bad config in checkpoint ({exc})") from None
    # checkpoints from before these fields: derived from the config, as save_checkpoint records them now
    for key, value in policy_inputs(payload["config"]).items():
        payload.setdefault(key, value)
    payload.setdefault("text_encoder", text_encoder_identity(payload["config"]))
    payload["path"] = path
    return payload


def text_encoder_identity(config: DiffusionConfig) -> dict:
    """The skill-text encoder as checkpoints record it: spec, model id, weight hash or hashing constants, size."""
    from .text_encoder import encoder_identity
    return encoder_identity(config.text_encoder, config.text_embed_dim)


def copy_ema_into(policy: DiffusionPolicy, ema_state: dict, path: str = "<checkpoint>") -> None:
    """Overwrite the policy's parameters with the EMA shadow parameters of a checkpoint."""
    shadow = ema_state.get("shadow_params") if isinstance(ema_state, dict) else None
    params = list(policy.parameters())
    if shadow is None or len(shadow) != len(params):
        raise CheckpointError(f"{path}: EMA weights do not match the model ({0 if shadow is None else len(shadow)} "
                              f"tensors for {len(params)} parameters)")
    with torch.no_grad():
        for p, s in zip(params, shadow):
            if p.shape != s.shape:
                raise CheckpointError(f"{path}: EMA tensor shape {tuple(s.shape)} != parameter {tuple(p.shape)}")
            p.copy_(s.to(p.device, p.dtype))


def load_policy(path: str, device: str | torch.device = "cpu", use_ema: bool = True) -> DiffusionPolicy:
    """Build a policy in eval mode on device from a checkpoint (EMA weights when present and use_ema).

    device goes through `select_device` ('auto', 'cpu', 'cuda', 'cuda:N'); the policy gets `.skills`
    (skill text vocabulary), `.tasks` (task names) and `.step`.
    """
    ckpt = load_checkpoint(path)
    policy = DiffusionPolicy(ckpt["config"])
    try:
        policy.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt['path']}: weights do not fit the config ({exc})") from None
    if use_ema and ckpt.get("ema"):
        copy_ema_into(policy, ckpt["ema"], ckpt["path"])
    policy.skills, policy.tasks, policy.step = list(ckpt["skills"]), list(ckpt["tasks"]), ckpt["step"]
    policy.policy_inputs, policy.privileged = list(ckpt["policy_inputs"]), bool(ckpt["privileged"])
    policy.text_encoder_identity = dict(ckpt["text_encoder"])
    return policy.to(select_device(device)).eval()


def export_policy(src: str, dst: str, use_ema: bool = True, action_horizon: Optional[int] = None) -> str:
    """Write a small inference-only checkpoint (EMA weights, config, stats, vocabularies) from a run.

    action_horizon, when given, becomes the exported config's execution horizon (actions run from each
    chunk before replanning); it changes no weights, only how runners use the chunks by default.
    """
    policy = load_policy(src, "cpu", use_ema=use_ema)
    if action_horizon is not None:
        policy.config.action_horizon = action_horizon
        policy.config.validate()
    return save_checkpoint(dst, policy, step=policy.step, skills=policy.skills, tasks=policy.tasks,
                           extra={"exported_from": os.path.abspath(src), "ema": use_ema})
