"""Intention-conditioned value functions (ICVF, Ghosh et al.; dibyaghosh/icvf_release) on
observation-only data: video with no actions and no rewards.

- V(s, g, z) in icvf_release's multilinear form: phi(s), psi(g) and T(psi(z)) from MLPs, then
  V = <A (T * phi), B (T * psi)>; an ensemble of 2. Camera images go through the project's small
  CNN (`CameraFeatures`, one per camera, shared by every head), which is what V-PTR hands on to
  the downstream learner (`encoder_init`).
- Reward 1(s = g) - 1 and mask 1 - 1(s = g) for the outcome g, likewise for the intent z.
- Target r + gamma * mask * V_target(s', g, z); the squared error is weighted by the expectile
  (0.9) according to the sign of the intent's advantage A = r_z + gamma * V_target(s', z, z) -
  V_target(s, z, z) (min over the ensemble for s', mean for s), not the error's own sign.
- Goals and intents: random state 0.3, same-trajectory future 0.5, current state 0.2; the intent
  equals the outcome with probability 0.5. Soft target updates (0.005), Adam.
- Goals and intents repeat observations (the current state, each other), so a batch carries each
  frame once (`frame_rows`) and each network encodes it once: the same loss with about a quarter
  fewer frames through the CNN (`robot-rl bench icvf`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from robot_rl.datasets.store import read_steps
from robot_rl.errors import ConfigError, DatasetError
from robot_rl.policies.checkpoint import CheckpointedAgent
from robot_rl.policies.encoders import CameraFeatures, images_to_float, relu_mlp
from robot_rl.utils.checkpoints import LearnerCheckpoints, RngLedger
from robot_rl.utils.device import Prefetcher, maybe_compile, resolve_device
from robot_rl.utils.training import RunLog, seed_everything


@dataclass
class ICVFConfig:
    state_dim: int = 0  # 0: images only (video)
    image_keys: tuple[str, ...] = ()  # e.g. ("image/front",)
    image_size: int = 84
    hidden: tuple[int, ...] = (256, 256)
    ensemble: int = 2
    discount: float = 0.99
    expectile: float = 0.9
    tau: float = 0.005
    lr: float | None = None  # None: 5e-5 with images, 1e-3 on state (REFERENCES.md)

    def __post_init__(self):
        self.image_keys, self.hidden = tuple(self.image_keys), tuple(self.hidden)
        if not self.state_dim and not self.image_keys:
            raise ConfigError("ICVF needs a state or at least one camera")
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"expectile must be in (0, 1), got {self.expectile}")


class MultilinearVF(nn.Module):
    """icvf_release's MultilinearVF on encoded inputs: one member of the ensemble."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        width = hidden[-1]

        def mlp():  # ReLU after the last layer too (activate_final)
            return nn.Sequential(relu_mlp(in_dim, hidden[:-1], width), nn.ReLU())

        self.phi, self.psi = mlp(), mlp()
        self.T = nn.Sequential(relu_mlp(width, hidden[:-1], width), nn.ReLU())
        self.matrix_a, self.matrix_b = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, s: Tensor, g: Tensor, z: Tensor) -> Tensor:
        phi, psi, tz = self.phi(s), self.psi(g), self.T(self.psi(z))
        return (self.matrix_a(tz * phi) * self.matrix_b(tz * psi)).sum(-1)


class ICVFValue(nn.Module):
    """Encoder (state normalization, CNN per camera) and the ensemble of multilinear heads."""

    def __init__(self, cfg: ICVFConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = CameraFeatures(len(cfg.image_keys), cfg.image_size) if cfg.image_keys else None
        in_dim = cfg.state_dim + (self.encoder.out_dim if self.encoder else 0)
        self.heads = nn.ModuleList(MultilinearVF(in_dim, cfg.hidden) for _ in range(cfg.ensemble))
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))

    def encode(self, obs: dict[str, Tensor]) -> Tensor:
        parts = [(obs["state"] - self.state_mean) / self.state_std] if self.cfg.state_dim else []
        if self.encoder is not None:
            parts.append(self.encoder([obs[k] for k in self.cfg.image_keys]))
        return torch.cat(parts, -1)

    def forward(self, s: Tensor, g: Tensor, z: Tensor) -> Tensor:
        """Encoded s, g, z -> (ensemble, B) values."""
        return torch.stack([head(s, g, z) for head in self.heads])


