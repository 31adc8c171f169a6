"""Train the diffusion policy on a demonstration dataset; resumable, single process or DDP under torchrun.

(~440 lines: one training loop with its DDP, exact-resume and validation wiring, read together.)

`taskweave train` (flags in `taskweave.commands.train`) calls `train()`. DDP: `torchrun
--nproc_per_node=N -m taskweave.policies.train --data DIR --out RUN ...` (the same flags). A run folder holds config.json (the full config, dims filled in), run_info.json, metrics.jsonl,
checkpoints/last.pt (full training state, rewritten every checkpoint_every steps) and
checkpoints/step_NNNNNNN.pt (weights and EMA only), plus tensorboard/ when TensorBoard is installed.
Rank 0 holds the run folder's lock (`taskweave.sim.locks.FolderLock`) for the whole run and first removes
the `.tmp-*` files an interrupted write left; run_info.json records the dataset's fingerprint, and
`--resume` on another dataset (or on one changed since) is refused.

Robot-input configs (`obs_mode="robot"`) train on the dataset's camera frames, proprio, skill sentences
and done targets (no state, no task id). Every `val_every` steps rank 0 measures the val split (a fixed
subset of its windows, fixed noise, EMA weights): loss parts and the sampled chunk's action MSE go to
val_metrics.jsonl and the best validation loss is kept as checkpoints/best.pt. A resume is exact: last.pt
holds every rank's RNG states and the data order is taken up where it stopped (`policies/resume.py`);
a resume with more `--steps` continues the LR from where it was down to the new end (never back up).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from taskweave.sim.errors import UserError
from taskweave.sim.fileio import atomic_write_json, atomic_write_text
from taskweave.sim.locks import FolderLock

from .dataset import DemoDataset
from .integrity import dataset_fingerprint
from .device import select_device
from .diffusion import make_policy
from .diffusion.checkpoint import load_checkpoint, save_checkpoint
from .diffusion.configuration import DiffusionConfig
from .diffusion.modeling import DiffusionPolicy
from .diffusion.text_encoder import make_text_encoder
from .resume import LRSchedule, ResumableSampler, data_position, rng_state, set_rng_state
from .validation import policy_dataset, val_batches, validate
from .interop.tensorboard import log_scalars, open_tensorboard


class TrainError(UserError, RuntimeError):
    """A training run that cannot start or continue (run folder state, dataset/config mismatch)."""


@dataclass
class TrainResult:
    """What train() returns: final step, last logged loss, run folder, last checkpoint and the policy."""

    step: int
    loss: float
    run_dir: str
    checkpoint: Optional[str]
    policy: DiffusionPolicy


class EMA:
    """Exponential moving average of parameters with warm-up decay 1 - (1 + step) ** -power, capped at max_decay.

    Same maths and state-dict keys as diffusers' EMAModel (use_ema_warmup=True), without importing
    diffusers' model zoo.
    """

    def __init__(self, parameters, max_decay: float = 0.9999, power: float = 0.75, inv_gamma: float = 1.0) -> None:
        self.shadow_params = [p.detach().clone() for p in parameters]
        self.decay, self.power, self.inv_gamma, self.min_decay = max_decay, power, inv_gamma, 0.0
        self.optimization_step = 0

    def get_decay(self, step: int) -> float:
        """Decay used at optimisation step `step` (0 for the first update)."""
        step = max(0, step - 1)
        if step <= 0:
            return 0.0
        return max(self.min_decay, min(self.decay, 1 - (1 + step / self.inv_gamma) ** -self.power))

    @torch.no_grad()
    def step(self, parameters) -> None:
        """Fold the current parameters into the average."""
        self.optimization_step += 1
        params = list(parameters)
        one_minus = 1.0 - self.get_decay(self.optimization_step)
        torch._foreach_sub_(self.shadow_params, torch._foreach_sub(self.shadow_params, params), alpha=one_minus)

    def to(self, device) -> "EMA":
        """Move the averaged parameters to device."""
        self.shadow_params = [p.to(device) for p in self.shadow_params]
        return self

    def state_dict(self) -> dict:
        """Return the state (EMAModel-compatible keys)."""
        return {"decay": self.decay, "min_decay": self.min_decay, "optimization_step": self.optimization_step,
                "update_after_step": 0, "use_ema_warmup": True, "inv_gamma": self.inv_gamma, "power": self.power,
                "shadow_params": self.shadow_params}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from state_dict() (or diffusers EMAModel.state_dict())."""
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow_params):
            raise TrainError(f"EMA state has {len(shadow)} tensors, the model {len(self.shadow_params)}")
        self.shadow_params = [s.to(p.device, p.dtype) for s, p in zip(shadow, self.shadow_params)]
        self.decay, self.power, self.inv_gamma = state["decay"], state["power"], state["inv_gamma"]
        self.min_decay, self.optimization_step = state.get("min_decay", 0.0), int(state["optimization_step"])


