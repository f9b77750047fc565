"""ResiP's per-step residual over a frozen base policy (Ankile et al., "From Imitation to Refinement").

The residual actor sees [normalized observation, the base's current action] and outputs a Gaussian
correction with a fixed log-std; the executed action is `base + scale * residual` in the base
policy's normalized action space. Its last layer starts at zero, so at initialization the combined
policy is the base policy exactly. The critic is a separate network of the same input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robot_rl.policies.checkpoint import load_checkpoint, rebuilding, save_checkpoint
from robot_rl.policies.diffusion import STATE_KEY, DiffusionPolicy
from robot_rl.policies.value_head import ValueHead

OBS_CLAMP = 3.0


@dataclass
class ResidualConfig:
    obs_dim: int
    action_dim: int
    hidden: int = 256
    log_std: float = -1.0
    scale: float = 0.1
    critic_bias: float = 0.25
    value: dict | None = None  # the critic's value head (policies.value_head.ValueHeadConfig)
    # the base's denoising steps in training: the residual corrects those plans, so evaluation
    # and deployment sample the base the same way (checkpoints from before it: 4, the default)
    base_ddim_steps: int = 4


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
    )


class ResidualPolicy(nn.Module):
    def __init__(self, config: ResidualConfig):
        super().__init__()
        self.config = c = config
        self.actor = _mlp(c.obs_dim + c.action_dim, c.hidden, c.action_dim)
        nn.init.zeros_(self.actor[-1].weight)  # residual exactly zero at the start
        nn.init.zeros_(self.actor[-1].bias)
        self.head = ValueHead(c.value)
        self.critic = _mlp(c.obs_dim + c.action_dim, c.hidden, self.head.outputs)
        self.head.init_output(self.critic[-1], c.critic_bias)
        self.register_buffer("log_std", torch.full((c.action_dim,), float(c.log_std)))

    def dist(self, x: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.actor(x), self.log_std.exp().expand(x.shape[0], -1))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.value(self.critic(x))

    def value_loss(self, x: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of the critic to its return targets (squared error, or HL-Gauss)."""
        return self.head.loss(self.critic(x), returns)

    def save(self, directory, base_checkpoint: str) -> Path:
        return save_checkpoint(
            directory, self, "residual_policy", asdict(self.config), base_checkpoint=str(base_checkpoint)
        )

    @classmethod
    def load(cls, directory) -> tuple[ResidualPolicy, str]:
        """The residual and the path of the base checkpoint it was trained on."""
        meta, weights = load_checkpoint(directory, "residual_policy")
        with rebuilding(directory, "residual_policy"):
            policy = cls(ResidualConfig(**meta["config"]))
            policy.load_state_dict(weights)
            return policy.eval(), str(meta["base_checkpoint"])


class BaseChunks:
    """Per-env queues of the frozen base policy's actions (normalized), refilled when empty.

    A vector of N envs shares one batched base call for all envs that need a new chunk.
    """

    def __init__(self, base: DiffusionPolicy, num_envs: int, ddim_steps: int, seed: int = 0):
        if base.config.obs_horizon != 1:
            raise ValueError("residual RL runs the base with obs_horizon 1 (as ResiP does)")
        self.base, self.steps = base.eval(), ddim_steps
        self.generator = torch.Generator().manual_seed(seed)
        k, a = base.config.action_horizon, base.config.action_dim
        self.queue = torch.zeros(num_envs, k, a, device=next(base.parameters()).device)
        self.index = np.full(num_envs, k)

    def reset(self, envs=None) -> None:
        self.index[slice(None) if envs is None else envs] = self.queue.shape[1]

    def next(self, states: torch.Tensor) -> torch.Tensor:
        """The base's current action for every env (N, A), planning for those whose queue ran out."""
        need = np.flatnonzero(self.index >= self.queue.shape[1])
        if len(need):
            chunk = self.base.predict_normalized({STATE_KEY: states[need, None]}, self.steps, self.generator)
            self.queue[need] = self.base.executable(chunk)
            self.index[need] = 0
        actions = self.queue[np.arange(len(self.index)), self.index]
        self.index += 1
        return actions

    def state_dict(self) -> dict:
        state = {"queue": self.queue.cpu(), "index": self.index.copy()}
        return {**state, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.queue.copy_(state["queue"])
        self.index[:] = np.asarray(state["index"])
        self.generator.set_state(state["generator"])


def residual_input(base: DiffusionPolicy, states: torch.Tensor, base_actions: torch.Tensor) -> torch.Tensor:
    """[normalized observation clamped to +-3, base action]: what the residual actor and critic see."""
    obs = base.state_norm.normalize(states).clamp(-OBS_CLAMP, OBS_CLAMP)
    return torch.cat([obs, base_actions], dim=-1)


def combine(
    base: DiffusionPolicy, base_actions: torch.Tensor, residual: torch.Tensor, scale: float
) -> torch.Tensor:
    """Env actions (in [-1, 1]) from base + scale * residual in the base's normalized space."""
    return base.action_norm.unnormalize(base_actions + scale * residual).clamp(-1.0, 1.0)


class ResidualActor:
    """The combined policy in the ControlLoop: one action per tick (set execute_k=1 or leave the
    default, a single action is a chunk of one), the base's chunk queue kept inside."""

    def __init__(
        self,
        base: DiffusionPolicy,
        residual: ResidualPolicy | None,
        ddim_steps: int | None = None,  # None: the residual's base_ddim_steps (4 without one)
        seed: int = 0,
        deterministic: bool = True,
    ):
        self.base, self.residual, self.deterministic = base, residual, deterministic
        steps = ddim_steps or (residual.config.base_ddim_steps if residual is not None else 4)
        self.chunks = BaseChunks(base, 1, steps, seed)
        self.rng = torch.Generator().manual_seed(seed + 1)

    def reset(self) -> None:
        self.chunks.reset()

    @torch.no_grad()
    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = torch.as_tensor(obs["state"], dtype=torch.float32)[None]
        base_action = self.chunks.next(state)
        if self.residual is None:
            correction = torch.zeros_like(base_action)
        else:
            dist = self.residual.dist(residual_input(self.base, state, base_action))
            correction = dist.mean
            if not self.deterministic:
                correction = correction + dist.stddev * torch.randn(correction.shape, generator=self.rng)
        scale = self.residual.config.scale if self.residual is not None else 0.0
        return combine(self.base, base_action, correction, scale)[0].numpy()
