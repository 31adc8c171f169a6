"""Closed-loop inference for vector envs: per-env observation history and action-chunk queue, batched sampling.

Privileged policies read {'state'} (+ 'rgb') and a task id; robot-input policies read {'rgb:<camera>',
'proprio'} and no task. With a done head the runner also says when each env's skill is over: a chunk's
executed part is cut after the first step whose P(done) passes done_threshold, and `act_done` reports
True with that last action.
"""
from __future__ import annotations

from collections import deque
from typing import Optional, Sequence, Union

import numpy as np
import torch

from taskweave.sim.errors import UserError

from .device import select_device
from .diffusion import load_policy
from .diffusion.modeling import DiffusionPolicy
from .diffusion.text_encoder import make_text_encoder


class RunnerError(UserError, ValueError):
    """A runner setting or task the loaded policy cannot serve (action horizon, unknown task)."""


class PolicyRunner:
    """Runs a DiffusionPolicy for num_envs envs: receding horizon (replan every action_horizon steps or on skill change).

    Each env keeps its last obs_horizon observations and a queue of planned actions; envs whose
    queue is empty are planned together in one batch. A new skill text or task for an env flushes
    its history and queue, as training windows never cross skill segments.
    """

    def __init__(self, policy: DiffusionPolicy, num_envs: int = 1, device: Union[str, torch.device, None] = None,
                 sampler: Optional[str] = None, num_inference_steps: Optional[int] = None,
                 seed: Optional[int] = None, action_horizon: Optional[int] = None,
                 done_threshold: float = 0.5) -> None:
        self.device = select_device(device) if isinstance(device, str) else (device or next(policy.parameters()).device)
        self.policy = policy.to(self.device).eval()
        self.config = policy.config
        most = self.config.pred_horizon - self.config.obs_horizon + 1
        ah = self.config.action_horizon if action_horizon is None else action_horizon
        if isinstance(ah, bool) or not isinstance(ah, int) or not 1 <= ah <= most:
            raise RunnerError(f"action_horizon must be an integer in 1..{most} (pred_horizon "
                             f"{self.config.pred_horizon}, obs_horizon {self.config.obs_horizon}), got {ah!r}")
        self.action_horizon = ah  # actions executed from each chunk before replanning
        self.num_envs = num_envs
        self.sampler, self.num_inference_steps = sampler, num_inference_steps
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._generators: list = [None] * num_envs   # per-env noise (seed_envs), else the shared generator
        self.skills = list(getattr(policy, "skills", []))
        self.tasks = list(getattr(policy, "tasks", []))
        self.source = "the policy"   # named in errors; from_checkpoint sets the checkpoint's path
        self.robot = self.config.obs_mode == "robot"
        self.has_done_head = policy.done_head is not None
        if not 0.0 < float(done_threshold) < 1.0:
            raise RunnerError(f"done_threshold must lie in (0, 1), got {done_threshold!r}")
        self.done_threshold = float(done_threshold)
        self.last_done = np.zeros(num_envs, dtype=bool)
        self._encoder = None
        self._embed_cache: dict[str, torch.Tensor] = {}
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str, num_envs: int = 1, device: str = "auto", use_ema: bool = True,
                        sampler: Optional[str] = None, num_inference_steps: Optional[int] = None,
                        seed: Optional[int] = None, action_horizon: Optional[int] = None,
                        done_threshold: float = 0.5) -> "PolicyRunner":
        """Load a checkpoint file or run folder and wrap it for num_envs envs."""
        dev = select_device(device)
        runner = cls(load_policy(path, dev, use_ema=use_ema), num_envs, dev, sampler, num_inference_steps, seed,
                     action_horizon, done_threshold)
        runner.source = path
        return runner

    def seed_envs(self, seeds: Sequence[Optional[int]]) -> None:
        """Give each env its own noise generator seeded by seeds[i] (evaluation: the episode's seed), so an
        episode's samples depend on its seed alone, not on the other envs of a batch or on what ran before."""
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        self._generators = [torch.Generator().manual_seed(int(s)) if s is not None else None for s in seeds]

    def check_state_size(self, size: int) -> None:
        """Refuse observations whose state size differs from the one the policy was trained on (a policy
        without a state vector, state_dim None, has nothing to check)."""
        if self.config.state_dim is not None and size != self.config.state_dim:
            raise RunnerError(f"{self.source}: trained on states of size {self.config.state_dim}, the env gives "
                              f"states of size {size}; refusing to cut or pad them (train on data collected "
                              f"with this version)")

    def reset(self, env_ids: Optional[Sequence[int]] = None) -> None:
        """Forget history and queued actions of env_ids (all envs when None); call on env reset."""
        if env_ids is None:
            self._obs = [deque(maxlen=self.config.obs_horizon) for _ in range(self.num_envs)]
            self._queue = [deque() for _ in range(self.num_envs)]
            self._key: list = [None] * self.num_envs
            self._ends = [False] * self.num_envs   # the queued actions end the skill (the done head said so)
            return
        for i in env_ids:
            self._obs[i].clear()
            self._queue[i].clear()
            self._key[i] = None
            self._ends[i] = False

    def embed_skills(self, texts: Sequence[str]) -> torch.Tensor:
        """Return (N, E) skill embeddings: the trained table for known texts, the text encoder otherwise."""
        out = []
        for text in texts:
            emb = self._embed_cache.get(text)
            if emb is None:
                if text in self.skills:
                    emb = self.policy.skill_table[self.skills.index(text)]
                else:
                    if self._encoder is None:   # the encoder the checkpoint names (MiniLM: by its weight hash)
                        ident = getattr(self.policy, "text_encoder_identity", None) or {}
                        self._encoder = make_text_encoder(self.config.text_encoder, self.config.text_embed_dim,
                                                          sha256=ident.get("sha256"))
                    emb = self._encoder.encode([text])[0].to(self.device)
                self._embed_cache[text] = emb
            out.append(emb)
        return torch.stack(out)

    def task_index(self, task: Union[int, str, None]) -> Optional[int]:
        """Map a task name or id to the policy's task id (None for robot-input policies, which take no task)."""
        if self.robot:
            return None
        if isinstance(task, str):
            if task not in self.tasks:
                raise RunnerError(f"{self.source}: task {task!r} was not in the training data; known: {self.tasks}")
            return self.tasks.index(task)
        task = int(task)
        if not 0 <= task < self.config.num_tasks:
            raise RunnerError(f"task id {task} outside 0..{self.config.num_tasks - 1}")
        return task

    def _robot_frames(self, obs_batch) -> list[dict]:
        cfg = self.config
        if not isinstance(obs_batch, dict) or "proprio" not in obs_batch:
            raise ValueError(f"this policy needs robot observations {{'proprio', "
                             f"{', '.join(repr('rgb:' + c) for c in cfg.cameras)}}}, got "
                             f"{sorted(obs_batch) if isinstance(obs_batch, dict) else type(obs_batch).__name__}")
        prop = torch.as_tensor(np.asarray(obs_batch["proprio"], dtype=np.float32), device=self.device)
        if prop.shape != (self.num_envs, cfg.proprio_dim):
            raise ValueError(f"proprio must be ({self.num_envs}, {cfg.proprio_dim}), got {tuple(prop.shape)}")
        frames = [{"proprio": prop[i]} for i in range(self.num_envs)]
        for c in cfg.cameras:
            key = f"rgb:{c}"
            if key not in obs_batch:
                raise ValueError(f"this policy needs {key!r} observations (N, H, W, 3) uint8")
            rgb = torch.as_tensor(np.asarray(obs_batch[key]), device=self.device)
            if rgb.dtype != torch.uint8 or tuple(rgb.shape) != (self.num_envs, *cfg.image_shape):
                raise ValueError(f"{key} must be ({self.num_envs}, {', '.join(map(str, cfg.image_shape))}) uint8 "
                                 f"(the frames it was trained on), got {tuple(rgb.shape)} {rgb.dtype}")
            for i in range(self.num_envs):
                frames[i][key] = rgb[i]
        return frames

    def _frames(self, obs_batch) -> list[dict]:
        if self.robot:
            return self._robot_frames(obs_batch)
        if not isinstance(obs_batch, dict):
            obs_batch = {"state": obs_batch}
        state = torch.as_tensor(np.asarray(obs_batch["state"], dtype=np.float32), device=self.device)
        if state.ndim != 2 or state.shape != (self.num_envs, self.config.state_dim):
            raise ValueError(f"state must be ({self.num_envs}, {self.config.state_dim}), got {tuple(state.shape)}")
        frames = [{"state": state[i]} for i in range(self.num_envs)]
        if self.config.obs_mode == "rgb":
            if "rgb" not in obs_batch:
                raise ValueError("this policy needs 'rgb' observations (N, H, W, 3) uint8")
            rgb = torch.as_tensor(np.asarray(obs_batch["rgb"]), device=self.device)
            for i in range(self.num_envs):
                frames[i]["rgb"] = rgb[i]
        return frames

    def act(self, obs_batch, skill_texts: Sequence[str], task_ids: Optional[Sequence] = None) -> np.ndarray:
        """Return (num_envs, action_dim) actions for one control tick of every env (see act_done)."""
        return self.act_done(obs_batch, skill_texts, task_ids)[0]

    @torch.no_grad()
    def act_done(self, obs_batch, skill_texts: Sequence[str], task_ids: Optional[Sequence] = None) -> tuple:
        """Return ((num_envs, action_dim) actions, (num_envs,) bool: the skill is over once this action is applied).

        obs_batch: privileged policies {'state': (N, D)} (+ 'rgb' (N, H, W, 3) uint8 for rgb policies) or a (N, D)
        state array, built exactly like the dataset's (robot features + skill features), and task_ids; robot-input
        policies {'proprio': (N, P), 'rgb:<camera>': (N, H, W, 3) uint8} and no task ids. done is always False
        for a policy without a done head.
        """
        cfg = self.config
        if task_ids is None:
            if not self.robot:
                raise ValueError("this policy is conditioned on the task: pass task_ids")
            task_ids = [None] * self.num_envs
        if len(skill_texts) != self.num_envs or len(task_ids) != self.num_envs:
            raise ValueError(f"need {self.num_envs} skill texts and task ids")
        frames = self._frames(obs_batch)
        tasks = [self.task_index(t) for t in task_ids]
        for i, frame in enumerate(frames):
            key = (skill_texts[i], tasks[i])
            if key != self._key[i]:
                self.reset([i])
                self._key[i] = key
            if not self._obs[i]:
                self._obs[i].extend([frame] * cfg.obs_horizon)
            else:
                self._obs[i].append(frame)
        need = [i for i in range(self.num_envs) if not self._queue[i]]
        if need:
            batch = {k: torch.stack([torch.stack([f[k] for f in self._obs[i]]) for i in need])
                     for k in frames[0]}
            batch["skill_embed"] = self.embed_skills([skill_texts[i] for i in need])
            if not self.robot:
                batch["task_id"] = torch.tensor([tasks[i] for i in need], device=self.device)
            gens = [self._generators[i] for i in need]
            gens = gens if None not in gens else self.generator
            kw = dict(generator=gens, sampler=self.sampler, num_inference_steps=self.num_inference_steps)
            out = (self.policy.predict(batch, **kw) if self.has_done_head else   # one conditioning pass for both
                   {"action": self.policy.predict_action_chunk(batch, **kw), "done": None})
            start = cfg.obs_horizon - 1
            chunk = out["action"][:, start:start + self.action_horizon].cpu().numpy()
            done = (out["done"][:, start:start + self.action_horizon] > self.done_threshold).cpu().numpy() \
                if out["done"] is not None else np.zeros(chunk.shape[:2], dtype=bool)
            for j, i in enumerate(need):
                hits = np.flatnonzero(done[j])
                n = int(hits[0]) + 1 if len(hits) else len(chunk[j])   # cut after the first step said done
                self._queue[i].extend(chunk[j][:n])
                self._ends[i] = bool(len(hits))
        actions = np.stack([self._queue[i].popleft() for i in range(self.num_envs)]).astype(np.float32)
        self.last_done = np.array([self._ends[i] and not self._queue[i] for i in range(self.num_envs)])
        return actions, self.last_done.copy()