class ICVFAgent(CheckpointedAgent, nn.Module):
    kind, config_class = "icvf", ICVFConfig

    def __init__(self, cfg: ICVFConfig, state_mean=None, state_std=None):
        super().__init__()
        self.cfg = cfg
        self.value = ICVFValue(cfg)
        if state_mean is not None:
            self.value.state_mean.copy_(torch.as_tensor(state_mean, dtype=torch.float32))
            self.value.state_std.copy_(torch.as_tensor(state_std, dtype=torch.float32))
        self.target = copy.deepcopy(self.value).requires_grad_(False)
        lr = cfg.lr if cfg.lr is not None else (5e-5 if cfg.image_keys else 1e-3)
        self.opt = torch.optim.Adam(self.value.parameters(), lr=lr)
        self.updates = 0

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch: each frame once (`frame_batch`): online/ inputs (the observations, goals and intents),
        next/ inputs (next observations not among them), the rows of each role (obs_at, goal_at,
        intent_at into online/; next_at into online/ then next/); reward, mask (outcome),
        intent_reward, intent_mask. Encoding a frame once per network is the same loss as encoding
        it once per role (the encoder has no batch statistics), for about a quarter less work."""
        cfg = self.cfg

        def inputs(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}

        online, extra = inputs("online/"), inputs("next/")
        obs_at, next_at, goal_at, intent_at = (
            batch[f"{role}_at"] for role in ("obs", "next", "goal", "intent")
        )
        with torch.no_grad():
            t = self.target.encode({k: torch.cat([v, extra[k]]) for k, v in online.items()})
            t_s, t_next, t_goal, t_intent = t[obs_at], t[next_at], t[goal_at], t[intent_at]
            q_gz = batch["reward"] + cfg.discount * batch["mask"] * self.target(t_next, t_goal, t_intent)
            next_v_zz = self.target(t_next, t_intent, t_intent).min(0).values
            q_zz = batch["intent_reward"] + cfg.discount * batch["intent_mask"] * next_v_zz
            adv = q_zz - self.target(t_s, t_intent, t_intent).mean(0)
        o = self.value.encode(online)
        v_gz = self.value(o[obs_at], o[goal_at], o[intent_at])
        weight = torch.where(adv >= 0, cfg.expectile, 1.0 - cfg.expectile)
        loss = (weight * (q_gz - v_gz) ** 2).mean(-1).sum()  # each member's mean, summed
        return {"loss": loss, "v": v_gz.detach(), "adv": adv}

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        out = self.losses(self.on_device(batch))
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.target.parameters()), list(self.value.parameters()), self.cfg.tau)
        self.updates += 1
        return {
            "loss": out["loss"].item(),
            "v_mean": out["v"].mean().item(),
            "adv_mean": out["adv"].mean().item(),
            "adv_positive": (out["adv"] >= 0).float().mean().item(),
        }

    @torch.no_grad()
    def values(
        self, obs: dict[str, Tensor], goal: dict[str, Tensor], intent: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Ensemble-mean V(s, g, z) (z = g when not given)."""
        s, g = self.value.encode(obs), self.value.encode(goal)
        return self.value(s, g, self.value.encode(intent) if intent is not None else g).mean(0)

    def encoder_state(self) -> dict[str, Tensor]:
        """The CNN's weights, for `encoder_init` of a downstream learner (V-PTR)."""
        if self.value.encoder is None:
            raise ConfigError("this ICVF has no image encoder to hand on")
        return self.value.encoder.state_dict()


