"""Multitask diffusion policy: a FiLM-conditioned 1-D U-Net over action chunks (Chi et al.), and a done head.

(~410 lines: the U-Net, the policy's conditioning, its three training losses and its samplers share one config.)
"""
from __future__ import annotations

import math
from collections import deque
from typing import Optional

import numpy as np

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .configuration import DiffusionConfig
from .normalize import MinMaxNormalizer
from .vision import RgbEncoder, SpatialSoftmax, VisionEncoder  # noqa: F401 - RgbEncoder, SpatialSoftmax re-exported


AUX_DIM = 6        # the auxiliary head's targets: named object - TCP (3), target - TCP (3), in metres
AUX_SCALE = 10.0   # ... regressed in decimetres, so the loss is of the order of the diffusion loss


# ----------------------------------------------------------------------------- U-Net parts
class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a (B,) diffusion timestep into (B, dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed timesteps t (B,) as (B, dim)."""
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        arg = t.float()[:, None] * freq[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                                   nn.GroupNorm(n_groups, c_out), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to x (B, C, T)."""
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM (per-channel scale and bias from the condition) and a residual."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Conv1dBlock(c_in, c_out, kernel_size, n_groups),
                                     Conv1dBlock(c_out, c_out, kernel_size, n_groups)])
        self.c_out = c_out
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Apply the block to x (B, C_in, T) under cond (B, cond_dim)."""
        out = self.blocks[0](x)
        scale, bias = self.cond_encoder(cond).unsqueeze(-1).chunk(2, dim=1)
        out = scale * out + bias
        out = self.blocks[1](out)
        return out + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """1-D U-Net over (B, T, action_dim) denoising inputs, FiLM-conditioned on [t-embedding ; global cond]."""

    def __init__(self, input_dim: int, global_cond_dim: int, diffusion_step_embed_dim: int = 128,
                 down_dims: tuple = (256, 512, 1024), kernel_size: int = 5, n_groups: int = 8) -> None:
        super().__init__()
        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, dsed * 4), nn.Mish(), nn.Linear(dsed * 4, dsed))
        cond_dim = dsed + global_cond_dim
        dims = [input_dim, *down_dims]
        pairs = list(zip(dims[:-1], dims[1:]))
        block = lambda a, b: ConditionalResidualBlock1D(a, b, cond_dim, kernel_size, n_groups)  # noqa: E731
        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.down_modules = nn.ModuleList()
        for i, (a, b) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down_modules.append(nn.ModuleList([
                block(a, b), block(b, b), nn.Conv1d(b, b, 3, 2, 1) if not last else nn.Identity()]))
        self.up_modules = nn.ModuleList()
        for a, b in reversed(pairs[1:]):  # every up level undoes one down-sampling
            self.up_modules.append(nn.ModuleList([block(b * 2, a), block(a, a), nn.ConvTranspose1d(a, a, 4, 2, 1)]))
        self.final_conv = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                        nn.Conv1d(down_dims[0], input_dim, 1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """Predict the noise (or sample) for sample (B, T, input_dim) at timesteps (B,) under global_cond (B, G)."""
        x = sample.transpose(1, 2)
        if not torch.is_tensor(timestep) or timestep.ndim == 0:
            timestep = torch.as_tensor(timestep, device=sample.device).reshape(1)
        timestep = timestep.to(sample.device).expand(sample.shape[0])
        cond = torch.cat([self.diffusion_step_encoder(timestep), global_cond], dim=-1)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid(x, cond)
        for res1, res2, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = res2(res1(x, cond), cond)
            x = up(x)
        return self.final_conv(x).transpose(1, 2)


# ----------------------------------------------------------------------------- observation encoders
class StateEncoder(nn.Module):
    """MLP from the state vector (robot + skill features) to a feature vector."""

    def __init__(self, state_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, hidden_dim), nn.Mish(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode x (..., state_dim) into (..., out_dim)."""
        return self.net(x)


