"""SAC in the RLPD / HIL-SERL style (Luo et al., `rail-berkeley/hil-serl` and `serl`), in PyTorch.

- Critic ensemble (2 by default; REDQ-style N members with a random subsample for the target),
  MLPs 256x256 with LayerNorm and tanh, evaluated in one batched call.
- Target r + γ·mask·min over the (sub)ensemble of target Q(s', a'), a' ~ π(s'): no entropy term in
  the backup. Actor loss α·log π − mean over the ensemble of Q. Tanh-squashed Gaussian actor.
  Temperature learned toward the target entropy −|A|/2, from 0.01. Soft target updates (τ 0.005).
- Critic-to-actor ratio: each learner step updates the critic `cta_ratio` times, each on its own
  batch, and the actor and temperature once (on the last batch), as HIL-SERL's learner loop does.
- Images: a frozen pretrained backbone, a trainable spatial-embedding head per camera (Dense 256,
  LayerNorm, tanh) and the state through Dense 64 (LayerNorm, tanh); or (`frozen_cnn`, FastRLAP)
  the project's small CNN pretrained offline by IQL or ICVF and frozen, its features used as they
  are (`init_camera_encoder` loads its weights; they are saved with the agent), or (`finetune_cnn`,
  V-PTR) trained on through the critic with a soft-updated target copy; the head is trained by
  the critic only (the actor sees it detached). With the frozen backbone its feature maps are
  computed once per frame (`cache_features`): the buffers store maps, not frames, and DrQ's
  random shift (4 px) moves the stored maps by the same amount (a quarter of a cell at stride 16).
  Otherwise random-crop augmentation (pad 4) on the frames of obs and next obs and the backbone
  run once on each per batch. Every network reads those maps (the actor's update reuses its
  batch's augmented maps).
- Optional grasp critic: a DQN over {open, stay, close} with a double-Q target and a penalty for
  each toggle; the continuous actor then controls every action dimension but the last (gripper).
- Optional action-rate limit (FastRLAP): the actor's tanh output u moves the action at most
  `action_rate_limit` from the previous one, a = clip(a_prev + limit·u, -1, 1), in acting and in
  every update (the target's a' is limited around the batch's action, the actor's around its
  prev_action); actor and critics see a_prev beside the features, so the policy stays Markov.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robot_rl.errors import ConfigError
from robot_rl.policies.checkpoint import CheckpointedAgent
from robot_rl.policies.encoders import (
    FrameFeatures,
    PretrainedEfficientNet,
    SpatialLearnedEmbeddings,
    WithFrozenBackbone,
    images_to_float,
    shift_features,
)
from robot_rl.policies.sac_networks import CriticEnsemble, GraspCritic, TanhGaussianActor
from robot_rl.policies.value_head import ValueHead, value_head_config

OPEN, STAY, CLOSE = 0, 1, 2


@dataclass
class SACConfig:
    state_dim: int
    action_dim: int  # of the env, gripper included
    hidden: tuple[int, ...] = (256, 256)
    critic_ensemble: int = 2
    critic_subsample: int | None = None  # e.g. 2 with critic_ensemble 10 (REDQ)
    discount: float = 0.97
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    init_temperature: float = 0.01
    target_entropy: float | None = None  # None: -|A|/2 over the actor's dimensions
    cta_ratio: int = 2
    grasp_critic: bool = False
    grasp_penalty: float = -0.02
    image_keys: tuple[str, ...] = ()  # e.g. ("image/front",): obs keys of camera images
    image_size: int = 84
    crop_pad: int = 4  # DrQ's random shift, pixels (0: none); on cached feature maps, crop_pad / 16 cells
    cache_features: bool = True  # frozen EfficientNet: encode each frame once, buffers hold its map
    image_features: int = 8  # spatial embeddings per camera
    proprio_dim: int = 64
    action_rate_limit: float | None = None  # e.g. 0.2 (FastRLAP): |a - a_prev| <= this, per dimension
    state_scale: tuple[float, ...] | None = (
        None  # divisors of the state entries (inputs of very different ranges)
    )
    frozen_cnn: bool = (
        False  # images through a CNN pretrained offline (IQL/ICVF), frozen, instead of EfficientNet
    )
    finetune_cnn: bool = (
        False  # that CNN trained on through the critic (V-PTR's fine-tuning) instead of frozen
    )
    angle_indices: tuple[int, ...] = ()  # state entries that are angles: read as (cos, sin), no jump at +-pi
    value: dict | None = None  # the critics' value head (policies.value_head): mse or hl_gauss

    def __post_init__(self):
        self.hidden, self.image_keys = tuple(self.hidden), tuple(self.image_keys)
        self.value = dict(self.value) if self.value else None
        value_head_config(self.value)  # a bad value head is refused here
        self.angle_indices = tuple(int(i) for i in self.angle_indices)
        if self.finetune_cnn and not self.frozen_cnn:
            raise ValueError(
                "finetune_cnn fine-tunes the pretrained CNN of frozen_cnn: set both (or encoder_init)"
            )
        if any(not 0 <= i < self.state_dim for i in self.angle_indices):
            raise ValueError(
                f"angle_indices {self.angle_indices} must index the {self.state_dim} state entries"
            )
        if self.state_scale is not None:
            self.state_scale = tuple(float(x) for x in self.state_scale)
            if len(self.state_scale) != self.state_dim or min(self.state_scale) <= 0:
                raise ValueError(
                    f"state_scale needs {self.state_dim} positive divisors, got {self.state_scale}"
                )
        if self.action_rate_limit is not None:
            if not 0 < self.action_rate_limit <= 2:
                raise ValueError(f"action_rate_limit must be in (0, 2], got {self.action_rate_limit}")
            if self.grasp_critic:
                raise ValueError(
                    "action_rate_limit and grasp_critic do not go together (the gripper toggles)"
                )
        if self.critic_subsample is not None and not 1 <= self.critic_subsample <= self.critic_ensemble:
            raise ValueError(
                f"critic_subsample must be in 1..{self.critic_ensemble}, got {self.critic_subsample}"
            )
        if self.cta_ratio < 1:
            raise ValueError(f"cta_ratio must be at least 1, got {self.cta_ratio}")

    @property
    def actor_dim(self) -> int:
        return self.action_dim - 1 if self.grasp_critic else self.action_dim

    @property
    def prev_action_dim(self) -> int:
        """Inputs of actor and critics beside the features: the previous action when rate-limited."""
        return self.action_dim if self.action_rate_limit is not None else 0


class ObsEncoder(WithFrozenBackbone):
    """Observation dict -> feature vector. State only: the state itself (divided by state_scale).
    With cameras: per camera the frozen backbone, spatial embeddings, Dense 256, LayerNorm, tanh
    (or, with frozen_cnn, the pretrained CNN's features); the state through Dense 64, LayerNorm,
    tanh; all concatenated."""

    def __init__(self, cfg: SACConfig, backbone: PretrainedEfficientNet | None):
        super().__init__()
        self.image_keys, self.finetune_cnn = cfg.image_keys, cfg.finetune_cnn
        scale = torch.tensor(cfg.state_scale if cfg.state_scale is not None else [1.0] * cfg.state_dim)
        self.register_buffer("state_scale", scale, persistent=False)  # from the config, not the weights
        self.angles = list(cfg.angle_indices)
        self.others = [i for i in range(cfg.state_dim) if i not in self.angles]
        state_dim = cfg.state_dim + len(self.angles)  # each angle as its cosine and sine
        if not self.image_keys:
            self.out_dim = state_dim
            return
        if cfg.frozen_cnn:
            from robot_rl.policies.encoders import CameraFeatures

            self.cnn = CameraFeatures(len(self.image_keys), cfg.image_size).requires_grad_(cfg.finetune_cnn)
            self.proprio = self._proprio(state_dim, cfg.proprio_dim)
            self.out_dim = self.cnn.out_dim + cfg.proprio_dim
            return
        self.cnn = None
        self.backbone = [backbone]  # in a list: frozen and shared, so not a submodule (not saved, not copied)
        side = backbone.feature_size(cfg.image_size)
        self.heads = nn.ModuleList(
            nn.Sequential(
                SpatialLearnedEmbeddings(backbone.out_channels, side, side, cfg.image_features),
                nn.Linear(backbone.out_channels * cfg.image_features, 256),
                nn.LayerNorm(256),
                nn.Tanh(),
            )
            for _ in self.image_keys
        )
        self.proprio = self._proprio(state_dim, cfg.proprio_dim)
        self.out_dim = 256 * len(self.image_keys) + cfg.proprio_dim

    @staticmethod
    def _proprio(state_dim: int, width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(state_dim, width), nn.LayerNorm(width), nn.Tanh())

    def state(self, state: Tensor) -> Tensor:
        """The state as the networks read it: scaled, angles as (cos, sin)."""
        if not self.angles:
            return state / self.state_scale
        others = state[:, self.others] / self.state_scale[self.others]
        angles = state[:, self.angles]
        return torch.cat([others, torch.cos(angles), torch.sin(angles)], -1)

    def maps(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The frozen backbone's feature maps in place of the images (computed once per batch and
        shared by every network that reads the batch; maps already computed are kept); a CNN
        being fine-tuned runs in `forward`."""
        if not self.image_keys or self.finetune_cnn:
            return obs
        if self.cnn is not None:
            with torch.no_grad():
                return {"state": obs["state"], "cnn": self.cnn([obs[k] for k in self.image_keys])}
        return {**obs, **{k: self.backbone[0](obs[k]) for k in self.image_keys if is_frames(obs[k])}}

    def forward(self, maps: dict[str, Tensor]) -> Tensor:
        """Features from the output of `maps`."""
        state = self.state(maps["state"])
        if not self.image_keys:
            return state
        parts = [self.proprio(state)]
        if self.cnn is not None:
            cnn = maps["cnn"] if "cnn" in maps else self.cnn([maps[k] for k in self.image_keys])
            return torch.cat(parts + [cnn], -1)
        for key, head in zip(self.image_keys, self.heads):
            parts.append(head(maps[key]))
        return torch.cat(parts, -1)


def is_frames(x: Tensor) -> bool:
    """Camera frames (B, 3, H, W) rather than the backbone's maps (B, 112, h, w)."""
    return x.shape[1] == 3


def random_crop(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """DrQ augmentation: pad by replicating the border, then crop back at a random offset per image."""
    if pad <= 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    # Offsets from the (CPU) generator, then on the images' device.
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None].expand(
        b, c, h, w + 2 * pad
    )
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :].expand(b, c, h, w)
    return cropped.gather(3, cols)