class GoalSampler:
    """icvf_release's GCSDataset: transitions with outcomes and intents drawn by the mixture."""

    def __init__(
        self,
        episode_ends: np.ndarray,
        p_random: float = 0.3,
        p_trajectory: float = 0.5,
        p_current: float = 0.2,
        p_same: float = 0.5,
    ):
        if abs(p_random + p_trajectory + p_current - 1.0) > 1e-6:
            raise ConfigError("goal probabilities (random, trajectory, current) must sum to 1")
        self.ends = np.asarray(episode_ends, np.int64)
        self.size = int(self.ends[-1])
        starts = np.concatenate([[0], self.ends[:-1]])
        # Transitions: every step with a next step in its episode.
        self.index = np.concatenate([np.arange(a, b - 1) for a, b in zip(starts, self.ends)])
        if len(self.index) == 0:
            raise DatasetError("no episode has two steps: ICVF needs transitions")
        self.p_trajectory, self.p_current, self.p_same = p_trajectory, p_current, p_same

    def goals(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(idx)
        goal = rng.integers(0, self.size, n)
        final = self.ends[np.searchsorted(self.ends, idx, side="right")] - 1
        distance = rng.random(n)
        future = np.round(np.minimum(idx + 1, final) * distance + final * (1 - distance)).astype(np.int64)
        goal = np.where(rng.random(n) < self.p_trajectory / (1.0 - self.p_current), future, goal)
        return np.where(rng.random(n) < self.p_current, idx, goal)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = self.index[rng.integers(0, len(self.index), n)]
        goal = self.goals(idx, rng)
        intent = np.where(rng.random(n) < self.p_same, goal, self.goals(idx, rng))
        hit, intent_hit = (idx == goal).astype(np.float32), (idx == intent).astype(np.float32)
        return {
            "idx": idx,
            "next": idx + 1,
            "goal": goal,
            "intent": intent,
            "reward": hit - 1.0,
            "mask": 1.0 - hit,
            "intent_reward": intent_hit - 1.0,
            "intent_mask": 1.0 - intent_hit,
        }


def frame_rows(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A sample's frames, each once: `online` (the observations, goals and intents the trained
    network encodes), `next` (next observations only the target network sees), and the row of
    every role among online then next (`ICVFAgent.losses`)."""
    online = np.unique(np.concatenate([s["idx"], s["goal"], s["intent"]]))
    extra = np.setdiff1d(s["next"], online)
    in_online = np.isin(s["next"], online)
    next_at = np.where(
        in_online, np.searchsorted(online, s["next"]), len(online) + np.searchsorted(extra, s["next"])
    )
    return {
        "online": online,
        "next": extra,
        "obs_at": np.searchsorted(online, s["idx"]),
        "next_at": next_at,
        "goal_at": np.searchsorted(online, s["goal"]),
        "intent_at": np.searchsorted(online, s["intent"]),
    }


def frame_batch(s: dict[str, np.ndarray], gather) -> dict[str, Tensor]:
    """The batch `ICVFAgent.losses` takes for a `GoalSampler` sample, each frame once;
    `gather(frame_indices)` gives those frames' inputs ({"state": ..., "image/front": ...})."""
    rows = frame_rows(s)
    batch = {f"{part}/{k}": v for part in ("online", "next") for k, v in gather(rows[part]).items()}
    batch.update({k: torch.as_tensor(rows[k]) for k in ("obs_at", "next_at", "goal_at", "intent_at")})
    batch.update({k: torch.as_tensor(s[k]) for k in ("reward", "mask", "intent_reward", "intent_mask")})
    return batch


@dataclass
class ICVFTrainConfig:
    steps: int = 50_000
    batch_size: int = 256
    log_every: int = 500
    seed: int = 0
    use_state: bool | None = None  # None: the store's obs/state if it has one (video has none)
    device: str = "auto"  # auto: CUDA when present (robot_rl.utils.device)
    compile: bool = False  # torch.compile the losses
    checkpoint_every: int = (
        0  # steps between resumable checkpoints in RUN/checkpoints (0: none; Ctrl-C writes one)
    )
    resume: str | None = None  # a run folder: continue it from its latest checkpoint, to the same end
    agent: dict | None = None  # ICVFConfig overrides (image_keys, hidden, lr, expectile, ...)


def train_icvf(store_path, out_dir, cfg: ICVFTrainConfig, progress: bool = True) -> dict:
    """Pretrain an ICVF on a store's observations (its actions and rewards, if any, are ignored)."""
    from robot_rl.datasets.store import EpisodeStore

    rng = seed_everything(cfg.seed)
    checkpoints = LearnerCheckpoints(out_dir, "icvf", cfg)
    agent_cfg = dict(cfg.agent or {})
    with EpisodeStore.open(store_path) as store:
        keys = store.keys
    image_keys = tuple(agent_cfg.get("image_keys") or [k[4:] for k in keys if k.startswith("obs/image/")])
    use_state = "obs/state" in keys if cfg.use_state is None else cfg.use_state
    needed = (["obs/state"] if use_state else []) + [f"obs/{k}" for k in image_keys]
    if not needed:
        raise DatasetError(f"{store_path} has neither obs/state nor camera images (keys: {', '.join(keys)})")
    data, ends, stats = read_steps(store_path, needed, stats_key="obs/state" if use_state else None)
    first = data[needed[-1]]
    try:
        acfg = ICVFConfig(
            **{
                **agent_cfg,
                "image_keys": image_keys,
                "state_dim": data["obs/state"].shape[1] if use_state else 0,
                "image_size": first.shape[1] if image_keys else 84,
            }
        )
    except TypeError as exc:
        raise ConfigError(f"bad icvf agent settings: {exc}") from None
    agent = ICVFAgent(acfg, stats["mean"] if use_state else None, stats["std"] + 1e-3 if use_state else None)
    device = resolve_device(cfg.device)
    agent.to(device)
    if cfg.compile:
        agent.losses = maybe_compile(agent.losses, True)
    sampler = GoalSampler(ends)

    def gather(index: np.ndarray) -> dict[str, Tensor]:
        out = {}
        if use_state:
            out["state"] = torch.as_tensor(data["obs/state"][index], dtype=torch.float32)
        for k in image_keys:
            out[k] = images_to_float(data[f"obs/{k}"][index])
        return out

    log = RunLog(out_dir, f"ICVF on {Path(store_path).name}")
    if (state := checkpoints.restore(log, rng)) is not None:
        agent.load_training_state(state["agent"])
    first = checkpoints.start
    ledger = RngLedger(rng, lambda: frame_batch(sampler.sample(cfg.batch_size, rng), gather))
    snapshot = checkpoints.snapshot(lambda: {"agent": agent.training_state()}, log, ledger=ledger)
    bar = checkpoints.bar(cfg.steps, "ICVF", "step", progress)
    start = time.monotonic()
    with checkpoints, Prefetcher(ledger.draw, device) as batches:  # closed whatever ends the loop
        for step in bar:
            info = agent.update(ledger.take(batches))
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                log.log(step, **info, updates_per_s=(step + 1 - first) / (time.monotonic() - start))
                bar.set_postfix_str(f"loss {info['loss']:.4f} v {info['v_mean']:.2f}", refresh=False)
            checkpoints.step_done(step + 1, cfg.steps, snapshot)
    checkpoint = agent.save(Path(out_dir) / "checkpoint")  # CPU copies
    return log.close(
        {
            "learner": "icvf",
            "store": str(store_path),
            "checkpoint": str(checkpoint),
            "config": asdict(cfg),
            "agent": asdict(acfg),
            "transitions": len(sampler.index),
        },
        curves=("loss", "v_mean", "adv_mean"),
    )


def pretrained_encoder(path, image_keys: tuple[str, ...], image_size: int) -> dict[str, Tensor]:
    """The encoder weights of an ICVF or IQL checkpoint for a learner that sees `image_keys` at
    `image_size`: cameras pair up in order (a video's camera need not share the robot camera's
    name) and the image size must match."""
    state, keys, size = load_encoder_state(path)
    if (len(keys), size) != (len(image_keys), image_size):
        raise ConfigError(
            f"{path} was pretrained on {list(keys)} at {size} px; this learner sees "
            f"{list(image_keys)} at {image_size} px"
        )
    return state


def load_encoder_state(path) -> tuple[dict[str, Tensor], tuple[str, ...], int]:
    """The image encoder (`CameraFeatures` weights) of an ICVF or an IQL checkpoint, with the
    cameras and image size it was trained on: what V-PTR and FastRLAP start a learner from."""
    from robot_rl.policies.checkpoint import load_checkpoint, read_meta

    kind = read_meta(path).get("kind")
    if kind == "iql_agent":  # read from the file: the IQL agent's module is not needed to hand its encoder on
        meta, weights = load_checkpoint(path, kind)
        state = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
        if not state:
            raise ConfigError(f"the IQL at {path} has no image encoder to hand on (it learned from state)")
        config = meta.get("config") or {}
        return state, tuple(config.get("image_keys") or ()), int(config.get("image_size") or 0)
    if kind != ICVFAgent.kind:
        raise DatasetError(f"{path} holds a {kind!r} checkpoint, not an ICVF or IQL one")
    agent = ICVFAgent.load(path)
    return agent.encoder_state(), tuple(agent.cfg.image_keys), agent.cfg.image_size
