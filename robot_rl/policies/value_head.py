"""Value heads shared by every critic: a scalar trained by regression (MSE), or a histogram over
value bins trained by classification (HL-Gauss, Farebrother et al. 2024, "Stop Regressing:
Training Value Functions via Classification for Scalable Deep RL").

HL-Gauss: `bins` equal bins over [v_min, v_max]. A scalar target y (clipped to the range) becomes
the distribution a Gaussian N(y, sigma^2) puts on the bins, p_i = Phi((b_{i+1} - y) / sigma) -
Phi((b_i - y) / sigma), renormalized over the range, with sigma = sigma_ratio x bin width (0.75 in
the paper). The network outputs one logit per bin and is trained by the cross-entropy to p; its
value is the expectation sum_i softmax(logits)_i x centre_i, so everything that reads the value
(targets, advantages, actors) is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from robot_rl.errors import ConfigError

LOSSES = ("mse", "hl_gauss")


@dataclass
class ValueHeadConfig:
    loss: str = "mse"  # mse: a scalar regressed | hl_gauss: a histogram over bins, cross-entropy
    bins: int = 101
    v_min: float = 0.0  # the value range the bins cover (targets outside are clipped to it)
    v_max: float = 1.0
    sigma_ratio: float = 0.75  # the Gaussian's std over the bin width

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"value loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.loss == "hl_gauss":
            if self.bins < 2 or not self.v_max > self.v_min or self.sigma_ratio <= 0:
                raise ConfigError(
                    f"hl_gauss needs bins >= 2, v_max > v_min and sigma_ratio > 0 (got bins {self.bins}, "
                    f"range [{self.v_min}, {self.v_max}], sigma_ratio {self.sigma_ratio})"
                )


def value_head_config(cfg: ValueHeadConfig | dict | None) -> ValueHeadConfig:
    """A learner's `value` setting (None: regression) as a checked ValueHeadConfig."""
    if isinstance(cfg, ValueHeadConfig):
        return cfg
    try:
        return ValueHeadConfig(**dict(cfg or {}))
    except TypeError as exc:
        raise ConfigError(f"bad value head settings {dict(cfg or {})}: {exc}") from None


class ValueHead(torch.nn.Module):
    """What a critic's last layer outputs (`outputs` numbers per value), the value they stand for,
    and the loss to a target. Holds no trainable weights (the critic's last layer is its own)."""

    def __init__(self, cfg: ValueHeadConfig | dict | None = None):
        super().__init__()
        self.cfg = cfg = value_head_config(cfg)
        self.classify = cfg.loss == "hl_gauss"
        self.outputs = cfg.bins if self.classify else 1
        if self.classify:
            edges = torch.linspace(cfg.v_min, cfg.v_max, cfg.bins + 1)
            self.sigma = cfg.sigma_ratio * (cfg.v_max - cfg.v_min) / cfg.bins
            self.register_buffer("edges", edges, persistent=False)
            self.register_buffer("centres", (edges[:-1] + edges[1:]) / 2, persistent=False)

    def value(self, out: Tensor) -> Tensor:
        """(..., outputs) -> (...) values."""
        if not self.classify:
            return out.squeeze(-1)
        return torch.softmax(out, -1) @ self.centres

    def target_distribution(self, target: Tensor) -> Tensor:
        """(...) scalar targets -> (..., bins) HL-Gauss probabilities (each sums to 1)."""
        y = target.clamp(self.cfg.v_min, self.cfg.v_max).unsqueeze(-1)
        cdf = torch.special.erf((self.edges - y) / (math.sqrt(2.0) * self.sigma))  # 2 Phi - 1 at each edge
        mass = cdf[..., 1:] - cdf[..., :-1]
        return mass / (cdf[..., -1:] - cdf[..., :1])

    @torch.no_grad()
    def init_output(self, layer: torch.nn.Linear, value: float) -> None:
        """Start a critic's last layer at `value`: its bias (regression), or the log of the
        value's HL-Gauss distribution (classification; the weights still add a little noise)."""
        if not self.classify:
            layer.bias.fill_(value)
            return
        layer.bias.copy_(self.target_distribution(torch.tensor(float(value))).clamp_min(1e-6).log())

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        """Per-value loss (no reduction): the squared error, or the cross-entropy to the target's
        HL-Gauss distribution. `target` is not differentiated."""
        target = target.detach()
        if not self.classify:
            return (out.squeeze(-1) - target).pow(2)
        return -(self.target_distribution(target) * F.log_softmax(out, -1)).sum(-1)