def to_tensors(obs: dict[str, np.ndarray], image_keys: tuple[str, ...]) -> dict[str, Tensor]:
    """numpy obs (state float, images uint8 BHWC or their feature maps) -> float tensors (images
    BCHW in [0, 1])."""
    out = {"state": torch.as_tensor(np.asarray(obs["state"], np.float32))}
    for key in image_keys:
        x = np.asarray(obs[key])
        out[key] = images_to_float(x) if x.dtype == np.uint8 else torch.as_tensor(x, dtype=torch.float32)
    return out


def grasp_classes(gripper: Tensor, previous: Tensor) -> Tensor:
    """Discrete grasp action of each executed gripper command given the previous one: a change
    of more than half the range toward closed is CLOSE, toward open OPEN, anything else STAY."""
    change = gripper - previous
    return torch.where(change > 0.5, CLOSE, torch.where(change < -0.5, OPEN, STAY))


def gripper_command(grasp: Tensor, previous: Tensor) -> Tensor:
    return torch.where(grasp == CLOSE, 1.0, torch.where(grasp == OPEN, -1.0, previous))


class SACAgent(CheckpointedAgent, nn.Module):
    kind, config_class = "sac_agent", SACConfig  # checkpoints (CheckpointedAgent)

    def __init__(self, cfg: SACConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(seed)
        backbone = PretrainedEfficientNet() if cfg.image_keys and not cfg.frozen_cnn else None
        self.encoder = ObsEncoder(cfg, backbone)
        in_dim = self.encoder.out_dim + cfg.prev_action_dim
        head = ValueHead(cfg.value)
        self.critic = CriticEnsemble(cfg.critic_ensemble, in_dim, cfg.actor_dim, cfg.hidden, head)
        self.actor = TanhGaussianActor(in_dim, cfg.actor_dim, cfg.hidden)
        self.log_alpha = nn.Parameter(torch.tensor(float(np.log(cfg.init_temperature))))
        self.grasp = GraspCritic(self.encoder.out_dim, cfg.hidden) if cfg.grasp_critic else None
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_grasp = (
            copy.deepcopy(self.grasp).requires_grad_(False) if self.grasp is not None else None
        )
        if cfg.image_keys and not cfg.frozen_cnn:
            self.target_encoder.backbone = self.encoder.backbone
        self.frame_features = FrameFeatures(backbone) if backbone is not None and cfg.cache_features else None
        self.target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -cfg.actor_dim / 2
        critic_params = list(self.critic.parameters()) + list(self.encoder.parameters())
        self.critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.temperature_lr)
        self.grasp_opt = (
            torch.optim.Adam(self.grasp.parameters(), lr=cfg.critic_lr) if self.grasp is not None else None
        )
        self.updates = 0

    def init_camera_encoder(self, state: dict[str, Tensor]) -> None:
        """Load the frozen CNN (`frozen_cnn`) from an IQL or ICVF encoder's weights."""
        if not self.cfg.frozen_cnn or not self.cfg.image_keys:
            raise ConfigError("a pretrained camera encoder needs image_keys and frozen_cnn")
        try:
            self.encoder.cnn.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(
                f"the pretrained encoder does not fit this agent's cameras: {str(exc).splitlines()[0]}"
            ) from None
        self.target_encoder.cnn.load_state_dict(state)

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    # --- losses ----------------------------------------------------------------------------
    def prepare(self, batch: dict) -> dict:
        """Augment the cameras of obs and next obs (each its own random shift: a crop of the
        frames, or the same shift of stored maps) and run the frozen backbone once on frames; a
        prepared batch is left as it is."""
        if batch.get("prepared") or not self.cfg.image_keys:
            return batch
        out = dict(batch, prepared=True)
        pad, cells = self.cfg.crop_pad, self.cfg.crop_pad / PretrainedEfficientNet.stride
        for part in ("obs", "next_obs"):
            obs = dict(batch[part])
            for k in self.cfg.image_keys:
                x = obs[k]
                if is_frames(x):
                    obs[k] = random_crop(x, pad, self.generator)
                else:
                    obs[k] = shift_features(x, cells, self.generator)
            out[part] = self.encoder.maps(obs)
        return out

    def encode_frames(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """With cached features: the cameras' uint8 frames in an observation or a batch of
        transitions (keys <camera>, obs/<camera>, next_obs/<camera>) replaced by their float16
        feature maps, each distinct frame encoded once; anything else as it is."""
        if self.frame_features is None:
            return data
        out = dict(data)
        for camera in self.cfg.image_keys:
            keys = [k for k in (camera, f"obs/{camera}", f"next_obs/{camera}") if k in data]
            arrays = [np.asarray(data[k]) for k in keys]
            arrays = [(k, a) for k, a in zip(keys, arrays) if a.dtype == np.uint8]
            if not arrays:
                continue
            frames = [a.reshape(-1, *a.shape[-3:]) for _, a in arrays]  # one frame: a batch of one
            maps = self.frame_features(np.concatenate(frames))
            pieces = np.split(maps, np.cumsum([len(f) for f in frames])[:-1])
            for (k, a), piece in zip(arrays, pieces):
                out[k] = piece.reshape(*a.shape[:-3], *piece.shape[1:])
        return out

    def buffer_schema(self, schema: dict) -> dict:
        """A replay schema of frames as the buffers hold it: with cached features, each camera's
        float16 feature map in place of its frame."""
        if self.frame_features is None:
            return schema
        cameras = {f"{p}/{k}" for p in ("obs", "next_obs") for k in self.cfg.image_keys}
        return {
            k: ((self.frame_features.shape(shape), "float16") if k in cameras else (shape, dtype))
            for k, (shape, dtype) in schema.items()
        }

    def inputs(self, features: Tensor, prev_action: Tensor | None) -> Tensor:
        """What actor and critics read: the features, and the previous action when rate-limited."""
        if self.cfg.action_rate_limit is None:
            return features
        return torch.cat([features, prev_action], -1)

    def limited(self, u: Tensor, prev_action: Tensor | None) -> Tensor:
        """The action for the actor's output u in [-1, 1]: u itself, or within the rate limit of
        the previous action."""
        if self.cfg.action_rate_limit is None:
            return u
        return (prev_action + self.cfg.action_rate_limit * u).clamp(-1.0, 1.0)

    def sample_action(self, features: Tensor, prev_action: Tensor | None) -> tuple[Tensor, Tensor]:
        """A reparameterized action and the log-probability of the actor's output behind it."""
        u, log_prob = self.actor.sample(self.inputs(features, prev_action))
        return self.limited(u, prev_action), log_prob

    def target_q(
        self, next_obs: dict[str, Tensor], reward: Tensor, mask: Tensor, action: Tensor | None = None
    ) -> Tensor:
        """r + γ·mask·min over the (sub)ensemble of target Q(s', a'), a' ~ π(s'): no entropy term.
        `next_obs` as `prepare` leaves it (for state inputs, the observation itself); `action`, the
        batch's executed action, is the previous action at s' (needed when rate-limited)."""
        with torch.no_grad():
            next_action, _ = self.sample_action(self.encoder(next_obs), action)
            k, members = self.cfg.critic_subsample, None
            if k is not None and k < self.cfg.critic_ensemble:
                members = torch.randperm(self.cfg.critic_ensemble, generator=self.generator)[:k]
            q = self.target_critic(
                self.inputs(self.target_encoder(next_obs), action), next_action, members
            )  # (k, B)
            return reward + self.cfg.discount * mask * q.min(0).values

    def critic_loss(self, batch: dict) -> tuple[Tensor, dict]:
        batch = self.prepare(batch)
        target = self.target_q(batch["next_obs"], batch["reward"], batch["mask"], batch["action"])
        out = self.critic.outputs(
            self.inputs(self.encoder(batch["obs"]), batch["prev_action"]), self._arm(batch["action"])
        )
        loss = self.critic.head.loss(out, target).mean()  # every member to the same target
        q = self.critic.head.value(out.detach())
        return loss, {"critic_loss": loss.item(), "q": q.mean().item()}

    def actor_loss(self, batch: dict) -> tuple[Tensor, Tensor, dict]:
        features = self.encoder(self.prepare(batch)["obs"]).detach()  # the actor does not train the encoder
        action, log_prob = self.sample_action(features, batch["prev_action"])
        q = self.critic(self.inputs(features, batch["prev_action"]), action).mean(0)
        actor = (self.alpha.detach() * log_prob - q).mean()
        entropy = -log_prob.detach().mean()
        temperature = self.alpha * (entropy - self.target_entropy)
        return (
            actor,
            temperature,
            {"actor_loss": actor.item(), "entropy": entropy.item(), "alpha": self.alpha.item()},
        )

    def grasp_loss(self, batch: dict) -> tuple[Tensor, dict]:
        """DQN with a double-Q target: the online net picks a*, the target net scores it."""
        batch = self.prepare(batch)
        obs, next_obs = batch["obs"], batch["next_obs"]
        taken = grasp_classes(batch["action"][:, -1], batch["prev_action"][:, -1])
        reward = batch["reward"] + self.cfg.grasp_penalty * (taken != STAY).float()
        with torch.no_grad():
            next_features = self.encoder(next_obs)
            best = self.grasp(next_features).argmax(-1)
            next_q = self.target_grasp(self.target_encoder(next_obs)).gather(-1, best[:, None]).squeeze(-1)
            target = reward + self.cfg.discount * batch["mask"] * next_q
        q = self.grasp(self.encoder(obs).detach()).gather(-1, taken[:, None]).squeeze(-1)
        loss = (q - target).pow(2).mean()
        return loss, {"grasp_loss": loss.item()}

    def compile_losses(self) -> None:
        """torch.compile the critic loss, the update's bulk (cta_ratio critic updates per step over
        the whole ensemble). The actor loss stays eager: its actor and temperature terms are
        backpropagated one after the other, which one compiled backward graph does not allow."""
        from robot_rl.utils.device import maybe_compile

        self.critic_loss = maybe_compile(self.critic_loss, True)

    def _arm(self, action: Tensor) -> Tensor:
        return action[:, :-1] if self.grasp is not None else action

    # --- updates ---------------------------------------------------------------------------
    def update_critic(self, batch: dict) -> dict:
        batch = self.prepare(batch)  # the grasp critic sees the same crops
        loss, info = self.critic_loss(batch)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        if self.grasp is not None:
            grasp, grasp_info = self.grasp_loss(batch)
            self.grasp_opt.zero_grad(set_to_none=True)
            grasp.backward()
            self.grasp_opt.step()
            info.update(grasp_info)
        self._soft_update()
        return info

    def update_actor(self, batch: dict) -> dict:
        actor, temperature, info = self.actor_loss(batch)
        self.actor_opt.zero_grad(set_to_none=True)
        actor.backward()
        self.actor_opt.step()
        self.alpha_opt.zero_grad(set_to_none=True)
        temperature.backward()
        self.alpha_opt.step()
        return info

    def update(self, batches: list[dict]) -> dict:
        """One learner step: a critic update per batch (`cta_ratio` of them), then the actor and
        temperature on the last batch."""
        if len(batches) != self.cfg.cta_ratio:
            raise ValueError(
                f"a learner step takes cta_ratio={self.cfg.cta_ratio} batches, got {len(batches)}"
            )
        self.train()
        batches = [
            self.prepare(self.on_device(b)) for b in batches
        ]  # the actor reuses the last batch's crops and maps
        for batch in batches:
            info = self.update_critic(batch)
        info.update(self.update_actor(batches[-1]))
        self.updates += 1
        return info

    @torch.no_grad()
    def _soft_update(self) -> None:
        tau = self.cfg.tau
        pairs = [(self.target_critic, self.critic), (self.target_encoder, self.encoder)]
        if self.grasp is not None:
            pairs.append((self.target_grasp, self.grasp))
        for target, online in pairs:
            for t, p in zip(target.parameters(), online.parameters()):
                t.lerp_(p, tau)

    # --- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def act(
        self,
        obs: dict[str, Tensor],
        prev_gripper: Tensor | None = None,
        deterministic: bool = False,
        prev_action: Tensor | None = None,
    ) -> Tensor:
        """Actions in [-1, 1] for a batch of observations (the gripper from the grasp critic if any;
        within the rate limit of `prev_action`, zeros if not given, when rate-limited). Inputs may be
        on the CPU; the actions come back on the CPU."""
        moved = self.on_device({"obs": obs, "prev_gripper": prev_gripper, "prev_action": prev_action})
        obs, prev_gripper, prev_action = moved["obs"], moved["prev_gripper"], moved["prev_action"]
        features = self.encoder(self.encoder.maps(obs))
        if self.cfg.action_rate_limit is not None and prev_action is None:
            prev_action = torch.zeros(len(features), self.cfg.action_dim, device=features.device)
        x = self.inputs(features, prev_action)
        arm = self.limited(self.actor.mode(x) if deterministic else self.actor.sample(x)[0], prev_action)
        if self.grasp is None:
            return arm.cpu()
        grasp = self.grasp(features).argmax(-1)
        previous = (
            prev_gripper if prev_gripper is not None else torch.full((len(arm),), -1.0, device=arm.device)
        )
        return torch.cat([arm, gripper_command(grasp, previous)[:, None]], -1).cpu()

    def acting_state(self) -> dict[str, Tensor]:
        """The weights the acting side needs (encoder head, actor, grasp critic), detached copies."""
        parts = {"encoder": self.encoder, "actor": self.actor}
        if self.grasp is not None:
            parts["grasp"] = self.grasp
        return {
            f"{name}.{k}": v.detach().to("cpu", copy=True)
            for name, m in parts.items()
            for k, v in m.state_dict().items()
        }

    def load_acting_state(self, state: dict[str, Tensor]) -> None:
        for name in ("encoder", "actor", "grasp"):
            module = getattr(self, name)
            own = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            if module is not None and own:
                module.load_state_dict(own)


