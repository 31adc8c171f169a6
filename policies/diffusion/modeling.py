"""Multitask diffusion policy: a FiLM-conditioned 1-D U-Net over action chunks (Chi et al.)."""
from __future__ import annotations

import math
from collections import deque
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from .configuration import DiffusionConfig
from .normalize import MinMaxNormalizer


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


class SpatialSoftmax(nn.Module):
    """Expected (x, y) image coordinates of each feature map's softmax: (B, C, H, W) -> (B, 2C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the soft keypoints of x as (B, 2C) in [-1, 1]."""
        b, c, h, w = x.shape
        attn = torch.softmax(x.reshape(b, c, h * w).float(), dim=-1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device),
                                torch.linspace(-1, 1, w, device=x.device), indexing="ij")
        kx = (attn * xs.reshape(1, 1, -1)).sum(-1)
        ky = (attn * ys.reshape(1, 1, -1)).sum(-1)
        return torch.stack([kx, ky], dim=-1).reshape(b, 2 * c)


class _BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm (stride 2 halves the resolution)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        g = lambda c: nn.GroupNorm(max(1, c // 16), c)  # noqa: E731
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), g(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), g(c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), g(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual sum of the two convolutions and the (projected) input, then ReLU."""
        return F.relu(self.body(x) + self.skip(x))


class RgbEncoder(nn.Module):
    """Small ResNet (GroupNorm) + spatial softmax on uint8 frames; random crop when training, centre crop in eval."""

    def __init__(self, crop_size: int, channels: tuple = (32, 64, 128), num_keypoints: int = 32,
                 out_dim: int = 64) -> None:
        super().__init__()
        self.crop_size = crop_size
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
                                   nn.GroupNorm(max(1, channels[0] // 16), channels[0]), nn.ReLU()]
        c_prev = channels[0]
        for i, c in enumerate(channels):
            layers.append(_BasicBlock(c_prev, c, 1 if i == 0 else 2))
            c_prev = c
        self.backbone = nn.Sequential(*layers)
        self.keypoints = nn.Conv2d(c_prev, num_keypoints, 1)
        self.pool = SpatialSoftmax()
        self.out = nn.Sequential(nn.Linear(2 * num_keypoints, out_dim), nn.ReLU())

    def crop(self, img: torch.Tensor) -> torch.Tensor:
        """Crop (B, C, H, W) to crop_size: a random window per sample in training, the centre in eval."""
        b, c, h, w = img.shape
        s = self.crop_size
        if h == s and w == s:
            return img
        if not self.training:
            top, left = (h - s) // 2, (w - s) // 2
            return img[:, :, top:top + s, left:left + s]
        top = torch.randint(0, h - s + 1, (b,), device=img.device)
        left = torch.randint(0, w - s + 1, (b,), device=img.device)
        ar = torch.arange(s, device=img.device)
        rows = (top[:, None] + ar)[:, None, :, None].expand(b, c, s, w)
        img = img.gather(2, rows)
        cols = (left[:, None] + ar)[:, None, None, :].expand(b, c, s, s)
        return img.gather(3, cols)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Encode frames (B, H, W, 3) uint8 (or float in [0, 1]) into (B, out_dim)."""
        x = rgb.permute(0, 3, 1, 2)
        x = x.float() / 255.0 if not x.is_floating_point() else x
        x = self.crop(x) * 2.0 - 1.0
        return self.out(self.pool(self.keypoints(self.backbone(x))))


# ----------------------------------------------------------------------------- the policy
class DiffusionPolicy(nn.Module):
    """Denoises action chunks conditioned on obs features over the obs horizon, the skill text and the task.

    Batches are dicts: 'state' (B, To, D) float, optional 'rgb' (B, To, H, W, 3) uint8, the skill as
    'skill_embed' (B, E) or 'skill_id' (B,) into the stored skill table, 'task_id' (B,) long, and
    for training 'action' (B, Tp, A).
    """

    def __init__(self, config: DiffusionConfig, skill_embeddings: Optional[torch.Tensor] = None,
                 stats: Optional[dict] = None) -> None:
        super().__init__()
        cfg = config
        for name in ("state_dim", "action_dim", "num_tasks"):
            if getattr(cfg, name) is None:
                raise ValueError(f"DiffusionConfig.{name} must be set (train() fills it from the dataset)")
        if cfg.obs_mode == "rgb" and cfg.image_shape is None:
            raise ValueError("DiffusionConfig.image_shape must be set for obs_mode='rgb'")
        self.config = cfg
        num_skills = cfg.num_skills or (len(skill_embeddings) if skill_embeddings is not None else 1)
        table = torch.zeros(num_skills, cfg.text_embed_dim)
        if skill_embeddings is not None:
            if tuple(skill_embeddings.shape) != tuple(table.shape):
                raise ValueError(f"skill_embeddings shape {tuple(skill_embeddings.shape)} != {tuple(table.shape)}")
            table.copy_(skill_embeddings)
        self.register_buffer("skill_table", table)
        self.state_normalizer = MinMaxNormalizer(cfg.state_dim)
        self.action_normalizer = MinMaxNormalizer(cfg.action_dim)
        if stats is not None:
            self.set_stats(stats)
        self.state_encoder = StateEncoder(cfg.state_dim, cfg.state_hidden_dim, cfg.state_feature_dim)
        obs_feat = cfg.state_feature_dim
        self.rgb_encoder = None
        if cfg.obs_mode == "rgb":
            self.rgb_encoder = RgbEncoder(cfg.crop_size, cfg.rgb_channels, cfg.num_keypoints, cfg.rgb_feature_dim)
            obs_feat += cfg.rgb_feature_dim
        self.skill_proj = nn.Sequential(nn.Linear(cfg.text_embed_dim, cfg.skill_cond_dim), nn.Mish())
        self.task_embedding = nn.Embedding(cfg.num_tasks, cfg.task_embed_dim)
        global_cond_dim = obs_feat * cfg.obs_horizon + cfg.skill_cond_dim + cfg.task_embed_dim
        self.unet = ConditionalUnet1D(cfg.action_dim, global_cond_dim, cfg.diffusion_step_embed_dim,
                                      cfg.down_dims, cfg.kernel_size, cfg.n_groups)
        sched = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                     clip_sample=cfg.clip_sample, clip_sample_range=cfg.clip_sample_range,
                     prediction_type=cfg.prediction_type)
        self.noise_scheduler = DDPMScheduler(**sched)
        self._samplers = {"ddpm": DDPMScheduler(**sched),
                          "ddim": DDIMScheduler(**sched, set_alpha_to_one=True, steps_offset=0)}
        self.reset()

    # -- normalisation
    def set_stats(self, stats: dict) -> None:
        """Load normaliser stats {'state': {'min','max'}, 'action': {'min','max'}}."""
        self.state_normalizer.load_state_dict(MinMaxNormalizer.from_stats(stats["state"]).state_dict())
        self.action_normalizer.load_state_dict(MinMaxNormalizer.from_stats(stats["action"]).state_dict())

    def stats(self) -> dict:
        """Return the normaliser stats as CPU tensors."""
        return {"state": self.state_normalizer.stats(), "action": self.action_normalizer.stats()}

    # -- conditioning
    def global_condition(self, batch: dict) -> torch.Tensor:
        """Return the (B, G) FiLM condition: obs features over the horizon, skill and task embeddings."""
        cfg = self.config
        state = batch["state"][:, :cfg.obs_horizon].float()
        b = state.shape[0]
        feats = [self.state_encoder(self.state_normalizer.normalize(state))]
        if self.rgb_encoder is not None:
            rgb = batch["rgb"][:, :cfg.obs_horizon]
            flat = self.rgb_encoder(rgb.reshape(b * cfg.obs_horizon, *rgb.shape[2:]))
            feats.append(flat.reshape(b, cfg.obs_horizon, -1))
        obs = torch.cat(feats, dim=-1).reshape(b, -1)
        if "skill_embed" in batch:
            skill = batch["skill_embed"].to(obs.dtype)
        else:
            skill = self.skill_table[batch["skill_id"].long()]
        task = self.task_embedding(batch["task_id"].long())
        return torch.cat([obs, self.skill_proj(skill), task], dim=-1)

    # -- training
    def compute_loss(self, batch: dict) -> torch.Tensor:
        """Return the denoising MSE loss on a training batch."""
        cfg = self.config
        action = self.action_normalizer.normalize(batch["action"].float())
        cond = self.global_condition(batch)
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

    def forward(self, batch: dict) -> torch.Tensor:
        """Training forward pass: the loss (so DDP wraps it)."""
        return self.compute_loss(batch)

    # -- inference
    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, generator: Optional[torch.Generator] = None,
                             sampler: Optional[str] = None, num_inference_steps: Optional[int] = None
                             ) -> torch.Tensor:
        """Sample a (B, pred_horizon, action_dim) chunk of actions in data units.

        sampler 'ddim' (default from config, num_inference_steps steps) or 'ddpm' (all train steps).
        Pass a CPU generator to make the initial and DDPM noise reproducible.
        """
        cfg = self.config
        sampler = sampler or cfg.sampler
        if sampler not in self._samplers:
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        sched = self._samplers[sampler]
        default = cfg.num_train_timesteps if sampler == "ddpm" else cfg.num_inference_steps
        steps = num_inference_steps or default
        device = batch["state"].device
        cond = self.global_condition(batch)
        shape = (cond.shape[0], cfg.pred_horizon, cfg.action_dim)
        x = torch.randn(shape, generator=generator, device="cpu" if generator is not None else device)
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

        obs: 'state' (B, D), optional 'rgb' (B, H, W, 3), 'skill_embed' (B, E) or 'skill_id' (B,), 'task_id' (B,).
        """
        cfg = self.config
        frame = {k: obs[k] for k in ("state", "rgb") if k in obs}
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