# ----------------------------------------------------------------------------- the policy
class DiffusionPolicy(nn.Module):
    """Denoises action chunks conditioned on obs features over the obs horizon and the skill text (and, in the
    privileged modes, the task); with `done_head`, also predicts when the skill is over.

    Batches are dicts. obs_mode 'state' / 'rgb' (privileged baselines): 'state' (B, To, D) float, 'rgb'
    (B, To, H, W, 3) uint8 for 'rgb', 'task_id' (B,) long. obs_mode 'robot': 'rgb:<camera>' (B, To, H, W, 3)
    uint8 for every camera of config.cameras and 'proprio' (B, To, P) float, nothing else. Every mode: the
    skill as 'skill_embed' (B, E) or 'skill_id' (B,) into the stored skill table; for training 'action'
    (B, Tp, A) and, with the done head, 'done' (B, Tp) in {0, 1} (see `done_targets`).
    """

    def __init__(self, config: DiffusionConfig, skill_embeddings: Optional[torch.Tensor] = None,
                 stats: Optional[dict] = None) -> None:
        super().__init__()
        cfg = config
        robot = cfg.obs_mode == "robot"
        for name in ("proprio_dim", "action_dim") if robot else ("state_dim", "action_dim", "num_tasks"):
            if getattr(cfg, name) is None:
                raise ValueError(f"DiffusionConfig.{name} must be set (train() fills it from the dataset)")
        if cfg.obs_mode in ("rgb", "robot") and cfg.image_shape is None:
            raise ValueError(f"DiffusionConfig.image_shape must be set for obs_mode={cfg.obs_mode!r}")
        self.config = cfg
        num_skills = cfg.num_skills or (len(skill_embeddings) if skill_embeddings is not None else 1)
        table = torch.zeros(num_skills, cfg.text_embed_dim)
        if skill_embeddings is not None:
            if tuple(skill_embeddings.shape) != tuple(table.shape):
                raise ValueError(f"skill_embeddings shape {tuple(skill_embeddings.shape)} != {tuple(table.shape)}")
            table.copy_(skill_embeddings)
        self.register_buffer("skill_table", table)
        self.state_normalizer = MinMaxNormalizer(cfg.proprio_dim if robot else cfg.state_dim)  # 'proprio' in robot
        self.action_normalizer = MinMaxNormalizer(cfg.action_dim)
        if stats is not None:
            self.set_stats(stats)
        self.state_encoder = self.rgb_encoder = self.vision_encoder = self.task_embedding = None
        if robot:  # Diffusion Policy: per-step camera features and the normalised low-dim obs, concatenated
            self.vision_encoder = VisionEncoder(cfg.cameras, cfg.crop_size, cfg.vision_width, cfg.num_keypoints,
                                                cfg.rgb_feature_dim, cfg.vision_shared, cfg.vision_stages,
                                                cfg.text_embed_dim if cfg.vision_film else 0)
            obs_feat = self.vision_encoder.out_dim + cfg.proprio_dim
        else:
            self.state_encoder = StateEncoder(cfg.state_dim, cfg.state_hidden_dim, cfg.state_feature_dim)
            obs_feat = cfg.state_feature_dim
            if cfg.obs_mode == "rgb":
                self.rgb_encoder = RgbEncoder(cfg.crop_size, cfg.rgb_channels, cfg.num_keypoints, cfg.rgb_feature_dim)
                obs_feat += cfg.rgb_feature_dim
        self.skill_proj = nn.Sequential(nn.Linear(cfg.text_embed_dim, cfg.skill_cond_dim), nn.Mish())
        global_cond_dim = obs_feat * cfg.obs_horizon + cfg.skill_cond_dim
        if not robot:
            self.task_embedding = nn.Embedding(cfg.num_tasks, cfg.task_embed_dim)
            global_cond_dim += cfg.task_embed_dim
        self.unet = ConditionalUnet1D(cfg.action_dim, global_cond_dim, cfg.diffusion_step_embed_dim,
                                      cfg.down_dims, cfg.kernel_size, cfg.n_groups)
        self.done_head = None
        if cfg.done_head:  # logits of 'the skill is over' at each chunk step, from the same condition
            self.done_head = nn.Sequential(nn.Linear(global_cond_dim, cfg.done_hidden_dim), nn.Mish(),
                                           nn.Linear(cfg.done_hidden_dim, cfg.pred_horizon))
        self.aux_head = None
        if cfg.aux_loss_weight > 0:  # training-only labels: the named object's and the target's offsets from the TCP
            self.aux_head = nn.Sequential(nn.Linear(global_cond_dim, cfg.aux_hidden_dim), nn.Mish(),
                                          nn.Linear(cfg.aux_hidden_dim, AUX_DIM))
        sched = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                     clip_sample=cfg.clip_sample, clip_sample_range=cfg.clip_sample_range,
                     prediction_type=cfg.prediction_type)
        self.noise_scheduler = DDPMScheduler(**sched)
        self._samplers = {"ddpm": DDPMScheduler(**sched),
                          "ddim": DDIMScheduler(**sched, set_alpha_to_one=True, steps_offset=0)}
        self.reset()

    # -- normalisation
    @property
    def low_dim_key(self) -> str:
        """The batch key of the low-dimensional observation: 'proprio' (robot) or 'state' (privileged)."""
        return "proprio" if self.config.obs_mode == "robot" else "state"

    def set_stats(self, stats: dict) -> None:
        """Load normaliser stats {'state' or 'proprio': {'min','max'}, 'action': {'min','max'}}."""
        key = self.low_dim_key
        if key not in stats:
            raise KeyError(f"normaliser stats need {key!r} and 'action' for obs_mode={self.config.obs_mode!r}, "
                           f"got {sorted(stats)}")
        self.state_normalizer.load_state_dict(MinMaxNormalizer.from_stats(stats[key]).state_dict())
        self.action_normalizer.load_state_dict(MinMaxNormalizer.from_stats(stats["action"]).state_dict())

    def stats(self) -> dict:
        """Return the normaliser stats as CPU tensors."""
        return {self.low_dim_key: self.state_normalizer.stats(), "action": self.action_normalizer.stats()}

    # -- conditioning
    def global_condition(self, batch: dict) -> torch.Tensor:
        """Return the (B, G) FiLM condition: obs features over the horizon, the skill text (and task) embeddings."""
        cfg = self.config
        state = batch[self.low_dim_key][:, :cfg.obs_horizon].float()
        b = state.shape[0]
        if self.vision_encoder is not None:
            frames = {}
            for c in cfg.cameras:
                key = f"rgb:{c}"
                if key not in batch:
                    raise KeyError(f"this policy needs {key!r} frames (B, To, H, W, 3); batch has {sorted(batch)}")
                rgb = batch[key][:, :cfg.obs_horizon]
                frames[c] = rgb.reshape(b * cfg.obs_horizon, *rgb.shape[2:])
            skill = self._skill(batch, state.dtype)
            film = skill.repeat_interleave(cfg.obs_horizon, dim=0) if cfg.vision_film else None
            vis = self.vision_encoder(frames, film).reshape(b, cfg.obs_horizon, -1)
            obs = torch.cat([vis, self.state_normalizer.normalize(state)], dim=-1).reshape(b, -1)
            return torch.cat([obs, self.skill_proj(skill.to(obs.dtype))], dim=-1)
        feats = [self.state_encoder(self.state_normalizer.normalize(state))]
        if self.rgb_encoder is not None:
            rgb = batch["rgb"][:, :cfg.obs_horizon]
            flat = self.rgb_encoder(rgb.reshape(b * cfg.obs_horizon, *rgb.shape[2:]))
            feats.append(flat.reshape(b, cfg.obs_horizon, -1))
        obs = torch.cat(feats, dim=-1).reshape(b, -1)
        task = self.task_embedding(batch["task_id"].long())
        return torch.cat([obs, self.skill_proj(self._skill(batch, obs.dtype)), task], dim=-1)

    def _skill(self, batch: dict, dtype: torch.dtype) -> torch.Tensor:
        if "skill_embed" in batch:
            return batch["skill_embed"].to(dtype)
        return self.skill_table[batch["skill_id"].long()]

    # -- training
    def loss_terms(self, batch: dict) -> dict:
        """The training losses: {'loss': total, 'diffusion': denoising MSE, 'done': BCE of the done head or None,
        'aux': the auxiliary offset head's MSE or None}.

        With the done head the batch needs 'done' (B, Tp) targets (optional 'done_mask' (B, Tp) weights);
        total = diffusion + done_loss_weight * done (+ aux_loss_weight * aux).
        """
        cond = self.global_condition(batch)
        diffusion = self._diffusion_loss(batch, cond)
        aux = self._aux_loss(batch, cond)
        total = diffusion if aux is None else diffusion + self.config.aux_loss_weight * aux
        if self.done_head is None:
            return {"loss": total, "diffusion": diffusion, "done": None, "aux": aux}
        if "done" not in batch:
            raise KeyError("this policy has a done head: training batches need 'done' (B, pred_horizon) targets")
        logits = self.done_head(cond).float()
        target = batch["done"].to(logits.device, torch.float32)
        if target.shape != logits.shape:
            raise ValueError(f"'done' must be (B, {self.config.pred_horizon}), got {tuple(target.shape)}")
        weight = batch.get("done_mask")
        done = F.binary_cross_entropy_with_logits(
            logits, target, weight=None if weight is None else weight.to(logits.device, torch.float32))
        return {"loss": total + self.config.done_loss_weight * done, "diffusion": diffusion, "done": done, "aux": aux}

    def _aux_loss(self, batch: dict, cond: torch.Tensor) -> Optional[torch.Tensor]:
        """MSE of the auxiliary head against 'aux_target' (B, 6) metres, scaled by AUX_SCALE (None without it)."""
        if self.aux_head is None:
            return None
        if "aux_target" not in batch:
            raise KeyError("this policy has an auxiliary head: training batches need 'aux_target' (B, 6)")
        target = batch["aux_target"].to(cond.device, torch.float32) * AUX_SCALE
        return F.mse_loss(self.aux_head(cond).float(), target)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        """Return the training loss (denoising MSE, plus the weighted done BCE with the done head)."""
        return self.loss_terms(batch)["loss"]

    def _diffusion_loss(self, batch: dict, cond: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        action = self.action_normalizer.normalize(batch["action"].float())
        noise = torch.randn_like(action)
        t = torch.randint(0, cfg.num_train_timesteps, (action.shape[0],), device=action.device)
        noisy = self.noise_scheduler.add_noise(action, noise, t)
        pred = self.unet(noisy, t, cond)
        if cfg.prediction_type == "epsilon":
            target = noise
        elif cfg.prediction_type == "sample":
            target = action
        else:
            target = self.noise_scheduler.get_velocity(action, noise, t)
        return F.mse_loss(pred.float(), target)

    def forward(self, batch: dict, return_terms: bool = False):
        """Training forward pass (so DDP wraps it): the loss, or with return_terms the loss_terms dict without
        its None entries ('loss', 'diffusion' and, with the done head, 'done')."""
        if not return_terms:
            return self.compute_loss(batch)
        return {k: v for k, v in self.loss_terms(batch).items() if v is not None}

    # -- the done head
    @torch.no_grad()
    def predict_done(self, batch: dict, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """P(the skill is over) at each chunk step, (B, pred_horizon); step obs_horizon - 1 is the current one
        (see `done_targets`). Raises if the policy has no done head."""
        if self.done_head is None:
            raise RuntimeError("this policy has no done head (config.done_head is false)")
        cond = self.global_condition(batch) if cond is None else cond
        return torch.sigmoid(self.done_head(cond).float())

    # -- inference
    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, generator: Optional[torch.Generator] = None,
                             sampler: Optional[str] = None, num_inference_steps: Optional[int] = None
                             ) -> torch.Tensor:
        """Sample a (B, pred_horizon, action_dim) chunk of actions in data units.

        sampler 'ddim' (default from config, num_inference_steps steps) or 'ddpm' (all train steps).
        Pass a CPU generator to make the initial and DDPM noise reproducible.
        """
        return self._sample(self.global_condition(batch), generator, sampler, num_inference_steps)

    @torch.no_grad()
    def predict(self, batch: dict, generator: Optional[torch.Generator] = None, sampler: Optional[str] = None,
                num_inference_steps: Optional[int] = None) -> dict:
        """One pass for the controller: {'action': (B, Tp, A) chunk as predict_action_chunk, 'done': (B, Tp)
        probabilities or None without a done head, 'done_now': (B,) P(done) at the current step or None}."""
        cond = self.global_condition(batch)
        out = {"action": self._sample(cond, generator, sampler, num_inference_steps), "done": None, "done_now": None}
        if self.done_head is not None:
            out["done"] = self.predict_done(batch, cond)
            out["done_now"] = out["done"][:, self.config.obs_horizon - 1]
        return out

    def _sample(self, cond: torch.Tensor, generator: Optional[torch.Generator], sampler: Optional[str],
                num_inference_steps: Optional[int]) -> torch.Tensor:
        cfg = self.config
        sampler = sampler or cfg.sampler
        if sampler not in self._samplers:
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        sched = self._samplers[sampler]
        default = cfg.num_train_timesteps if sampler == "ddpm" else cfg.num_inference_steps
        steps = num_inference_steps or default
        device = cond.device
        shape = (cond.shape[0], cfg.pred_horizon, cfg.action_dim)
        # a list of CPU generators seeds each row on its own (evaluation: one per episode)
        x = randn_tensor(shape, generator=generator, device=torch.device("cpu") if generator is not None else device)
        x = x.to(device)  # float32 even under autocast: only the network runs in reduced precision
        sched.set_timesteps(steps)  # CPU timesteps index the CPU schedule tables
        kw = {"generator": generator} if sampler == "ddpm" else {}
        for t in sched.timesteps:
            x = sched.step(self.unet(x, t, cond), t, x, **kw).prev_sample
        return self.action_normalizer.unnormalize(x.float())

    # -- LeRobot-style closed loop
    def reset(self) -> None:
        """Clear the observation history and the queued actions (call on every env reset)."""
        self._obs_queue: deque = deque(maxlen=self.config.obs_horizon)
        self._action_queue: deque = deque(maxlen=self.config.action_horizon)

    @torch.no_grad()
    def select_action(self, obs: dict, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Return the next (B, action_dim) action; plans a new chunk when the queue of action_horizon runs out.

        obs: 'state' (B, D), optional 'rgb' (B, H, W, 3), 'task_id' (B,) (privileged modes) or 'proprio' (B, P)
        and 'rgb:<camera>' (B, H, W, 3) (robot); 'skill_embed' (B, E) or 'skill_id' (B,).
        """
        cfg = self.config
        frame = {k: v for k, v in obs.items() if k in ("state", "rgb", "proprio") or k.startswith("rgb:")}
        if not self._obs_queue:
            self._obs_queue.extend([frame] * cfg.obs_horizon)
        else:
            self._obs_queue.append(frame)
        if not self._action_queue:
            batch = {k: torch.stack([f[k] for f in self._obs_queue], dim=1) for k in frame}
            for k in ("skill_embed", "skill_id", "task_id"):
                if k in obs:
                    batch[k] = obs[k]
            chunk = self.predict_action_chunk(batch, generator=generator)
            start = cfg.obs_horizon - 1
            self._action_queue.extend(chunk[:, start:start + cfg.action_horizon].transpose(0, 1))
        return self._action_queue.popleft()


def done_targets(first_index: int, segment_end: int, horizon: int) -> np.ndarray:
    """The done head's (horizon,) float32 targets for a chunk whose step k is global step first_index + k of a
    skill segment ending (exclusive) at segment_end: 1 where that step is the segment's last or lies past its
    end (the skill is over once that step's action is applied), else 0."""
    k = np.arange(horizon) + int(first_index)
    return (k >= int(segment_end) - 1).astype(np.float32)
