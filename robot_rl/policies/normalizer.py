"""Min-max normalization to [-1, 1], owned by the policy (it travels with the checkpoint)."""

from __future__ import annotations

import torch
from torch import nn


class MinMaxNormalizer(nn.Module):
    """Maps each dimension's [min, max] (from store statistics) onto [-1, 1].

    Dimensions that never vary in the data (max == min) map to 0 and back to their constant.
    The bounds are buffers, so they are saved and loaded with the model's state dict.
    """

    def __init__(self, low, high):
        super().__init__()
        low = torch.as_tensor(low, dtype=torch.float32).flatten()
        high = torch.as_tensor(high, dtype=torch.float32).flatten()
        if low.shape != high.shape:
            raise ValueError("low and high must have the same shape")
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    @property
    def _span(self) -> torch.Tensor:
        span = self.high - self.low
        return torch.where(span > 1e-6, span, torch.ones_like(span))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        out = 2.0 * (x - self.low) / self._span - 1.0
        return torch.where(self.high - self.low > 1e-6, out, torch.zeros_like(out))

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        # A dimension the data never varied comes back as its constant, whatever the model returned.
        return torch.where(self.high - self.low > 1e-6, (y + 1.0) * 0.5 * self._span + self.low, self.low)
