"""Inverse-dynamics action labels for action-free trajectories, as SS-ORL (Zheng et al.) has them.

A Gaussian over a_t given the window (s_{t-1}, s_t, s_{t+1}): an MLP of two 1024-unit ReLU layers
with dropout 0.1, a mean and a log-std bounded to [-5, 2], trained by negative log-likelihood
(Adam 1e-4) on the episodes that have actions, 10 % of them held out; the weights of the epoch
with the lowest held-out error of the mean are kept (`select_by: nll` for the best likelihood: on
a few held-out episodes the likelihood can worsen from the first epoch, through overconfident
variances, while the mean that labels the data keeps improving). Windows are edge-padded at an
episode's ends (the store does not keep the observation after an episode's last action, so that
step's window repeats s_t). Labels are the Gaussian's mean clipped to the action range [-1, 1].

`label_actions` writes the labels into an action-free store as its `action` key, with
provenance; any offline learner then trains on the labeled and the proxy-labeled stores together
(IQL: `dataset=[a.zarr,b.zarr]`).
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from robot_rl.datasets.store import read_steps
from robot_rl.errors import ConfigError, DatasetError
from robot_rl.policies.checkpoint import CheckpointedAgent
from robot_rl.utils.checkpoints import LearnerCheckpoints
from robot_rl.utils.device import maybe_compile, resolve_device
from robot_rl.utils.training import RunLog, seed_everything

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class IDMConfig:
    state_dim: int = 0
    action_dim: int = 0
    hidden: tuple[int, ...] = (1024, 1024)
    dropout: float = 0.1

    def __post_init__(self):
        self.hidden = tuple(self.hidden)


class InverseDynamics(CheckpointedAgent, nn.Module):
    kind, config_class = "inverse_dynamics", IDMConfig

    def __init__(self, cfg: IDMConfig, state_mean=None, state_std=None):
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
        layers, width = [], 3 * cfg.state_dim
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.mean = nn.Linear(width, cfg.action_dim)
        self.log_std = nn.Linear(width, cfg.action_dim)
        self.updates = 0

    def forward(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        """windows (B, 3, state_dim) -> mean and log-std of a_t, each (B, action_dim)."""
        x = ((windows - self.state_mean) / self.state_std).flatten(1)
        h = self.trunk(x)
        return self.mean(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def nll(self, windows: Tensor, actions: Tensor) -> Tensor:
        mean, log_std = self(windows)
        return -torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1).mean()

    @torch.no_grad()
    def predict(self, windows: Tensor) -> Tensor:
        return self(windows)[0].clamp(-1.0, 1.0)


def state_windows(states: np.ndarray, episode_ends: np.ndarray) -> np.ndarray:
    """(N, D) states of whole episodes -> (N, 3, D) windows (s_{t-1}, s_t, s_{t+1}), edge-padded
    inside each episode."""
    index = np.arange(len(states))
    starts = np.repeat(np.concatenate([[0], episode_ends[:-1]]), np.diff(np.concatenate([[0], episode_ends])))
    lasts = np.repeat(episode_ends - 1, np.diff(np.concatenate([[0], episode_ends])))
    return np.stack(
        [states[np.maximum(index - 1, starts)], states, states[np.minimum(index + 1, lasts)]], axis=1
    )


@dataclass
class IDMTrainConfig:
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-4
    holdout: float = 0.1  # share of episodes held out for checkpoint selection
    select_by: str = "mse"  # the held-out epoch kept: lowest mse of the mean (the labels) or nll
    hidden: tuple[int, ...] = (1024, 1024)
    dropout: float = 0.1
    device: str = "auto"  # auto: CUDA when present (robot_rl.utils.device)
    compile: bool = False  # torch.compile the NLL
    seed: int = 0
    checkpoint_every: int = (
        0  # epochs between resumable checkpoints in RUN/checkpoints (0: none; Ctrl-C writes one)
    )
    resume: str | None = None  # a run folder: continue it from its latest checkpoint, to the same end


def train_inverse_dynamics(store_path, out_dir, cfg: IDMTrainConfig, progress: bool = True) -> dict:
    """Fit the IDM on a store's (state, action) episodes; keeps the best held-out epoch."""
    rng = seed_everything(cfg.seed)
    checkpoints = LearnerCheckpoints(out_dir, "idm", cfg)
    data, ends, stats = read_steps(store_path, ["obs/state", "action"])
    episodes = len(ends)
    if not 0.0 < cfg.holdout < 1.0:
        raise ConfigError(f"holdout must be in (0, 1), got {cfg.holdout}")
    if episodes < 2:
        raise DatasetError(f"{store_path}: an IDM needs at least 2 episodes (one held out), found {episodes}")
    windows = state_windows(data["obs/state"].astype(np.float32), ends)
    actions = data["action"].astype(np.float32)
    held = rng.permutation(episodes)[: max(1, int(round(cfg.holdout * episodes)))]
    starts = np.concatenate([[0], ends[:-1]])
    is_held = np.zeros(len(actions), bool)
    for e in held:
        is_held[starts[e] : ends[e]] = True
    train_idx, val_idx = np.flatnonzero(~is_held), np.flatnonzero(is_held)
    model = InverseDynamics(
        IDMConfig(windows.shape[2], actions.shape[1], cfg.hidden, cfg.dropout),
        stats["mean"],
        stats["std"] + 1e-3,
    )
    device = resolve_device(cfg.device)
    model.to(device)
    nll = maybe_compile(model.nll, cfg.compile)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    w, a = (
        torch.as_tensor(windows, device=device),
        torch.as_tensor(actions, device=device),
    )  # small: all on the device
    log = RunLog(out_dir, f"inverse dynamics on {Path(store_path).name}")
    if cfg.select_by not in ("mse", "nll"):
        raise ConfigError(f"select_by must be mse or nll, got {cfg.select_by!r}")
    best, best_state, best_epoch = np.inf, None, -1
    if (state := checkpoints.restore(log, rng)) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        model.updates, best, best_state, best_epoch = (
            state["updates"],
            state["best"],
            state["best_state"],
            state["best_epoch"],
        )
    snapshot = checkpoints.snapshot(
        lambda: {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "updates": model.updates,
            "best": best,
            "best_state": best_state,
            "best_epoch": best_epoch,
        },
        log,
        rng,
    )
    bar = checkpoints.bar(cfg.epochs, "inverse dynamics", "epoch", progress)
    with checkpoints:
        for epoch in bar:
            model.train()
            for batch in np.array_split(rng.permutation(train_idx), max(1, len(train_idx) // cfg.batch_size)):
                loss = nll(w[batch], a[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                model.updates += 1
            val_nll, val_mse = evaluate_inverse_dynamics(model, w[val_idx], a[val_idx])
            log.log(epoch, train_nll=loss.item(), heldout_nll=val_nll, heldout_mse=val_mse)
            score = val_mse if cfg.select_by == "mse" else val_nll
            if score < best:
                best, best_epoch = score, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            bar.set_postfix_str(
                f"held-out nll {val_nll:.3f} mse {val_mse:.4f} (best epoch {best_epoch})", refresh=False
            )
            checkpoints.step_done(epoch + 1, cfg.epochs, snapshot)
    model.load_state_dict(best_state)
    val_nll, val_mse = evaluate_inverse_dynamics(model, w[val_idx], a[val_idx])
    checkpoint = model.save(Path(out_dir) / "checkpoint")  # CPU copies
    return log.close(
        {
            "learner": "inverse_dynamics",
            "store": str(store_path),
            "checkpoint": str(checkpoint),
            "config": asdict(cfg),
            "episodes": episodes,
            "heldout_episodes": len(held),
            "best_epoch": best_epoch,
            "heldout_nll": val_nll,
            "heldout_mse": val_mse,
            "heldout_r2": 1.0 - val_mse / float(a[val_idx].var(0).mean()),
        },
        curves=("train_nll", "heldout_nll", "heldout_mse"),
    )


def evaluate_inverse_dynamics(
    model: InverseDynamics, windows: Tensor, actions: Tensor
) -> tuple[float, float]:
    """(NLL, mean squared error of the clipped mean) on held-out windows, in eval mode."""
    model.eval()
    with torch.no_grad():
        nll = model.nll(windows, actions).item()
        mse = float(((model.predict(windows) - actions) ** 2).mean())
    return nll, mse


def label_actions(store_path, checkpoint, key: str = "action") -> dict:
    """Write the IDM's actions into an action-free store as `key`, with provenance."""
    from robot_rl.datasets.store import EpisodeStore

    model = InverseDynamics.load(checkpoint)
    model.eval()
    start = time.monotonic()
    with EpisodeStore.open(store_path, mode="a") as store:
        if key in store.keys:
            raise DatasetError(
                f"{store_path} already has {key!r}: proxy labels go into action-free stores only"
            )
        if "obs/state" not in store.keys or store.n_steps == 0:
            raise DatasetError(f"{store_path} has no obs/state steps to label")
        states = np.asarray(store.array("obs/state")[: store.n_steps], np.float32)
        if states.shape[1] != model.cfg.state_dim:
            raise DatasetError(
                f"{store_path}: state is {states.shape[1]}-D, "
                f"the IDM at {checkpoint} takes {model.cfg.state_dim}-D"
            )
        windows = torch.as_tensor(state_windows(states, store.episode_ends))
        actions = torch.cat(
            [model.predict(windows[i : i + 8192]) for i in range(0, len(windows), 8192)]
        ).numpy()
        attrs = {
            "source": "robot-rl dataset label-actions",
            "inverse_dynamics": str(checkpoint),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        store.add_key(key, actions.astype(np.float32), attrs)
    return {
        "store": str(store_path),
        "key": key,
        "steps": len(actions),
        "seconds": time.monotonic() - start,
        **attrs,
    }