def _dist_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them (one process: 0, 1, 0); a world of several processes
    also needs MASTER_ADDR and MASTER_PORT (the rendezvous torchrun sets up), else a TrainError says so."""
    try:
        rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    except ValueError:
        raise TrainError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (launch with torchrun)") from None
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if world > 1 and not os.environ.get(k)]
    if missing or not 0 <= rank < max(world, 1):
        raise TrainError(f"WORLD_SIZE={world} RANK={rank} without a valid rendezvous ({', '.join(missing) or 'RANK'}"
                         f"): launch several processes with `torchrun --nproc-per-node N -m taskweave.policies.train`")
    return rank, world, local


def _ranks_agree(policy, world: int, out_dir: str, is_main: bool, log) -> None:
    """DDP: every rank's weights hash the same (rank 0 writes the digests to RUN/ranks.json), else TrainError."""
    digest = weights_digest(policy.state_dict())
    got = [None] * world
    dist.all_gather_object(got, digest)
    if is_main:
        atomic_write_json(os.path.join(out_dir, "ranks.json"), {"world_size": world, "weights_sha256": got}, indent=1)
    if len(set(got)) != 1:
        raise TrainError(f"the ranks' weights differ after training (sha256 per rank: {got})")
    log(f"weights identical on the {world} ranks (sha256 {digest[:12]})")


def weights_digest(state: dict) -> str:
    """sha256 of a state dict's tensors, in key order (the same bytes on every rank and in the checkpoint)."""
    import hashlib
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _infinite(loader: DataLoader, sampler: DistributedSampler, epoch: int):
    while True:
        sampler.set_epoch(epoch)
        for batch in loader:
            yield batch
        epoch += 1


def _prepare_config(out_dir: str, config: Optional[DiffusionConfig], resume: bool, steps: Optional[int],
                    batch_size: Optional[int], log, seed: Optional[int] = None,
                    tasks: Optional[Sequence[str]] = None) -> tuple[DiffusionConfig, Optional[str], int]:
    config_path = os.path.join(out_dir, "config.json")
    last = os.path.join(out_dir, "checkpoints", "last.pt")
    if resume:
        if not os.path.exists(config_path):
            raise TrainError(f"{config_path}: not found, nothing to resume (drop --resume to start a run)")
        saved = DiffusionConfig.load(config_path)
        if config is not None and config.to_dict() != saved.to_dict():
            log(f"resume: using the run's saved config {config_path}, not the one passed in")
        cfg = saved
        ckpt = last if os.path.exists(last) else None
    else:
        if os.path.exists(last):
            raise TrainError(f"{out_dir}: run folder already has checkpoints; pass --resume or choose a new --out")
        cfg = config or DiffusionConfig()
        ckpt = None
    fixed = {k: v for k, v in (("seed", seed), ("train_tasks", None if tasks is None else tuple(tasks)))
             if v is not None and v != getattr(cfg, k)}
    if resume and fixed:
        saved = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in fixed)
        raise TrainError(f"--resume keeps the run's {' and '.join(fixed)} ({saved}); start a new run (another --out) "
                         f"to change them")
    changes = {k: v for k, v in (("steps", steps), ("batch_size", batch_size)) if v is not None}
    changes.update(fixed)
    return (cfg.replace(**changes) if changes else cfg), ckpt, cfg.steps   # steps before this call's --steps


