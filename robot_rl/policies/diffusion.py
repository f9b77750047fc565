"""DiffusionPolicy: action chunks from a FiLM-conditioned 1D UNet, denoised by DDIM (Chi et al.).

The policy owns its normalizers (min-max to [-1, 1] from store statistics) and its observation
encoders, so a checkpoint (safetensors weights + JSON config) is everything needed to act.
Observations are windows of `obs_horizon` steps; a prediction covers `pred_horizon` steps that
start at the oldest observation, of which `action_horizon` are executed from the current step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robot_rl.errors import DatasetError
from robot_rl.policies.checkpoint import load_checkpoint, rebuilding, save_checkpoint
from robot_rl.policies.normalizer import MinMaxNormalizer
from robot_rl.policies.scheduler import DDPMScheduler
from robot_rl.policies.unet import ConditionalUnet1D

STATE_KEY, ACTION_KEY = "obs/state", "action"


@dataclass
class DiffusionConfig:
    state_dim: int
    action_dim: int
    image_keys: tuple[str, ...] = ()  # e.g. ("obs/image/front",): each gets its own encoder
    image_size: int = 84
    image_feature_dim: int = 64
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8
    down_dims: tuple[int, ...] = (64, 128, 256)
    diffusion_step_embed_dim: int = 128
    kernel_size: int = 5
    n_groups: int = 8
    num_train_timesteps: int = 100
    inference_steps: int = 10  # DDIM steps when acting
    crop_fraction: float = 0.9  # random-crop augmentation of images during training
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.image_keys, self.down_dims = tuple(self.image_keys), tuple(self.down_dims)
        if not 1 <= self.action_horizon <= self.pred_horizon - self.obs_horizon + 1:
            raise ValueError("need 1 <= action_horizon <= pred_horizon - obs_horizon + 1")


class DiffusionPolicy(nn.Module):
    def __init__(self, config: DiffusionConfig, state_low, state_high, action_low, action_high):
        super().__init__()
        from robot_rl.policies.encoders import ConvEncoder

        self.config = c = config
        self.state_norm = MinMaxNormalizer(state_low, state_high)
        self.action_norm = MinMaxNormalizer(action_low, action_high)
        self.encoders = nn.ModuleDict(
            {key.replace("/", "_"): ConvEncoder(3, c.image_feature_dim, c.image_size) for key in c.image_keys}
        )
        cond_dim = c.obs_horizon * (c.state_dim + len(c.image_keys) * c.image_feature_dim)
        self.unet = ConditionalUnet1D(
            c.action_dim, cond_dim, c.diffusion_step_embed_dim, c.down_dims, c.kernel_size, c.n_groups
        )
        self.scheduler = DDPMScheduler(num_train_timesteps=c.num_train_timesteps)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_store(cls, store, **overrides) -> DiffusionPolicy:
        """A fresh policy sized and normalized for an EpisodeStore's data."""
        if STATE_KEY not in store.keys or ACTION_KEY not in store.keys:
            raise DatasetError(f"{store.path} needs {STATE_KEY} and {ACTION_KEY} to train a policy")
        state, action = store.stats(STATE_KEY), store.stats(ACTION_KEY)
        image_keys = tuple(overrides.pop("image_keys", ()))
        image_size = store.schema[image_keys[0]]["shape"][0] if image_keys else 84
        config = DiffusionConfig(
            state_dim=len(state["min"]),
            action_dim=len(action["min"]),
            image_keys=image_keys,
            image_size=image_size,
            **overrides,
        )
        return cls(config, state["min"], state["max"], action["min"], action["max"])

    # --- observations --------------------------------------------------------------------------
    def condition(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Global conditioning from an observation window: state (B, n_obs, D),
        images (B, n_obs, H, W, 3) uint8."""
        state = self.state_norm.normalize(obs[STATE_KEY].float())
        parts = [state]
        for key in self.config.image_keys:
            images = obs[key]
            b, n = images.shape[:2]
            x = images.reshape(b * n, *images.shape[2:]).permute(0, 3, 1, 2).float() / 255.0
            x = self._augment(x) if self.training else x
            parts.append(self.encoders[key.replace("/", "_")](x).reshape(b, n, -1))
        return torch.cat(parts, dim=-1).flatten(1)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop (then resize back), as Diffusion Policy trains its image encoders."""
        size = x.shape[-1]
        crop = int(round(size * self.config.crop_fraction))
        if crop >= size:
            return x
        i, j = np.random.randint(0, size - crop + 1, size=2)
        x = x[..., i : i + crop, j : j + crop]
        return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    # --- training and acting -----------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Epsilon-prediction loss on a batch of windows from WindowSampler."""
        n_obs = self.config.obs_horizon
        obs = {k: v[:, :n_obs] for k, v in batch.items() if k.startswith("obs/")}
        cond = self.condition(obs)
        actions = self.action_norm.normalize(batch[ACTION_KEY].float())
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.scheduler.num_train_timesteps, (len(actions),), device=actions.device)
        predicted = self.unet(self.scheduler.add_noise(actions, noise, t), t, cond)
        return nn.functional.mse_loss(predicted, noise)

    @torch.no_grad()
    def predict_normalized(
        self, obs: dict[str, torch.Tensor], steps: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Denoised chunk (B, pred_horizon, A) in the policy's normalized action space."""
        cond = self.condition(obs)
        shape = (len(cond), self.config.pred_horizon, self.config.action_dim)
        return self.scheduler.sample(
            lambda x, t: self.unet(x, t, cond),
            shape,
            steps=steps or self.config.inference_steps,
            generator=generator,
            device=cond.device,
        )

    def executable(self, chunk: torch.Tensor) -> torch.Tensor:
        """The `action_horizon` actions of a predicted chunk that start at the current step."""
        start = self.config.obs_horizon - 1
        return chunk[:, start : start + self.config.action_horizon]

    # --- checkpoints ---------------------------------------------------------------------------
    def save(self, directory) -> Path:
        return save_checkpoint(directory, self, "diffusion_policy", asdict(self.config))

    @classmethod
    def load(cls, directory, device: str = "cpu") -> DiffusionPolicy:
        meta, weights = load_checkpoint(directory, "diffusion_policy", device)
        with rebuilding(directory, "diffusion_policy"):
            config = DiffusionConfig(**meta["config"])
            policy = cls(
                config,
                weights["state_norm.low"],
                weights["state_norm.high"],
                weights["action_norm.low"],
                weights["action_norm.high"],
            )
            policy.load_state_dict(weights)
        return policy.to(device).eval()


class DiffusionActor:
    """Runs a DiffusionPolicy in the ControlLoop: keeps the observation history (the loop calls
    `observe` every tick) and returns the executable chunk when asked for a plan."""

    def __init__(self, policy: DiffusionPolicy, steps: int | None = None, seed: int = 0):
        self.policy, self.steps = policy.eval(), steps
        self.generator = torch.Generator().manual_seed(seed)
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=policy.config.obs_horizon)

    def reset(self) -> None:
        self.history.clear()

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self.history.append(obs)

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if not self.history or self.history[-1] is not obs:
            self.observe(obs)
        window = list(self.history)
        window = [window[0]] * (self.history.maxlen - len(window)) + window  # pad the episode start
        batch = {STATE_KEY: torch.as_tensor(np.stack([o["state"] for o in window]))[None]}
        for key in self.policy.config.image_keys:
            batch[key] = torch.as_tensor(np.stack([o[key.removeprefix("obs/")] for o in window]))[None]
        chunk = self.policy.predict_normalized(batch, self.steps, self.generator)
        actions = self.policy.action_norm.unnormalize(self.policy.executable(chunk))[0]
        return np.clip(actions.numpy(), -1.0, 1.0)
