"""Learned success reward (HIL-SERL): a binary classifier on camera frames, and the env wrapper
that turns its probability into reward 1 and the end of the episode.

The classifier is the frozen pretrained backbone, a trainable spatial-embedding head per camera,
Dense 256, dropout, LayerNorm, ReLU and one logit, trained with binary cross-entropy (Adam 1e-4)
on frames labelled during collection: a frame is a success where its step's reward is positive
(in sim the task's success; on a robot, the step the operator marked with the success key), a
failure otherwise. The backbone being frozen, each frame is encoded once before training and the
head trains on the stored feature maps (policies.encoders.FrameFeatures).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from robot_rl.errors import ConfigError, DatasetError
from robot_rl.policies.encoders import (
    FrameFeatures,
    PretrainedEfficientNet,
    SpatialLearnedEmbeddings,
    WithFrozenBackbone,
)


@dataclass
class ClassifierConfig:
    image_keys: tuple[str, ...] = ("image/front",)  # obs keys (without "obs/")
    image_size: int = 84
    image_features: int = 8
    dropout: float = 0.1
    threshold: float = 0.85  # probability above which the frame counts as success

    def __post_init__(self):
        self.image_keys = tuple(self.image_keys)
        if not self.image_keys:
            raise ConfigError("a reward classifier needs at least one camera (image_keys)")


class RewardClassifier(WithFrozenBackbone):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = [PretrainedEfficientNet()]  # frozen; not a submodule, so never saved or trained
        self.features = FrameFeatures(self.backbone[0])
        side = self.backbone[0].feature_size(cfg.image_size)
        c = PretrainedEfficientNet.out_channels
        self.heads = nn.ModuleList(
            SpatialLearnedEmbeddings(c, side, side, cfg.image_features) for _ in cfg.image_keys
        )
        self.mlp = nn.Sequential(
            nn.Linear(c * cfg.image_features * len(cfg.image_keys), 256),
            nn.Dropout(cfg.dropout),
            nn.LayerNorm(256),
            nn.ReLU(),
            nn.Linear(256, 1),
        )

    def logits(self, maps: dict[str, Tensor]) -> Tensor:
        """maps: obs key -> (B, C, h, w) feature maps of its frames (`maps`; on any device)."""
        device = self.mlp[0].weight.device
        features = [head(maps[k].to(device)) for k, head in zip(self.cfg.image_keys, self.heads)]
        return self.mlp(torch.cat(features, -1)).squeeze(-1)

    def maps(self, frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """obs key -> (B, H, W, 3) uint8 frames, as float16 feature maps (each frame encoded once)."""
        return {k: self.features(np.asarray(frames[k])) for k in self.cfg.image_keys}

    @torch.no_grad()
    def probability(self, obs: dict[str, np.ndarray]) -> float:
        """Success probability of one observation (uint8 HWC images under their obs keys)."""
        self.eval()
        maps = self.maps({k: np.asarray(obs[k])[None] for k in self.cfg.image_keys})
        return float(torch.sigmoid(self.logits(_tensors(maps)))[0].cpu())

    def save(self, directory, meta: dict | None = None) -> Path:
        from robot_rl.policies.checkpoint import save_checkpoint

        return save_checkpoint(directory, self, "reward_classifier", asdict(self.cfg), **(meta or {}))

    @classmethod
    def load(cls, directory) -> RewardClassifier:
        from robot_rl.policies.checkpoint import load_checkpoint, rebuilding

        meta, weights = load_checkpoint(directory, "reward_classifier")
        with rebuilding(directory, "reward_classifier"):
            model = cls(ClassifierConfig(**meta["config"]))
            model.load_state_dict(weights)
        return model.eval()


def _tensors(maps: dict[str, np.ndarray], index=slice(None)) -> dict[str, Tensor]:
    return {k: torch.as_tensor(m[index], dtype=torch.float32) for k, m in maps.items()}


def labelled_frames(
    store_path, image_keys: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(frames per key, labels, episode index of each frame) from an EpisodeStore."""
    from robot_rl.datasets import EpisodeStore

    with EpisodeStore.open(store_path) as store:
        keys = [f"obs/{k}" for k in image_keys]
        absent = [k for k in keys + ["reward"] if k not in store.keys]
        if absent:
            raise DatasetError(f"{store_path} lacks {', '.join(absent)} (record it with those cameras)")
        frames = {k: store.array(f"obs/{k}")[:] for k in image_keys}
        labels = store.array("reward")[:] > 0
        episode = np.repeat(np.arange(store.n_episodes), store.episode_lengths)
    return frames, labels, episode