def _fill_dims(cfg: DiffusionConfig, ds: DemoDataset, text_dim: int, resuming: bool) -> DiffusionConfig:
    if cfg.obs_mode == "robot":   # no state vector and no task id go in
        dims = {"proprio_dim": ds.proprio.shape[1], "action_dim": ds.action.shape[1], "num_skills": len(ds.skills),
                "text_embed_dim": text_dim, "image_shape": ds.frame_shape, "state_dim": None, "num_tasks": None}
    else:
        dims = {"state_dim": ds.state.shape[1], "action_dim": ds.action.shape[1], "num_tasks": len(ds.tasks),
                "num_skills": len(ds.skills), "text_embed_dim": text_dim,
                "image_shape": tuple(ds.meta["obs"]["rgb"]) if cfg.obs_mode == "rgb" else None}
    if resuming:
        bad = {k: (getattr(cfg, k), v) for k, v in dims.items() if getattr(cfg, k) != v}
        if bad:
            raise TrainError(f"dataset does not match the run being resumed (saved, dataset): {bad}")
        return cfg
    return cfg.replace(**dims)


def train(data_dir: str, out_dir: str, config: Optional[DiffusionConfig] = None, device: str = "auto",
          steps: Optional[int] = None, batch_size: Optional[int] = None, resume: bool = False, *,
          progress: bool = True, log=print, seed: Optional[int] = None,
          tasks: Optional[Sequence[str]] = None) -> TrainResult:
    """Train (or resume) a policy on data_dir, writing the run folder out_dir; DDP when WORLD_SIZE > 1. seed and
    tasks override the config's seed and train_tasks (a new run only)."""
    rank, world, local_rank = _dist_env()
    dev = select_device(device, local_rank)
    own_group = False
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        own_group = True
    is_main = rank == 0
    log = log if is_main else (lambda *a, **k: None)
    lock = None
    try:
        if resume and not os.path.isdir(out_dir):
            raise TrainError(f"{out_dir}: run folder not found, nothing to resume (drop --resume to start a run)")
        if is_main:
            lock = FolderLock(out_dir, "train", log=log).acquire()
            removed = lock.clean_temporaries(("", "checkpoints"))
            if removed:
                log(f"removed {len(removed)} temporary file(s) ({sum(n for _, n in removed) / 1e6:.1f} MB) an "
                    f"interrupted write left in {out_dir}")
        cfg, ckpt_path, prev_steps = _prepare_config(out_dir, config, resume, steps, batch_size, log, seed, tasks)
        ds = policy_dataset(data_dir, "train", cfg)   # an unknown train_tasks name is a DatasetError
        if len(ds) == 0:
            raise TrainError(f"{data_dir}: no training windows (no episodes with split 'train')")
        fingerprint = dataset_fingerprint(ds.meta)
        if resume:
            _check_same_dataset(out_dir, data_dir, ds, fingerprint)
        encoder = make_text_encoder(cfg.text_encoder, cfg.text_embed_dim)
        cfg = _fill_dims(cfg, ds, encoder.dim, resuming=ckpt_path is not None)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        policy = make_policy(cfg, ds.skills, ds.tasks, ds.stats(), encoder=encoder, device=dev)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                      foreach=True)
        schedule = LRSchedule(cfg.lr_scheduler, cfg.warmup_steps, prev_steps if ckpt_path is not None else cfg.steps)
        lr_sched = LambdaLR(optimizer, schedule)   # its state_dict carries the schedule's (total, restarts)
        ema = EMA(policy.parameters(), cfg.ema_max_decay, cfg.ema_power) if cfg.use_ema and is_main else None
        start, extra = 0, {}
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path, map_location=dev)
            for what in ("tasks", "skills"):
                if list(ckpt[what]) != list(getattr(ds, what)):
                    raise TrainError(f"--resume with another dataset: {ckpt_path} was trained on {what} "
                                     f"{list(ckpt[what])}, {data_dir} has {list(getattr(ds, what))}")
            policy.load_state_dict(ckpt["model"])
            if ckpt["optimizer"] is not None:
                optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt["lr_scheduler"] is not None:
                lr_sched.load_state_dict(ckpt["lr_scheduler"])
            if ema is not None and ckpt["ema"] is not None:
                ema.load_state_dict(ckpt["ema"])
                ema.to(dev)
            start, extra = ckpt["step"], dict(ckpt.get("extra") or {})
            if schedule.end != cfg.steps:
                if cfg.steps > start and schedule(start) == 0.0 and cfg.lr_scheduler in ("cosine", "linear"):
                    raise TrainError(f"{out_dir}: the run's LR schedule ended at step {schedule.end} (LR 0), so "
                                     f"extending it to {cfg.steps} steps would train at LR 0; start a new run "
                                     f"(another --out) with the longer --steps")
                log(f"resume: the LR schedule now ends at step {cfg.steps} (was {schedule.end}), continuing down "
                    f"from its value at step {start}")
                schedule.extend(start, cfg.steps)
            log(f"resumed {ckpt_path} at step {start}")
            if is_main:
                for name in ("metrics.jsonl", "val_metrics.jsonl"):
                    _trim_metrics(os.path.join(out_dir, name), start)
        elif resume:
            log(f"{out_dir}: no checkpoint yet, starting at step 0 with the saved config")
        if is_main:
            os.makedirs(out_dir, exist_ok=True)
            cfg.save(os.path.join(out_dir, "config.json"))  # rewritten on resume: steps may have grown
        if is_main and ckpt_path is None:
            info = {"data": os.path.abspath(data_dir), "dataset_fingerprint": fingerprint,
                    "dataset_backend": ds.meta.get("backend"), "dataset_episodes": len(ds.meta["episodes"]),
                    "num_train_windows": len(ds), "skills": ds.skills,
                    "tasks": ds.tasks, "train_tasks": list(cfg.train_tasks) or ds.tasks,
                    "num_train_episodes": len(ds.episodes), "world_size": world, "device": str(dev),
                    "torch": torch.__version__,
                    "policy_inputs": policy.policy_inputs, "privileged": policy.privileged}
            atomic_write_json(os.path.join(out_dir, "run_info.json"), info, indent=2)
        val = val_batches(data_dir, cfg, log) if is_main and cfg.val_every > 0 else None
        states = extra.get("rng")
        if isinstance(states, list) and len(states) == world:
            set_rng_state(states[rank], dev)   # exactly where the interrupted run was
        else:
            if start:
                log("resume: the checkpoint holds no RNG states for this world size; reseeding (not exact)")
            torch.manual_seed(cfg.seed + 1000 * rank + start)  # fresh noise on each rank
            np.random.seed((cfg.seed + 1000 * rank + start) % 2**32)

        model: torch.nn.Module = policy
        if world > 1:
            model = DistributedDataParallel(policy, device_ids=[dev.index] if dev.type == "cuda" else None)
        if cfg.compile:
            model = torch.compile(model)
        sampler = ResumableSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
        loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            drop_last=len(sampler) >= cfg.batch_size, pin_memory=dev.type == "cuda",
                            persistent_workers=cfg.num_workers > 0,
                            generator=torch.Generator().manual_seed(cfg.seed))  # leaves the global RNG alone
        epoch, taken = data_position(start, len(loader))
        sampler.skip = taken * cfg.batch_size      # the rest of the epoch the interrupted run was in
        batches = _infinite(loader, sampler, epoch=epoch)
        result = _loop(cfg, policy, model, optimizer, lr_sched, ema, batches, dev, out_dir, start, ds,
                       world, is_main, progress, log, val, extra.get("best_val_loss"))
        if world > 1:
            _ranks_agree(policy, world, out_dir, is_main, log)
        return result
    finally:
        # the DDP wrapper's reducer holds the process group: free it first, or destroying the group leaves a
        # gloo destructor joining threads of a dead group later (a hang seen at interpreter exit)
        model = None
        if own_group and dist.is_initialized():
            import gc
            gc.collect()
            dist.destroy_process_group()
        if lock is not None:
            lock.release()


