"""The multitask diffusion policy, laid out like LeRobot's `policies/diffusion/`.

- `configuration`: `DiffusionConfig` (validated dataclass, JSON round trip), `ConfigError`
- `configuration`: also `robot_config` (the robot-input policy) and `policy_inputs` (inputs, privileged or not)
- `modeling`: `DiffusionPolicy` (FiLM-conditioned 1-D U-Net, state/RGB encoders, samplers, done head),
  `done_targets`; `vision`: ResNet-18 (GroupNorm) + spatial-softmax camera encoders
- `normalize`: `MinMaxNormalizer`; `text_encoder`: skill-text embeddings (all-MiniLM-L6-v2, the hashing
  encoder of the privileged baseline, or a local sentence-transformers folder)
- `checkpoint`: save, load, verify and export checkpoints, `CheckpointError`

One way in for every caller: `make_policy(config, skills, tasks, stats)` builds a new policy (train,
benchmarks), `load_policy(checkpoint, device)` a trained one (the runner, evaluation, the ROS node).
Names are imported on first use, so importing the configuration alone does not import diffusers.
"""
from __future__ import annotations

import importlib
from typing import Any, Optional, Sequence

# public name -> submodule that defines it (imported on first attribute access)
_EXPORTS = {
    "DiffusionConfig": "configuration", "ConfigError": "configuration", "robot_config": "configuration",
    "policy_inputs": "configuration",
    "DiffusionPolicy": "modeling", "done_targets": "modeling", "VisionEncoder": "vision",
    "MinMaxNormalizer": "normalize",
    "make_text_encoder": "text_encoder", "TextEncoderError": "text_encoder",
    "load_policy": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "export_policy": "checkpoint", "CheckpointError": "checkpoint",
}


def make_policy(config, skills: Sequence[str] = (), tasks: Sequence[str] = (), stats: Optional[dict] = None,
                encoder: Any = None, device: Any = "cpu"):
    """A new DiffusionPolicy for config: skill texts embedded as its skill table, normalisers set from stats."""
    from ..device import select_device
    from .modeling import DiffusionPolicy

    table = None
    if skills and config.num_skills is None:   # the table's size is part of the config checkpoints rebuild from
        config = config.replace(num_skills=len(skills))
    if skills:
        if encoder is None:
            from .text_encoder import make_text_encoder
            encoder = make_text_encoder(config.text_encoder, config.text_embed_dim)
        table = encoder.encode(list(skills))
    policy = DiffusionPolicy(config, table, stats)
    policy.skills, policy.tasks, policy.step = list(skills), list(tasks), 0
    from .configuration import policy_inputs
    from .text_encoder import encoder_identity
    inputs = policy_inputs(config)
    policy.policy_inputs, policy.privileged = inputs["policy_inputs"], inputs["privileged"]
    policy.text_encoder_identity = encoder_identity(config.text_encoder, config.text_embed_dim)
    return policy.to(select_device(device))


def __getattr__(name: str):
    """Import a public name from its submodule on first use."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["make_policy", *_EXPORTS]
