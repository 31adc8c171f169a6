"""Per-dimension min-max normalisation to [-1, 1]; the stats are buffers saved with the weights."""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from torch import nn

ArrayLike = Union[np.ndarray, torch.Tensor]

# A dimension whose range is below this is constant: it maps to 0 and back to its stored value.
CONSTANT_EPS = 1e-8


class MinMaxNormalizer(nn.Module):
    """Maps each feature dimension from [min, max] to [-1, 1]; constant dimensions map to 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("min", torch.zeros(dim))
        self.register_buffer("max", torch.ones(dim))

    @classmethod
    def from_data(cls, data: ArrayLike) -> "MinMaxNormalizer":
        """Fit min and max over all leading axes of data (..., dim)."""
        x = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        if x.shape[0] == 0:
            raise ValueError("cannot fit a normaliser on zero samples")
        if not torch.isfinite(x).all():
            raise ValueError("cannot fit a normaliser on data with NaN or inf")
        norm = cls(x.shape[-1])
        norm.min.copy_(x.min(dim=0).values.float())
        norm.max.copy_(x.max(dim=0).values.float())
        return norm

    @classmethod
    def from_stats(cls, stats: dict) -> "MinMaxNormalizer":
        """Rebuild from a {'min': tensor, 'max': tensor} dict (as returned by stats())."""
        lo = torch.as_tensor(stats["min"], dtype=torch.float32)
        hi = torch.as_tensor(stats["max"], dtype=torch.float32)
        if lo.shape != hi.shape or lo.ndim != 1:
            raise ValueError(f"normaliser stats need 1-D min and max of equal shape, got {lo.shape}, {hi.shape}")
        norm = cls(lo.shape[0])
        norm.min.copy_(lo)
        norm.max.copy_(hi)
        return norm

    def stats(self) -> dict:
        """Return the stats as CPU tensors {'min', 'max'}."""
        return {"min": self.min.detach().cpu().clone(), "max": self.max.detach().cpu().clone()}

    def _scale(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        span = self.max - self.min
        constant = span < CONSTANT_EPS
        safe_span = torch.where(constant, torch.ones_like(span), span)
        return span, constant, safe_span

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map x (..., dim) to [-1, 1] per dimension (constant dimensions give 0)."""
        _, constant, safe_span = self._scale()
        y = (x - self.min) / safe_span * 2.0 - 1.0
        return torch.where(constant, torch.zeros_like(y), y)

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        """Map y (..., dim) from [-1, 1] back to data units (constant dimensions give their value)."""
        _, constant, safe_span = self._scale()
        x = (y + 1.0) * 0.5 * safe_span + self.min
        return torch.where(constant, self.min.expand_as(x), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as normalize()."""
        return self.normalize(x)