@dataclass
class ClassifierTrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-4
    holdout: float = 0.2  # fraction of episodes held out for the accuracy figure
    device: str = "auto"  # auto: CUDA when present (robot_rl.utils.device)
    compile: bool = False  # torch.compile the logits
    seed: int = 0
    checkpoint_every: int = (
        0  # steps between resumable checkpoints in RUN/checkpoints (0: none; Ctrl-C writes one)
    )
    resume: str | None = None  # a run folder: continue it from its latest checkpoint, to the same end
    classifier: dict | None = None  # ClassifierConfig overrides


def train_reward_classifier(store_path, out_dir, cfg: ClassifierTrainConfig, progress: bool = True) -> dict:
    """BCE on balanced batches (half successes, half failures: successes are the rarer frames),
    episodes split into train and held-out; writes the checkpoint, results.json and curve.png."""
    from robot_rl.utils.checkpoints import LearnerCheckpoints
    from robot_rl.utils.training import RunLog, seed_everything

    rng = seed_everything(cfg.seed)
    checkpoints = LearnerCheckpoints(out_dir, "reward_classifier", cfg)
    ccfg = ClassifierConfig(**(cfg.classifier or {}))
    frames, labels, episode = labelled_frames(store_path, ccfg.image_keys)
    episodes = rng.permutation(episode.max() + 1)
    held = (
        set(episodes[: max(1, int(round(cfg.holdout * len(episodes))))].tolist())
        if len(episodes) > 1
        else set()
    )
    test = np.isin(episode, list(held))
    train_pos, train_neg = np.flatnonzero(labels & ~test), np.flatnonzero(~labels & ~test)
    if len(train_pos) == 0 or len(train_neg) == 0:
        raise DatasetError(
            f"{store_path} needs both success and failure frames to train a classifier "
            f"(has {int(labels.sum())} successes, {int((~labels).sum())} failures)"
        )
    from robot_rl.utils.device import maybe_compile, resolve_device

    device = resolve_device(cfg.device)
    model = RewardClassifier(ccfg).to(device)
    frames = model.maps(frames)  # the frames as feature maps from here on
    logits = maybe_compile(model.logits, cfg.compile)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    log = RunLog(out_dir, f"reward classifier on {Path(store_path).name}")
    loss_fn = nn.BCEWithLogitsLoss()
    half = cfg.batch_size // 2
    if (state := checkpoints.restore(log, rng)) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    snapshot = checkpoints.snapshot(
        lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, log, rng
    )
    model.train()
    bar = checkpoints.bar(cfg.steps, "reward classifier", "step", progress)
    with checkpoints:
        for step in bar:
            index = np.concatenate(
                [rng.choice(train_pos, half), rng.choice(train_neg, cfg.batch_size - half)]
            )
            target = torch.as_tensor(labels[index], dtype=torch.float32, device=device)
            loss = loss_fn(logits(_tensors(frames, index)), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 50 == 0 or step == cfg.steps - 1:
                log.log(step, loss=loss.item())
            checkpoints.step_done(step + 1, cfg.steps, snapshot)
    accuracy = _accuracy(model, frames, labels, episode, test, ccfg) if test.any() else None
    checkpoint = model.save(Path(out_dir) / "checkpoint", {"dataset": str(store_path), "heldout": accuracy})
    return log.close(
        {
            "learner": "reward_classifier",
            "checkpoint": str(checkpoint),
            "frames": int(len(labels)),
            "successes": int(labels.sum()),
            "heldout": accuracy,
        },
        curves=("loss",),
    )


@torch.no_grad()
def _accuracy(model: RewardClassifier, maps, labels, episode, test, ccfg: ClassifierConfig) -> dict:
    """Per-frame rates on the held-out episodes, and when the reward would end each one: the
    first frame above the threshold against the first labelled success, in steps (negative:
    early). The env ends an episode at that first frame, so its timing is the reward's error."""
    model.eval()
    index = np.flatnonzero(test)
    probs = []
    for start in range(0, len(index), 256):
        chunk = index[start : start + 256]
        probs.append(torch.sigmoid(model.logits(_tensors(maps, chunk))).cpu().numpy())
    predicted = np.concatenate(probs) > ccfg.threshold
    truth = labels[index]
    onsets, false_ends, missed = [], 0, 0
    for e in np.unique(episode[index]):
        mine = episode[index] == e
        fired, true = np.flatnonzero(predicted[mine]), np.flatnonzero(truth[mine])
        if len(true) and len(fired):
            onsets.append(int(fired[0] - true[0]))
        false_ends += int(len(fired) > 0 and not len(true))
        missed += int(len(true) > 0 and not len(fired))
    return {
        "frames": int(len(index)),
        "accuracy": float(np.mean(predicted == truth)),
        "true_positive_rate": float(predicted[truth].mean()) if truth.any() else None,
        "false_positive_rate": float(predicted[~truth].mean()) if (~truth).any() else None,
        "episodes": int(len(np.unique(episode[index]))),
        "onset_steps": {"min": min(onsets), "mean": float(np.mean(onsets)), "max": max(onsets)}
        if onsets
        else None,
        "episodes_ended_without_success": false_ends,
        "successes_missed": missed,
    }


class ClassifierRewardEnv:
    """A RobotEnv whose reward and success come from a reward classifier: reward 1 and the end of
    the episode when the success probability of the current frame exceeds the threshold; 0 and
    the time limit otherwise. Everything else is the wrapped env's (it works in the ControlLoop,
    which calls `apply_action`, `observe` and `evaluate` one by one, and as a gymnasium env)."""

    def __init__(self, env, classifier: RewardClassifier, threshold: float | None = None):
        missing = [k for k in classifier.cfg.image_keys if k not in env.observation_space.spaces]
        if missing:
            raise ConfigError(f"the reward classifier needs cameras {missing}, which this env does not have")
        self.env, self.classifier = env, classifier
        self.threshold = classifier.cfg.threshold if threshold is None else threshold
        self.last_probability = 0.0
        self.task_success = False  # the task's own verdict this episode (in sim: how far to trust the reward)
        self._obs: dict | None = None

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._obs, self.task_success = obs, False
        return obs, info

    def observe(self):
        self._obs = self.env.observe()
        return self._obs

    def evaluate(self):
        _, _, _, info = self.env.evaluate()  # the task's own verdict is kept in info, not used
        self.task_success = self.task_success or bool(info.get("success"))
        self.last_probability = self.classifier.probability(self._obs)
        success = self.last_probability > self.threshold
        truncated = not success and self.env.steps >= self.env.task.max_steps
        info = {
            **info,
            "task_success": info.get("success"),
            "success": success,
            "reward_probability": self.last_probability,
        }
        return float(success), success, truncated, info

    def step(self, action):
        self.apply_action(action)
        obs = self.observe()
        reward, terminated, truncated, info = self.evaluate()
        return obs, reward, terminated, truncated, info

    def __enter__(self):
        self.env.connect()
        return self

    def __exit__(self, *exc):
        self.env.close()