def torch_batch(batch: dict[str, np.ndarray], image_keys: tuple[str, ...]) -> dict:
    """A sampled numpy batch (obs/..., next_obs/..., action, prev_action, reward, mask) as the
    losses take it."""
    obs = {k[len("obs/") :]: v for k, v in batch.items() if k.startswith("obs/")}
    next_obs = {k[len("next_obs/") :]: v for k, v in batch.items() if k.startswith("next_obs/")}
    tensors = {
        k: torch.as_tensor(batch[k], dtype=torch.float32) for k in ("action", "prev_action", "reward", "mask")
    }
    return {"obs": to_tensors(obs, image_keys), "next_obs": to_tensors(next_obs, image_keys), **tensors}


class AgentPolicy:
    """The agent as a ControlLoop policy: one action per tick, sampled (or the mode), the gripper
    from the grasp critic when there is one. The loop tells it what was executed (`executed`):
    the previous command the grasp critic and a rate-limited actor act from. `keep_prev` keeps
    that command across episodes, for a robot that drives on between them (FastRLAP)."""

    def __init__(self, agent: SACAgent, deterministic: bool = False, keep_prev: bool = False):
        self.agent, self.deterministic, self.keep_prev = agent, deterministic, keep_prev
        self.reset(initial=True)

    def reset(self, initial: bool = False) -> None:
        if initial or not self.keep_prev:
            self._prev = np.zeros(self.agent.cfg.action_dim, np.float32)
            if self.agent.cfg.grasp_critic:
                self._prev[-1] = -1.0  # gripper open

    def executed(self, action: np.ndarray) -> None:
        self._prev = np.asarray(action, np.float32).copy()

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        obs = self.agent.encode_frames(obs)  # cached features: the frame's map, kept for storing it
        batch = to_tensors({k: np.asarray(v)[None] for k, v in obs.items()}, self.agent.cfg.image_keys)
        prev = torch.as_tensor(self._prev)[None]
        action = self.agent.act(batch, prev[:, -1], self.deterministic, prev_action=prev)[0].numpy()
        self._prev = action.copy()  # until the loop says what it executed instead
        return action


def batch_policy(agent: SACAgent):
    """The agent's deterministic action for a vector env's state batch (evaluate.run_episodes)."""
    prev = None

    def act(obs: np.ndarray, reset: np.ndarray) -> np.ndarray:
        nonlocal prev
        if prev is None:
            prev = torch.zeros(len(obs), agent.cfg.action_dim)
        start = torch.as_tensor(reset, dtype=torch.long)
        prev[start] = 0.0
        if agent.cfg.grasp_critic:
            prev[start, -1] = -1.0  # gripper open
        action = agent.act(
            {"state": torch.as_tensor(obs, dtype=torch.float32)},
            prev[:, -1],
            deterministic=True,
            prev_action=prev,
        )
        prev = action.clone()
        return action.numpy()

    return act
