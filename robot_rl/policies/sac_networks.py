"""Networks of the SAC/RLPD learner, as in serl/HIL-SERL: MLPs with LayerNorm and tanh, a critic
ensemble evaluated in one batched call, a tanh-squashed Gaussian actor, a discrete grasp critic."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robot_rl.policies.value_head import ValueHead


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int | None = None) -> nn.Sequential:
    """Dense -> LayerNorm -> tanh per hidden layer (serl's MLP with use_layer_norm and tanh)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.Tanh()]
        in_dim = width
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """E independent Linear layers as one batched matmul: (B, in) or (E, B, in) -> (E, B, out)."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        """`members`: only these members' outputs (indices into the ensemble)."""
        weight, bias = (
            (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        )
        if x.ndim == 2:
            return torch.matmul(x, weight) + bias  # broadcast over members; faster than einsum on CPU
        return torch.baddbmm(bias, x, weight)


class EnsembleLayerNorm(nn.Module):
    def __init__(self, members: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, width))
        self.bias = nn.Parameter(torch.zeros(members, 1, width))

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        weight, bias = (
            (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        )
        return F.layer_norm(x, x.shape[-1:]) * weight + bias


class Critics(nn.Module):
    """E critics Q_1..Q_E(s, a) whose last layers give what the value head reads: one number
    (regression) or one logit per value bin (HL-Gauss, policies.value_head)."""

    def __init__(self, members: int, head: ValueHead | None):
        super().__init__()
        self.members, self.head = members, head if head is not None else ValueHead()

    def outputs(self, features: Tensor, action: Tensor, members: Tensor | None = None) -> Tensor:
        """(E, B, outputs): what the value head turns into values and trains (`head.loss`)."""
        raise NotImplementedError

    def forward(self, features: Tensor, action: Tensor, members: Tensor | None = None) -> Tensor:
        """(E, B), or (len(members), B) for a subset: REDQ's target evaluates only the members it
        takes the min over."""
        return self.head.value(self.outputs(features, action, members))


class CriticEnsemble(Critics):
    """Each critic an MLP 256x256 with LayerNorm, all evaluated in one batched call:
    (B, D), (B, A) -> (E, B)."""

    def __init__(self, members: int, in_dim: int, action_dim: int, hidden=(256, 256), head=None):
        super().__init__(members, head)
        layers: list[nn.Module] = []
        width_in = in_dim + action_dim
        for width in hidden:
            layers += [EnsembleLinear(members, width_in, width), EnsembleLayerNorm(members, width), nn.Tanh()]
            width_in = width
        layers.append(EnsembleLinear(members, width_in, self.head.outputs))
        self.net = nn.Sequential(*layers)

    def outputs(self, features: Tensor, action: Tensor, members: Tensor | None = None) -> Tensor:
        x = torch.cat([features, action], -1)
        for layer in self.net:
            x = layer(x, members) if isinstance(layer, (EnsembleLinear, EnsembleLayerNorm)) else layer(x)
        return x


class LoopCriticEnsemble(Critics):
    """The same ensemble as a Python loop over separate MLPs: the baseline `robot-rl bench sac`
    compares the batched ensemble against."""

    def __init__(self, members: int, in_dim: int, action_dim: int, hidden=(256, 256), head=None):
        super().__init__(members, head)
        self.nets = nn.ModuleList(mlp(in_dim + action_dim, hidden, self.head.outputs) for _ in range(members))

    def outputs(self, features: Tensor, action: Tensor, members: Tensor | None = None) -> Tensor:
        x = torch.cat([features, action], -1)
        chosen = self.nets if members is None else [self.nets[int(i)] for i in members]
        return torch.stack([net(x) for net in chosen])


class TanhGaussianActor(nn.Module):
    """π(a|s): a Gaussian squashed by tanh into [-1, 1]; std = exp(log_std) clamped to [1e-5, 5]
    (serl's "exp" std parameterization)."""

    LOG_STD_MIN, LOG_STD_MAX = math.log(1e-5), math.log(5.0)

    def __init__(self, in_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.trunk = mlp(in_dim, hidden)
        self.mean = nn.Linear(hidden[-1], action_dim)
        self.log_std = nn.Linear(hidden[-1], action_dim)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(features)
        return self.mean(h), self.log_std(h).clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def sample(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """A reparameterized squashed sample and its log-probability (with the tanh correction)."""
        mean, log_std = self(features)
        normal = torch.distributions.Normal(mean, log_std.exp())
        u = normal.rsample()
        action = torch.tanh(u)
        # log(1 - tanh(u)^2) written stably as 2 (log 2 - u - softplus(-2u)).
        correction = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        return action, (normal.log_prob(u) - correction).sum(-1)

    def mode(self, features: Tensor) -> Tensor:
        return torch.tanh(self(features)[0])


class GraspCritic(nn.Module):
    """Q(s, ·) over the discrete gripper actions {open, stay, close} (HIL-SERL's hybrid agent)."""

    ACTIONS = 3  # 0 open, 1 stay, 2 close

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.net = mlp(in_dim, hidden, self.ACTIONS)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)
