"""A reward model learned from preference labels (RL-VLM-F, PEBBLE): an ensemble of 3 networks
with tanh-bounded outputs, trained with the Bradley-Terry cross-entropy, and the relabeling that
writes its reward into an EpisodeStore as a new key.

P(segment a preferred over b) = sigmoid(sum_t r(a_t) - sum_t r(b_t)); label 0 means the first is
better. Input: the state vector (an MLP, 3 x 256) or a camera (RL-VLM-F's CNN: channels 16/32/64/128,
kernels 5/3/3/3, strides 3/2/2/2). Each member has its own initialization and batch order; the
reward is the ensemble mean. The weights kept are those of the epoch with the best held-out
accuracy (labels from a VLM are noisy, and the networks go on to memorize the noise).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robot_rl.errors import ConfigError, DatasetError
from robot_rl.policies.checkpoint import load_checkpoint, rebuilding, save_checkpoint
from robot_rl.policies.encoders import images_to_float
from robot_rl.utils.checkpoints import LearnerCheckpoints
from robot_rl.utils.training import RunLog, seed_everything


@dataclass
class RewardModelConfig:
    input_key: str = "obs/state"  # obs/state (MLP) or an image key such as obs/image/front (CNN)
    input_shape: tuple[int, ...] = ()  # from the store
    ensemble: int = 3
    hidden: int = 256
    state_mean: tuple[float, ...] = ()  # standardization of a state input, from the store
    state_std: tuple[float, ...] = ()

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3


MIN_IMAGE_SIZE = 47  # the smallest side conv_trunk leaves at least one pixel of


def conv_trunk() -> nn.Sequential:
    """RL-VLM-F's reward CNN: channels 16/32/64/128, kernels 5/3/3/3, strides 3/2/2/2, flattened."""
    layers: list[nn.Module] = []
    channels = 3
    for out, kernel, stride in zip((16, 32, 64, 128), (5, 3, 3, 3), (3, 2, 2, 2)):
        layers += [nn.Conv2d(channels, out, kernel, stride), nn.LeakyReLU()]
        channels = out
    return nn.Sequential(*layers, nn.Flatten())


class RewardMember(nn.Module):
    def __init__(self, cfg: RewardModelConfig):
        super().__init__()
        if cfg.is_image:
            if min(cfg.input_shape[:2]) < MIN_IMAGE_SIZE:
                raise ConfigError(
                    f"{cfg.input_key} has {cfg.input_shape[0]}x{cfg.input_shape[1]} frames: RL-VLM-F's "
                    f"reward CNN needs at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}"
                )
            trunk = conv_trunk()
            with torch.no_grad():
                flat = trunk(torch.zeros(1, 3, *cfg.input_shape[:2])).shape[-1]
            self.net = nn.Sequential(trunk, nn.Linear(flat, 1))
        else:
            d, h = int(np.prod(cfg.input_shape)), cfg.hidden
            self.net = nn.Sequential(
                nn.Linear(d, h),
                nn.LeakyReLU(),
                nn.Linear(h, h),
                nn.LeakyReLU(),
                nn.Linear(h, h),
                nn.LeakyReLU(),
                nn.Linear(h, 1),
            )

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.net(x)).squeeze(-1)


class PreferenceRewardModel(nn.Module):
    def __init__(self, cfg: RewardModelConfig):
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(RewardMember(cfg) for _ in range(cfg.ensemble))
        if not cfg.is_image:
            d = int(np.prod(cfg.input_shape))
            self.register_buffer("mean", torch.as_tensor(cfg.state_mean or np.zeros(d), dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(cfg.state_std or np.ones(d), dtype=torch.float32))

    def prepare(self, raw: np.ndarray) -> Tensor:
        """Stored values (a batch of states, or uint8 HWC frames) as network input."""
        device = next(self.parameters()).device
        if self.cfg.is_image:
            return images_to_float(raw).to(device)
        return (torch.as_tensor(np.asarray(raw), dtype=torch.float32, device=device) - self.mean) / self.std

    def member_rewards(self, x: Tensor) -> Tensor:
        """(members, B) rewards in (-1, 1)."""
        return torch.stack([m(x) for m in self.members])

    @torch.no_grad()
    def reward(self, raw: np.ndarray, batch: int = 1024) -> np.ndarray:
        """The ensemble-mean reward of each stored value."""
        self.eval()
        out = [
            self.member_rewards(self.prepare(raw[i : i + batch])).mean(0) for i in range(0, len(raw), batch)
        ]
        return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)

    def save(self, directory, **meta) -> Path:
        return save_checkpoint(directory, self, "preference_reward", asdict(self.cfg), **meta)

    @classmethod
    def load(cls, directory) -> tuple[PreferenceRewardModel, dict]:
        meta, weights = load_checkpoint(directory, "preference_reward")
        cfg = meta["config"]
        with rebuilding(directory, "preference_reward"):
            model = cls(
                RewardModelConfig(
                    **{
                        **cfg,
                        "input_shape": tuple(cfg["input_shape"]),
                        "state_mean": tuple(cfg["state_mean"]),
                        "state_std": tuple(cfg["state_std"]),
                    }
                )
            )
            model.load_state_dict(weights)
        return model.eval(), meta


