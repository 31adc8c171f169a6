"""Configuration of the multitask diffusion policy: one dataclass, validated, JSON round trip."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional

from taskweave.sim.errors import UserError
from taskweave.sim.fileio import atomic_write_json


class ConfigError(UserError, ValueError):
    """A configuration value, key or file that is not acceptable; the message names the field."""


_TUPLE_FIELDS = ("down_dims", "betas", "rgb_channels", "image_shape", "cameras", "train_tasks")
OBS_MODES = ("state", "rgb", "robot")
# obs_mode "state" and "rgb" read the simulator's ground truth (object and target poses in the state vector):
# privileged baselines. "robot" sees only cameras, proprioception and the skill sentence.
PRIVILEGED_MODES = ("state", "rgb")
MINILM_DIM = 384   # text_encoder "minilm" (all-MiniLM-L6-v2) embeds in 384 dimensions


@dataclass
class DiffusionConfig:
    """Hyper-parameters of model, noise schedule, optimiser and training loop (Diffusion Policy defaults)."""

    # observations and horizons
    obs_mode: str = "state"               # "state", "rgb" (also the state vector): privileged; "robot": not
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8
    # filled from the dataset's meta.json by train(); None until then
    state_dim: Optional[int] = None
    action_dim: Optional[int] = None
    num_tasks: Optional[int] = None
    num_skills: Optional[int] = None
    image_shape: Optional[tuple] = None   # (H, W, 3) of stored frames (every camera), rgb and robot
    proprio_dim: Optional[int] = None     # robot only: joints, TCP pose, finger width (envs.observation)
    cameras: tuple = ("front", "wrist")   # robot only: cameras seen, in this order ('rgb:<camera>' batch keys)
    # U-Net
    down_dims: tuple = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 128
    # observation / conditioning encoders
    state_feature_dim: int = 128
    state_hidden_dim: int = 256
    crop_size: int = 84                   # square crop of the stored frame (random in training)
    rgb_channels: tuple = (32, 64, 128)
    num_keypoints: int = 32
    rgb_feature_dim: int = 64             # per camera
    vision_width: int = 32                # robot: ResNet-18 (GroupNorm) first-stage channels (64 in ResNet-18)
    vision_shared: bool = False           # robot: one encoder for every camera instead of one per camera
    vision_stages: int = 4                # robot: ResNet-18 stages kept (fewer: a finer keypoint map on small frames)
    vision_film: bool = False             # robot: FiLM every vision stage by the skill text (RT-1 / BC-Z style)
    text_encoder: str = "builtin"         # "minilm" (all-MiniLM-L6-v2), "builtin" (hashing) or a local folder
    text_embed_dim: int = 256             # output size of the builtin encoder
    skill_cond_dim: int = 64
    task_embed_dim: int = 32              # state and rgb only: robot policies get no task id
    # the done head: P(the skill is over) for each step of the chunk, trained from segment ends
    done_head: bool = False
    done_hidden_dim: int = 256
    done_loss_weight: float = 1.0
    # robot, training only: an auxiliary head regresses the named object's and the target's offsets from the
    # TCP (the privileged state's last 6 values, 'aux_target') from the policy's condition. These are labels,
    # never inputs: evaluation feeds nothing privileged; checkpoints list them in 'training_labels'.
    aux_loss_weight: float = 0.0
    aux_hidden_dim: int = 128
    # noise schedule and sampling
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    sampler: str = "ddim"                 # "ddim" or "ddpm"
    num_inference_steps: int = 10
    # EMA
    use_ema: bool = True
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    # optimiser and schedule
    lr: float = 1e-4
    betas: tuple = (0.95, 0.999)
    weight_decay: float = 1e-6
    lr_scheduler: str = "cosine"
    warmup_steps: int = 500
    grad_clip_norm: float = 10.0
    # training loop
    batch_size: int = 64
    steps: int = 50_000
    seed: int = 0
    train_tasks: tuple = ()               # train on these of the dataset's tasks only (empty: all of them)
    num_workers: int = 0
    log_every: int = 100
    checkpoint_every: int = 5_000
    val_every: int = 1_000                # validation loss and action MSE on the val split (0: never); keeps best.pt
    val_batches: int = 4                  # batches of a fixed, evenly spread subset of the val windows
    preload_frames: bool = True           # robot: read every camera frame into memory once (else per item)
    use_amp: bool = True                  # bf16 autocast on CUDA only
    compile: bool = False

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        self.validate()

    def validate(self) -> "DiffusionConfig":
        """Check every field; raise ConfigError naming the first bad one."""
        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise ConfigError(f"config field '{name}' = {getattr(self, name)!r}: {what}")

        def pos_int(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, name, "must be a positive integer")

        for name in ("obs_horizon", "pred_horizon", "action_horizon", "kernel_size", "n_groups",
                     "diffusion_step_embed_dim", "state_feature_dim", "state_hidden_dim", "crop_size",
                     "num_keypoints", "rgb_feature_dim", "text_embed_dim", "skill_cond_dim",
                     "task_embed_dim", "vision_width", "done_hidden_dim", "aux_hidden_dim", "num_train_timesteps", "num_inference_steps", "batch_size",
                     "steps", "log_every", "checkpoint_every", "val_batches"):
            pos_int(name)
        need(isinstance(self.val_every, int) and not isinstance(self.val_every, bool) and self.val_every >= 0,
             "val_every", "must be an integer >= 0 (0: no validation)")
        for name in ("state_dim", "action_dim", "num_tasks", "num_skills", "proprio_dim"):
            pos_int(name, allow_none=True)
        need(isinstance(self.train_tasks, tuple) and all(isinstance(t, str) and t for t in self.train_tasks)
             and len(set(self.train_tasks)) == len(self.train_tasks), "train_tasks",
             "must be distinct task names (empty: every task of the dataset)")
        need(self.obs_mode in OBS_MODES, "obs_mode", "must be 'state', 'rgb' or 'robot'")
        need(isinstance(self.cameras, tuple) and len(set(self.cameras)) == len(self.cameras)
             and all(isinstance(c, str) and c.isidentifier() for c in self.cameras), "cameras",
             "must be distinct camera names (identifiers)")
        if self.obs_mode == "robot":
            need(len(self.cameras) >= 1, "cameras", "a robot-input policy needs at least one camera")
            need(isinstance(self.vision_stages, int) and 1 <= self.vision_stages <= 4, "vision_stages",
                 "must be 1, 2, 3 or 4")
            need(self.crop_size >= 2 ** (self.vision_stages + 1) + 1, "crop_size",
                 f"must be at least {2 ** (self.vision_stages + 1) + 1} for obs_mode 'robot' with vision_stages="
                 f"{self.vision_stages} (spatial softmax needs a feature map of at least 2x2)")
            need(not self.text_encoder.startswith("builtin"), "text_encoder",
                 "a robot-input policy needs a pretrained sentence encoder ('minilm'), not the hashing one")
        if self.text_encoder == "minilm":
            need(self.text_embed_dim == MINILM_DIM, "text_embed_dim", f"must be {MINILM_DIM} for text_encoder 'minilm'")
        need(self.done_loss_weight >= 0, "done_loss_weight", "must be >= 0")
        need(isinstance(self.aux_loss_weight, (int, float)) and self.aux_loss_weight >= 0, "aux_loss_weight",
             "must be >= 0")
        need(self.aux_loss_weight == 0 or self.obs_mode == "robot", "aux_loss_weight",
             "the auxiliary offset head is for obs_mode 'robot' (the privileged modes already get the offsets)")
        need(self.obs_horizon - 1 + self.action_horizon <= self.pred_horizon, "action_horizon",
             "obs_horizon - 1 + action_horizon must not exceed pred_horizon")
        need(self.kernel_size % 2 == 1, "kernel_size", "must be odd")
        need(isinstance(self.down_dims, tuple) and len(self.down_dims) >= 1
             and all(isinstance(d, int) and d > 0 and d % self.n_groups == 0 for d in self.down_dims),
             "down_dims", f"must be positive integers divisible by n_groups={self.n_groups}")
        need(self.pred_horizon % (2 ** (len(self.down_dims) - 1)) == 0, "pred_horizon",
             f"must be divisible by 2**(len(down_dims)-1) = {2 ** (len(self.down_dims) - 1)}")
        need(self.diffusion_step_embed_dim % 2 == 0, "diffusion_step_embed_dim", "must be even")
        need(isinstance(self.rgb_channels, tuple) and len(self.rgb_channels) >= 1
             and all(isinstance(c, int) and c > 0 and c % 8 == 0 for c in self.rgb_channels),
             "rgb_channels", "must be positive integers divisible by 8 (GroupNorm)")
        if self.image_shape is not None:
            need(len(self.image_shape) == 3 and self.image_shape[2] == 3
                 and min(self.image_shape[:2]) >= self.crop_size, "image_shape",
                 "must be (H, W, 3) with H and W at least crop_size")
        need(self.beta_schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"), "beta_schedule",
             "must be linear, scaled_linear or squaredcos_cap_v2")
        need(self.prediction_type in ("epsilon", "sample", "v_prediction"), "prediction_type",
             "must be epsilon, sample or v_prediction")
        need(self.sampler in ("ddim", "ddpm"), "sampler", "must be 'ddim' or 'ddpm'")
        need(self.num_inference_steps <= self.num_train_timesteps, "num_inference_steps",
             "must not exceed num_train_timesteps")
        need(isinstance(self.text_encoder, str) and self.text_encoder != "", "text_encoder",
             "must be 'minilm', 'builtin' or a local folder path")
        need(0.0 < self.ema_max_decay < 1.0, "ema_max_decay", "must lie in (0, 1)")
        need(self.ema_power > 0, "ema_power", "must be positive")
        need(self.lr > 0, "lr", "must be positive")
        need(isinstance(self.betas, tuple) and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             "betas", "must be two numbers in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.lr_scheduler in ("cosine", "linear", "constant", "constant_with_warmup"), "lr_scheduler",
             "must be cosine, linear, constant or constant_with_warmup")
        need(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.grad_clip_norm >= 0, "grad_clip_norm", "must be >= 0 (0 disables clipping)")
        need(isinstance(self.num_workers, int) and self.num_workers >= 0, "num_workers", "must be >= 0")
        need(self.clip_sample_range > 0, "clip_sample_range", "must be positive")
        return self

    def to_dict(self) -> dict:
        """Return a JSON-ready dict of all fields (tuples become lists)."""
        out = dataclasses.asdict(self)
        for name in _TUPLE_FIELDS:
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "DiffusionConfig":
        """Build a validated config from a dict; unknown keys or wrong types raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known: {sorted(fields)}")
        defaults = cls()
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            default = getattr(defaults, key)
            kwargs[key] = _coerce(key, value, default)
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - guarded by _coerce
            raise ConfigError(str(exc)) from exc

    def replace(self, **changes: Any) -> "DiffusionConfig":
        """Return a validated copy with some fields changed."""
        return DiffusionConfig.from_dict({**self.to_dict(), **changes})

    def save(self, path: str) -> None:
        """Write the config as JSON atomically (`taskweave.sim.fileio`)."""
        atomic_write_json(path, self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str) -> "DiffusionConfig":
        """Read a JSON config file; a missing or malformed file raises ConfigError naming it."""
        try:
            with open(path, "r", encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON config ({exc})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check one JSON value against the type of the field's default value."""
    if key in _TUPLE_FIELDS:
        if value is None and default is None:
            return None
        if value is None and key == "image_shape":
            return None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{key}' = {value!r}: must be a list")
        return tuple(value)
    if value is None:
        if default is None:
            return None
        raise ConfigError(f"config field '{key}' must not be null")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config field '{key}' = {value!r}: must be true or false")
    elif isinstance(default, int) or (default is None and key in ("state_dim", "action_dim", "num_tasks",
                                                                    "num_skills", "proprio_dim")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field '{key}' = {value!r}: must be an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field '{key}' = {value!r}: must be a number")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config field '{key}' = {value!r}: must be a string")
    return value


def robot_config(**changes: Any) -> DiffusionConfig:
    """The robot-input policy: front and wrist cameras, proprioception, MiniLM sentence, done head; no ground truth."""
    base = dict(obs_mode="robot", cameras=("front", "wrist"), text_encoder="minilm", text_embed_dim=MINILM_DIM,
                done_head=True, crop_size=84)
    return DiffusionConfig.from_dict({**DiffusionConfig().to_dict(), **base, **changes})


def policy_inputs(config: DiffusionConfig) -> dict:
    """What goes into a policy: {'policy_inputs': e.g. ['rgb:front', 'rgb:wrist', 'proprio', 'text'],
    'privileged': True when any simulator ground truth does (the state vector's object and target poses),
    'training_labels': what supervises it ('aux:*' are simulator offsets the auxiliary head regresses in training
    only; they never go in, so they do not make a policy privileged)}."""
    if config.obs_mode == "robot":
        names = [f"rgb:{c}" for c in config.cameras] + ["proprio", "text"]
    elif config.obs_mode == "rgb":
        names = ["rgb:front", "state", "text", "task_id"]
    else:
        names = ["state", "text", "task_id"]
    labels = ["action"] + (["done"] if config.done_head else []) + (
        ["aux:object-tcp", "aux:target-tcp"] if config.aux_loss_weight > 0 else [])
    return {"policy_inputs": names, "privileged": config.obs_mode in PRIVILEGED_MODES,
            "training_labels": labels}
