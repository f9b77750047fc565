"""The IQL agent (Kostrikov et al., as CORL's `algorithms/offline/iql.py`): twin Q, expectile V and
an advantage-weighted actor, with the policies it acts as. Trained by robot_rl.learners.iql."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from robot_rl.errors import ConfigError
from robot_rl.policies.checkpoint import CheckpointedAgent
from robot_rl.policies.encoders import CameraFeatures, images_to_float, relu_mlp
from robot_rl.policies.value_head import ValueHead, value_head_config

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
EXP_ADV_MAX = 100.0


@dataclass
class IQLConfig:
    state_dim: int = 0  # from the store
    action_dim: int = 0
    image_keys: tuple[str, ...] = ()  # obs keys, e.g. ("image/front",)
    image_size: int = 84
    hidden: tuple[int, ...] = (256, 256)
    discount: float = 0.99
    tau: float = 0.005  # soft target update
    expectile: float = 0.7
    beta: float = 3.0  # inverse temperature of the advantage weights (0: BC)
    lr: float = 3e-4  # Q, V and the actor (its rate cosine-annealed over `steps`)
    steps: int = 100_000  # for the actor's cosine schedule
    deterministic: bool = False  # actor: tanh-Gaussian likelihood (False) or squared error
    # Q's value head (policies.value_head.ValueHeadConfig): mse, or hl_gauss (classification over
    # value bins). V keeps its expectile regression: an expectile is not the mean a histogram's
    # expectation gives, so the classification loss replaces only the regression to r + gamma V(s').
    value: dict | None = None

    def __post_init__(self):
        self.image_keys, self.hidden = tuple(self.image_keys), tuple(self.hidden)
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"expectile must be in (0, 1), got {self.expectile}")
        if self.beta < 0:
            raise ConfigError(f"beta must be at least 0, got {self.beta}")
        self.value = dict(self.value) if self.value else None
        value_head_config(self.value)  # a bad value head is refused here


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """Asymmetric L2: weight `expectile` where diff = target - V is positive, 1 - expectile where negative."""
    weight = torch.abs(expectile - (diff < 0).float())
    return (weight * diff**2).mean()


class IQLAgent(CheckpointedAgent, nn.Module):
    kind, config_class = "iql_agent", IQLConfig  # checkpoints (CheckpointedAgent)

    def __init__(self, cfg: IQLConfig, state_mean=None, state_std=None):
        super().__init__()
        self.cfg = cfg
        self.register_buffer(
            "state_mean",
            torch.as_tensor(
                state_mean if state_mean is not None else np.zeros(cfg.state_dim), dtype=torch.float32
            ),
        )
        self.register_buffer(
            "state_std",
            torch.as_tensor(
                state_std if state_std is not None else np.ones(cfg.state_dim), dtype=torch.float32
            ),
        )
        self.encoder = CameraFeatures(len(cfg.image_keys), cfg.image_size) if cfg.image_keys else None
        feat = cfg.state_dim + (self.encoder.out_dim if self.encoder else 0)
        a = cfg.action_dim
        self.head = ValueHead(cfg.value)
        q_out = self.head.outputs
        self.q1, self.q2 = relu_mlp(feat + a, cfg.hidden, q_out), relu_mlp(feat + a, cfg.hidden, q_out)
        self.target_q1, self.target_q2 = (
            copy.deepcopy(self.q1).requires_grad_(False),
            copy.deepcopy(self.q2).requires_grad_(False),
        )
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False) if self.encoder else None
        self.v = relu_mlp(feat, cfg.hidden, 1)
        self.actor = relu_mlp(feat, cfg.hidden, a)
        self.log_std = nn.Parameter(torch.zeros(a))
        self.q_opt = torch.optim.Adam(
            [
                *self.q1.parameters(),
                *self.q2.parameters(),
                *(self.encoder.parameters() if self.encoder else []),
            ],
            lr=cfg.lr,
        )
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=cfg.lr)
        self.actor_opt = torch.optim.Adam([*self.actor.parameters(), self.log_std], lr=cfg.lr)
        self.actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, max(cfg.steps, 1))
        self.updates = 0

    # --- features and heads ----------------------------------------------------------------
    def features(self, obs: dict[str, Tensor], target: bool = False) -> Tensor:
        state = (obs["state"] - self.state_mean) / self.state_std
        encoder = self.target_encoder if target else self.encoder
        if encoder is None:
            return state
        return torch.cat([state, encoder([obs[k] for k in self.cfg.image_keys])], -1)

    def min_target_q(self, feat: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([feat, action], -1)
        return torch.minimum(self.head.value(self.target_q1(x)), self.head.value(self.target_q2(x)))

    def mean_action(self, feat: Tensor) -> Tensor:
        return torch.tanh(self.actor(feat))

    def log_prob(self, feat: Tensor, action: Tensor) -> Tensor:
        std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        return torch.distributions.Normal(self.mean_action(feat), std).log_prob(action).sum(-1)

    @torch.no_grad()
    def act(self, obs: dict[str, Tensor]) -> Tensor:
        """The deterministic action (the Gaussian's mean), in [-1, 1], on the CPU."""
        return self.mean_action(self.features(self.on_device(obs))).cpu()

    # --- the update ------------------------------------------------------------------------
    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The three losses on one batch (obs, next_obs, action, reward, mask), the advantage and the
        share of advantage weights at their clip."""
        cfg = self.cfg
        batch = self.on_device(batch)
        obs = {k[4:]: v for k, v in batch.items() if k.startswith("obs/")}
        next_obs = {k[9:]: v for k, v in batch.items() if k.startswith("next_obs/")}
        feat = self.features(obs)
        detached = feat.detach()
        with torch.no_grad():
            target_q = self.min_target_q(self.features(obs, target=True), batch["action"])
            next_v = self.v(self.features(next_obs, target=True)).squeeze(-1)
            q_target = batch["reward"] + cfg.discount * batch["mask"] * next_v
        v = self.v(detached).squeeze(-1)
        adv = target_q - v
        v_loss = expectile_loss(adv, cfg.expectile)
        x = torch.cat([feat, batch["action"]], -1)
        q_loss = (self.head.loss(self.q1(x), q_target) + self.head.loss(self.q2(x), q_target)).mean() / 2
        weights = torch.exp(cfg.beta * adv.detach()).clamp(max=EXP_ADV_MAX)
        if cfg.deterministic:
            bc = ((self.mean_action(detached) - batch["action"]) ** 2).sum(-1)
        else:
            bc = -self.log_prob(detached, batch["action"])
        actor_loss = (weights * bc).mean()
        return {
            "v_loss": v_loss,
            "q_loss": q_loss,
            "actor_loss": actor_loss,
            "adv": adv.detach(),
            "v": v.detach(),
            "clipped": (weights >= EXP_ADV_MAX).float().mean(),
        }

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        loss = self.losses(batch)
        self.v_opt.zero_grad(set_to_none=True)
        self.q_opt.zero_grad(set_to_none=True)
        self.actor_opt.zero_grad(set_to_none=True)
        # The three losses touch disjoint parameters (V and the actor read detached features), so
        # one backward pass gives each its own gradient.
        (loss["v_loss"] + loss["q_loss"] + loss["actor_loss"]).backward()
        self.v_opt.step()
        self.q_opt.step()
        self.actor_opt.step()
        self.actor_schedule.step()
        self._soft_update()
        self.updates += 1
        return {
            "v_loss": loss["v_loss"].item(),
            "q_loss": loss["q_loss"].item(),
            "actor_loss": loss["actor_loss"].item(),
            "adv_mean": loss["adv"].mean().item(),
            "v_mean": loss["v"].mean().item(),
            # beta * adv_std sets how sharp the policy extraction is; many weights at the clip
            # (4-10 % in VLM-IQL runs that missed, 1-2 % in those that met the target) say beta is too sharp
            "adv_std": loss["adv"].std().item(),
            "weights_clipped": loss["clipped"].item(),
            "actor_lr": self.actor_schedule.get_last_lr()[0],
        }

    def init_encoder(self, state: dict[str, Tensor], freeze: bool = False) -> None:
        """Start the image encoder (and its target copy) from pretrained weights (V-PTR)."""
        if self.encoder is None:
            raise ConfigError("encoder_init needs image observations (agent.image_keys)")
        try:
            self.encoder.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(
                f"the pretrained encoder does not fit this agent's cameras: {str(exc).splitlines()[0]}"
            ) from None
        self.target_encoder.load_state_dict(state)
        self.encoder.requires_grad_(not freeze)

    @torch.no_grad()
    def _soft_update(self) -> None:
        pairs = [(self.target_q1, self.q1), (self.target_q2, self.q2)]
        if self.encoder is not None:
            pairs.append((self.target_encoder, self.encoder))
        targets = [t for target, _ in pairs for t in target.parameters()]
        online = [p for _, net in pairs for p in net.parameters()]
        torch._foreach_lerp_(targets, online, self.cfg.tau)  # one call for every tensor


def batch_policy(agent: IQLAgent):
    """The agent's deterministic action for a vector env's state batch (evaluate.run_episodes)."""
    return lambda obs, reset: agent.act({"state": torch.as_tensor(obs, dtype=torch.float32)}).numpy()


def loop_policy(agent: IQLAgent):
    """The agent's deterministic action for one env's dict observation (a ControlLoop policy)."""
    agent.eval()

    def act(obs: dict) -> np.ndarray:
        batch = {
            "state": torch.as_tensor(np.asarray(obs["state"], np.float32))[None],
            **{k: images_to_float(np.asarray(obs[k])[None]) for k in agent.cfg.image_keys},
        }
        return agent.act(batch)[0].numpy()

    return act