def bradley_terry_loss(sum_a: Tensor, sum_b: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the BT preference: label 0 = a preferred, 1 = b preferred. (..., B) sums."""
    logits = torch.stack([sum_a, sum_b], -1)
    return F.cross_entropy(logits.reshape(-1, 2), labels.expand(sum_a.shape).reshape(-1))


def bt_accuracy(sum_a: Tensor, sum_b: Tensor, labels: Tensor) -> Tensor:
    return ((sum_b > sum_a).long() == labels).float().mean()


@dataclass
class RewardModelTrainConfig:
    labels: str | None = None  # the labels file of `robot-rl label vlm`
    input_key: str = "obs/state"
    ensemble: int = 3
    hidden: int = 256
    epochs: int = 200
    batch_size: int = 64
    lr: float = 3e-4
    holdout: float = 0.1  # share of labels held out for accuracy
    keep_best: bool = True  # keep the weights of the epoch with the best held-out accuracy:
    # with noisy labels the network goes on to memorize the noise
    device: str = "auto"  # auto: CUDA when present (robot_rl.utils.device)
    compile: bool = False  # torch.compile the members' forward
    seed: int = 0
    checkpoint_every: int = (
        0  # epochs between resumable checkpoints in RUN/checkpoints (0: none; Ctrl-C writes one)
    )
    resume: str | None = None  # a run folder: continue it from its latest checkpoint, to the same end


def load_labels(path) -> dict:
    try:
        labels = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetError(f"no labels file at {path}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not a labels file ({exc})") from None
    if not {"pairs", "labels", "pair_config"} <= set(labels):
        raise DatasetError(f"{path} is not a labels file of robot-rl label vlm")
    if not labels["labels"]:
        raise DatasetError(f"{path} holds no labels (every pair was dropped: see its report)")
    return labels


def train_reward_model(store_path, out_dir, cfg: RewardModelTrainConfig, progress: bool = True) -> dict:
    """Bradley-Terry on the labels of one store; held-out accuracy per member and of the ensemble."""
    from robot_rl.datasets.store import EpisodeStore
    from robot_rl.utils.device import maybe_compile, resolve_device

    if not cfg.labels:
        raise ConfigError("reward_model needs learner.labels=FILE (from robot-rl label vlm)")
    rng = seed_everything(cfg.seed)
    checkpoints = LearnerCheckpoints(out_dir, "reward_model", cfg)
    labels = load_labels(cfg.labels)
    segment = int(labels["pair_config"]["segment"])
    with EpisodeStore.open(store_path) as store:
        values = np.asarray(store.array(cfg.input_key)[: store.n_steps])
        stats = None if cfg.input_key in store.image_keys() else store.stats(cfg.input_key)
    pairs = np.asarray(labels["pairs"], np.int64)
    if pairs.max() + segment > len(values):
        raise DatasetError(f"{cfg.labels} refers to steps beyond {store_path}: labels of another store?")
    y = torch.as_tensor(labels["labels"], dtype=torch.long)
    model = PreferenceRewardModel(
        RewardModelConfig(
            input_key=cfg.input_key,
            input_shape=tuple(values.shape[1:]),
            ensemble=cfg.ensemble,
            hidden=cfg.hidden,
            state_mean=tuple(stats["mean"].ravel().tolist()) if stats else (),
            state_std=tuple((stats["std"].ravel() + 1e-3).tolist()) if stats else (),
        )
    )
    device = resolve_device(cfg.device)
    model.to(device)
    if cfg.compile:
        for member in model.members:
            member.forward = maybe_compile(member.forward, True)
    y = y.to(device)
    order = rng.permutation(len(y))
    n_val = int(round(cfg.holdout * len(y)))
    val, train = order[:n_val], order[n_val:]
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    offsets = np.arange(segment)

    def segment_sums(index: np.ndarray, member: int | None = None) -> tuple[Tensor, Tensor]:
        """Summed rewards of each pair's two segments: (members, B) twice, or (B,) for one member."""
        steps = pairs[index][:, :, None] + offsets  # (B, 2, segment)
        x = model.prepare(values[steps.reshape(-1)])
        r = model.member_rewards(x) if member is None else model.members[member](x)
        r = r.reshape(*r.shape[:-1], len(index), 2, segment).sum(-1)
        return r[..., 0], r[..., 1]

    log = RunLog(out_dir, f"preference reward model on {Path(store_path).name}")
    member_rngs = [np.random.default_rng(cfg.seed * 1000 + m) for m in range(cfg.ensemble)]
    best = (-1.0, -1, None)  # held-out accuracy, epoch, weights
    if (state := checkpoints.restore(log, rng)) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best = state["best"]
        for r, member_state in zip(member_rngs, state["member_rngs"]):
            r.bit_generator.state = member_state
    snapshot = checkpoints.snapshot(
        lambda: {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best": best,
            "member_rngs": [r.bit_generator.state for r in member_rngs],
        },
        log,
        rng,
    )
    bar = checkpoints.bar(cfg.epochs, "reward model", "epoch", progress)
    with checkpoints:
        for epoch in bar:
            model.train()
            # Each member sees the training labels in its own order: one batch holds a different
            # mini-batch for every member, stacked along the ensemble axis.
            orders = [r.permutation(train) for r in member_rngs]
            for start in range(0, len(train), cfg.batch_size):
                index = [o[start : start + cfg.batch_size] for o in orders]
                loss = 0.0
                for m, idx in enumerate(index):
                    a, b = segment_sums(idx, m)
                    loss = loss + bradley_terry_loss(a, b, y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss = loss.item()
            val_acc = _accuracy(model, segment_sums, val, y) if n_val else {}
            if val_acc and val_acc["ensemble"] > best[0]:
                best = (val_acc["ensemble"], epoch, copy.deepcopy(model.state_dict()))
            if epoch % 10 == 0 or epoch == cfg.epochs - 1:
                train_acc = _accuracy(model, segment_sums, train, y)
                log.log(
                    epoch,
                    loss=loss / cfg.ensemble,
                    train_accuracy=train_acc["ensemble"],
                    **({"heldout_accuracy": val_acc["ensemble"]} if val_acc else {}),
                )
                bar.set_postfix_str(
                    f"loss {loss / cfg.ensemble:.3f} held-out {val_acc.get('ensemble', float('nan')):.3f}",
                    refresh=False,
                )
            checkpoints.step_done(epoch + 1, cfg.epochs, snapshot)
    if cfg.keep_best and best[2] is not None:
        model.load_state_dict(best[2])
    checkpoint = model.save(
        Path(out_dir) / "checkpoint",
        labels=str(cfg.labels),
        label_count=int(len(y)),
        vlm_model=labels.get("model"),
        prompt_id=labels.get("prompt_id"),
        store=str(store_path),
    )
    return log.close(
        {
            "learner": "reward_model",
            "checkpoint": str(checkpoint),
            "config": asdict(cfg),
            "labels": len(y),
            "kept_epoch": best[1] if cfg.keep_best and best[2] is not None else cfg.epochs - 1,
            "train_accuracy": _accuracy(model, segment_sums, train, y),
            "heldout_accuracy": _accuracy(model, segment_sums, val, y) if n_val else None,
        },
        curves=("loss", "train_accuracy", "heldout_accuracy"),
    )


@torch.no_grad()
def _accuracy(model, segment_sums, index: np.ndarray, y: Tensor, chunk: int = 256) -> dict:
    """Held-out (or training) accuracy per member and of the ensemble, `chunk` pairs at a time: the
    whole training set of a camera model at once would be gigabytes of float frames."""
    model.eval()
    sums = [segment_sums(index[i : i + chunk]) for i in range(0, len(index), chunk)]
    a, b = (torch.cat([s[k] for s in sums], -1) for k in (0, 1))
    out = {f"member_{m}": float(bt_accuracy(a[m], b[m], y[index])) for m in range(a.shape[0])}
    out["ensemble"] = float(bt_accuracy(a.mean(0), b.mean(0), y[index]))
    return out


def relabel_store(store_path, checkpoint, key: str = "reward_vlm") -> dict:
    """Write the model's reward as `key`: step t gets the ensemble mean at the next observation
    (t + 1; an episode's last step, at its own). Provenance in the key's attributes; every
    existing key is left as it was."""
    from robot_rl.datasets.store import EpisodeStore

    model, meta = PreferenceRewardModel.load(checkpoint)
    with EpisodeStore.open(store_path, mode="a") as store:
        if key in store.keys:
            raise DatasetError(f"{store_path} already has {key!r}; relabel into a new key (--key)")
        values = store.array(model.cfg.input_key)
        ends = store.episode_ends
        nxt = np.arange(store.n_steps) + 1
        nxt[ends - 1] = ends - 1
        rewards = np.concatenate(
            [model.reward(np.asarray(values[i : i + 4096])) for i in range(0, store.n_steps, 4096)]
        )
        rewards = rewards[nxt].astype(np.float32)
        attrs = {
            "source": "robot-rl dataset relabel",
            "reward_model": str(checkpoint),
            "input_key": model.cfg.input_key,
            "labels": meta.get("labels"),
            "label_count": meta.get("label_count"),
            "vlm_model": meta.get("vlm_model"),
            "prompt_id": meta.get("prompt_id"),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        store.add_key(key, rewards, attrs)
    return {
        "store": str(store_path),
        "key": key,
        "steps": len(rewards),
        "mean": float(rewards.mean()),
        "min": float(rewards.min()),
        "max": float(rewards.max()),
        **attrs,
    }