def _check_same_dataset(out_dir: str, data_dir: str, ds: DemoDataset, fingerprint: str) -> None:
    """Refuse to resume a run on a dataset other than (or changed since) the one it started on."""
    path = os.path.join(out_dir, "run_info.json")
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return   # no record (a run from before fingerprints): the checkpoint's vocabularies are still compared
    old = info.get("dataset_fingerprint") if isinstance(info, dict) else None
    if old is not None and old != fingerprint:
        raise TrainError(f"--resume with another dataset: the run started on {info.get('data')} (fingerprint {old}, "
                         f"{info.get('dataset_episodes', '?')} episodes, tasks {info.get('tasks')}), --data "
                         f"{data_dir} is {fingerprint} ({len(ds.meta['episodes'])} episodes, tasks {ds.tasks}); "
                         f"start a new run with another --out")


def _trim_metrics(path: str, step: int) -> None:
    """Drop metric records past step (logged after the checkpoint a resumed run restarts from)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        lines = [ln for ln in fh if ln.strip()]
    keep = []
    for ln in lines:
        try:
            if json.loads(ln)["step"] <= step:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from the crash
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep))


def _loop(cfg, policy, model, optimizer, lr_sched, ema, batches, dev, out_dir, start, ds, world, is_main,
          progress, log, val=None, best=None) -> TrainResult:
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    folder = os.path.join(out_dir, "checkpoints")
    tb = open_tensorboard(out_dir, log) if is_main else None  # RUN/tensorboard/ when tensorboard is installed
    use_amp = cfg.use_amp and dev.type == "cuda"
    bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and is_main), desc="train", dynamic_ncols=True)
    loss_sum, loss_n, t_last, last_loss, last_ckpt = 0.0, 0, time.perf_counter(), float("nan"), None
    parts: dict = {}   # loss parts (diffusion, done) summed since the last log line
    model.train()
    for step in range(start + 1, cfg.steps + 1):
        batch = {k: v.to(dev, non_blocking=True) for k, v in next(batches).items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            terms = model(batch, return_terms=True)
        loss = terms["loss"]
        for k, v in terms.items():
            if k != "loss":
                parts[k] = parts.get(k, 0.0) + v.detach()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip_norm)
        optimizer.step()
        lr_sched.step()
        if ema is not None:
            ema.step(policy.parameters())
        loss_sum += loss.detach()
        loss_n += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = loss_sum / loss_n
            if world > 1:
                dist.all_reduce(mean)
                mean = mean / world
            last_loss = float(mean)
            if not math.isfinite(last_loss):
                raise TrainError(f"loss became {last_loss} at step {step}")
            now = time.perf_counter()
            rec = {"step": step, "loss": last_loss, "lr": lr_sched.get_last_lr()[0],
                   "samples_per_s": loss_n * cfg.batch_size * world / max(now - t_last, 1e-9), "time": time.time()}
            for k, v in parts.items():
                v = v / loss_n
                if world > 1:
                    dist.all_reduce(v)
                    v = v / world
                rec[k] = float(v)
            if is_main:
                with open(metrics_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
                log_scalars(tb, rec, step, keys=("loss", "lr", "samples_per_s", *parts))
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{rec['lr']:.2e}")
            loss_sum, loss_n, t_last, parts = 0.0, 0, now, {}
        bar.update(1)
        if val is not None and (step % cfg.val_every == 0 or step == cfg.steps):   # rank 0 only
            vrec = {"step": step, **validate(cfg, policy, ema, val, dev, use_amp), "time": time.time()}
            vrec["best"] = best is None or vrec["val_loss"] < best
            if vrec["best"]:
                best = vrec["val_loss"]
                save_checkpoint(os.path.join(folder, "best.pt"), policy, step=step, skills=ds.skills, tasks=ds.tasks,
                                ema=ema, extra={"val_loss": best})
            with open(os.path.join(out_dir, "val_metrics.jsonl"), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(vrec) + "\n")
            log_scalars(tb, vrec, step, keys=[k for k in vrec if k.startswith("val_")], prefix="val")
            log(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in vrec.items() if k.startswith("val_"))
                + (" (best)" if vrec["best"] else ""))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            states = [rng_state(dev)]   # every rank's, for an exact resume
            if world > 1:
                states = [None] * world
                dist.all_gather_object(states, rng_state(dev))
            if is_main:
                common = dict(step=step, skills=ds.skills, tasks=ds.tasks, ema=ema)
                save_checkpoint(os.path.join(folder, f"step_{step:07d}.pt"), policy, **common)
                last_ckpt = save_checkpoint(os.path.join(folder, "last.pt"), policy, optimizer=optimizer,
                                            lr_scheduler=lr_sched, extra={"rng": states, "best_val_loss": best},
                                            **common)
            if world > 1:
                dist.barrier()
    bar.close()
    if tb is not None:
        tb.close()
    if start >= cfg.steps:
        log(f"nothing to do: run is at step {start}, steps = {cfg.steps}")
    return TrainResult(step=max(start, cfg.steps), loss=last_loss, run_dir=out_dir,
                       checkpoint=last_ckpt, policy=policy)


if __name__ == "__main__":  # torchrun -m taskweave.policies.train ...: the `taskweave train` command
    from taskweave.cli import main as _cli_main
    sys.exit(_cli_main(["train", *sys.argv[1:]]))
