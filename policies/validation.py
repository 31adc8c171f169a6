"""Validation during training: a fixed subset of the val split's windows, measured with the EMA weights.

`policy_dataset(dir, split, config)` reads a split as the config's policy sees it; `val_batches` picks an
evenly spread, fixed subset of the val windows; `validate` returns the mean loss parts ('val_loss',
'val_diffusion', 'val_done') and the sampled chunk's action MSE ('val_action_mse', normalised units) with
fixed noise, leaving the training RNG streams and weights as they were.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import default_collate

from .dataset import DemoDataset
from .diffusion.configuration import DiffusionConfig
from .diffusion.modeling import DiffusionPolicy


def policy_dataset(data_dir: str, split: str, cfg: DiffusionConfig) -> DemoDataset:
    """The split's windows as cfg's policy reads them (robot: frames, proprio and done targets), of
    cfg.train_tasks' episodes only when that is set."""
    robot = cfg.obs_mode == "robot"
    return DemoDataset(data_dir, split, cfg.obs_horizon, cfg.pred_horizon, cfg.action_horizon,
                       load_rgb=cfg.obs_mode == "rgb", robot=robot, tasks=list(cfg.train_tasks) or None,
                       cameras=cfg.cameras if robot else None,
                       preload=robot and cfg.preload_frames, aux_targets=robot and cfg.aux_loss_weight > 0)


def val_batches(data_dir: str, cfg: DiffusionConfig, log) -> Optional[list]:
    """A fixed, evenly spread subset of the val split's windows as batches (None without val episodes)."""
    ds = policy_dataset(data_dir, "val", cfg)
    if len(ds) == 0:
        log(f"{data_dir}: no val episodes, so no validation loss and no best.pt")
        return None
    n = min(len(ds), cfg.val_batches * cfg.batch_size)
    idx = np.unique(np.linspace(0, len(ds) - 1, n).round().astype(int))
    items = [ds[int(i)] for i in idx]
    return [default_collate(items[i:i + cfg.batch_size]) for i in range(0, len(items), cfg.batch_size)]


@torch.no_grad()
def validate(cfg: DiffusionConfig, policy: DiffusionPolicy, ema, batches: list, dev, use_amp: bool) -> dict:
    """Mean loss parts and sampled-chunk action MSE (normalised units) over the val batches, with the EMA
    weights (what gets deployed), eval-mode crops and fixed noise; the training RNG streams are left as they were."""
    params = list(policy.parameters())
    saved = [p.detach().clone() for p in params] if ema is not None else None
    if ema is not None:
        for p, s in zip(params, ema.shadow_params):
            p.copy_(s)
    policy.eval()
    sums: dict = {}
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(cfg.seed + 7919)
            gen = torch.Generator().manual_seed(cfg.seed + 7919)
            for batch in batches:
                batch = {k: v.to(dev) for k, v in batch.items()}
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    terms = policy.loss_terms(batch)
                    chunk = policy.predict_action_chunk(batch, generator=gen)
                norm = policy.action_normalizer.normalize
                terms["action_mse"] = torch.mean((norm(chunk.float()) - norm(batch["action"].float())) ** 2)
                for k, v in terms.items():
                    if v is not None:
                        sums[k] = sums.get(k, 0.0) + float(v) * len(batch["action"])
    finally:
        if saved is not None:
            for p, s in zip(params, saved):
                p.copy_(s)
        policy.train()
    n = sum(len(b["action"]) for b in batches)
    return {f"val_{k}": v / n for k, v in sums.items()}
