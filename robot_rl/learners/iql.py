"""Implicit Q-Learning (Kostrikov et al.) as CORL's `algorithms/offline/iql.py` has it, on an
EpisodeStore: any of its reward keys, state and image observations.

- V(s) by expectile regression (tau 0.7) toward min(Q1', Q2')(s, a) of the target twin Q; V has
  no target network.
- Q1, Q2 regressed to r + gamma * (1 - d) * V(s').
- The actor by advantage-weighted regression: exp(beta * (min Q' - V)) clipped at 100, times the
  negative log-likelihood of the data's action (Gaussian with a tanh mean and a state-independent
  log-std) or its squared error (deterministic); the actor's learning rate is cosine-annealed.
- States are standardized with the store's mean and std (the statistics travel with the
  checkpoint); soft target updates (0.005).
- Images (optional): the project's small CNN per camera, trained through the Q loss only; V and the actor read
  its features detached, as an encoder shared by every head but owned by the critic.

`beta = 0` makes every weight 1: plain behaviour cloning by the same actor, the baseline IQL is
compared with.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robot_rl.core.env import EnvSource
from robot_rl.datasets.store import EpisodeStore, read_steps
from robot_rl.errors import ConfigError, DatasetError
from robot_rl.learners.evaluate import check_video_setup, interim_videos
from robot_rl.policies.encoders import images_to_float
from robot_rl.policies.iql import IQLAgent, IQLConfig, batch_policy, loop_policy
from robot_rl.utils.checkpoints import LearnerCheckpoints, RngLedger
from robot_rl.utils.device import Prefetcher, maybe_compile, resolve_device
from robot_rl.utils.training import RunLog, note, seed_everything

# --- data ---------------------------------------------------------------------------------------
MEMORY_FRACTION = 0.75  # of the available memory, the default limit of an OfflineDataset
CGROUP = Path("/sys/fs/cgroup")  # a container's memory limit, where cgroup v2 sets one


def available_memory_bytes() -> int:
    """Memory this process can still take: Linux's MemAvailable (free plus reclaimable cache; the
    free pages where it is missing), and no more than a cgroup v2 limit (a container's) leaves."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        available = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        cgroup = CGROUP
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            # memory.current counts page cache the kernel reclaims under the limit (a container that
            # has read big stores is "full" of it): its working set leaves out the inactive file pages.
            stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
            used = int((cgroup / "memory.current").read_text()) - int(stat.get("inactive_file", 0))
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(available, 0)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class OfflineDataset:
    """Every transition of one or more EpisodeStores (a list: their union, e.g. a labeled store
    and one whose actions an inverse-dynamics model supplied), held once in memory: the next
    observation is an index (t + 1), not a copy, so images are not stored twice.

    The reward of step t is `reward_key` at t. With `done_key`, an episode whose last step is
    flagged ends there (mask 0); otherwise (a time limit, or no done key: nothing says the task was
    over) its last step has no next observation and is left out.

    Before reading a step, the bytes this needs are worked out from the stores' schemas (`nbytes`);
    over `max_bytes` (default: MEMORY_FRACTION of the available memory) it refuses with a
    DatasetError rather than let the machine swap or the kernel kill the run halfway through loading.
    """

    def __init__(
        self,
        path,
        reward_key: str = "reward",
        done_key: str | None = "terminated",
        image_keys: tuple[str, ...] = (),
        max_bytes: int | None = None,
    ):
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths:
            raise DatasetError("no episode store given")
        keys = ["obs/state", "action", reward_key, *(f"obs/{k}" for k in image_keys)] + (
            [done_key] if done_key else []
        )
        self.nbytes = self.bytes_needed(paths, keys)
        limit = max_bytes if max_bytes is not None else int(MEMORY_FRACTION * available_memory_bytes())
        if self.nbytes > limit:
            whose = (
                "the configured limit"
                if max_bytes is not None
                else f"{MEMORY_FRACTION:.0%} of the available memory"
            )
            raise DatasetError(
                f"{', '.join(map(str, paths))} needs {_size(self.nbytes)} in memory, over {_size(limit)} "
                f"({whose}): train on fewer episodes or smaller images, or where there is more memory "
                "(learner.max_memory_gb sets the limit)"
            )
        parts, ends, counts, means, variances = [], [], [], [], []
        for p in paths:
            data, store_ends, stats = read_steps(p, keys)
            if parts and any(data[k].shape[1:] != parts[0][k].shape[1:] for k in keys):
                raise DatasetError(
                    f"{p} does not match {paths[0]}: "
                    + ", ".join(
                        f"{k} {data[k].shape[1:]} vs {parts[0][k].shape[1:]}"
                        for k in keys
                        if data[k].shape[1:] != parts[0][k].shape[1:]
                    )
                )
            offset = sum(len(d["action"]) for d in parts)
            parts.append(data)
            ends.append(store_ends + offset)
            counts.append(len(data["action"]))
            means.append(stats["mean"])
            variances.append(stats["std"] ** 2)
        # Key by key, each store's copy let go as soon as it is joined: the union needs one key twice at most.
        self.data = {
            k: np.concatenate([d.pop(k) for d in parts]) if len(parts) > 1 else parts[0][k] for k in keys
        }
        ends = np.concatenate(ends)
        # The union's statistics from each store's (count, mean, variance).
        w = np.asarray(counts, np.float64)[:, None] / sum(counts)
        mean = (w * np.stack(means)).sum(0)
        var = (w * (np.stack(variances) + np.stack(means) ** 2)).sum(0) - mean**2
        self.image_keys = tuple(image_keys)
        self.reward_key, self.done_key = reward_key, done_key
        starts = np.concatenate([[0], ends[:-1]])
        index, mask = [], []
        for start, end in zip(starts, ends):
            done = bool(done_key and self.data[done_key][end - 1])
            stop = end if done else end - 1
            index.append(np.arange(start, stop))
            mask.append(np.ones(stop - start, np.float32))
            if done:
                mask[-1][-1] = 0.0
        self.index, self.mask = np.concatenate(index), np.concatenate(mask)
        if len(self.index) == 0:
            raise DatasetError(f"{', '.join(map(str, paths))} holds no usable transitions")
        self.next_index = np.where(self.mask > 0, self.index + 1, self.index)
        self.state_mean = mean.astype(np.float32)
        self.state_std = (np.sqrt(np.maximum(var, 0.0)) + 1e-3).astype(np.float32)  # CORL's eps
        self.state_dim, self.action_dim = self.data["obs/state"].shape[1], self.data["action"].shape[1]
        self.image_size = self.data[f"obs/{image_keys[0]}"].shape[1] if image_keys else None
        rewards = self.data[reward_key].astype(np.float32)
        if not np.all(np.isfinite(rewards)):
            raise DatasetError(f"{', '.join(map(str, paths))}: {reward_key} holds NaN or inf")
        self.rewards = rewards

    @staticmethod
    def bytes_needed(paths: list, keys: list[str]) -> int:
        """What the dataset will hold, from the stores' schemas: every step of `keys`, per step an
        index, next index, mask and float32 reward, and with several stores the largest key once
        more while they are joined. A key a store lacks counts 0 (reading it names it)."""
        per_key, steps = dict.fromkeys(keys, 0), 0
        for p in paths:
            with EpisodeStore.open(
                p, check_chunks=False
            ) as store:  # metadata only: no chunk is listed or read
                for k in keys:
                    if k in store.schema:
                        spec = store.schema[k]
                        per_key[k] += (
                            store.n_steps * int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
                        )
                steps += store.n_steps
        joining = max(per_key.values()) if len(paths) > 1 else 0
        return sum(per_key.values()) + joining + steps * (8 + 8 + 4 + 4)

    def __len__(self) -> int:
        return len(self.index)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, Tensor]:
        pick = rng.integers(0, len(self.index), n)
        i, j = self.index[pick], self.next_index[pick]
        batch = {
            "obs/state": torch.as_tensor(self.data["obs/state"][i]),
            "next_obs/state": torch.as_tensor(self.data["obs/state"][j]),
            "action": torch.as_tensor(self.data["action"][i], dtype=torch.float32),
            "reward": torch.as_tensor(self.rewards[i]),
            "mask": torch.as_tensor(self.mask[pick]),
        }
        for k in self.image_keys:
            batch[f"obs/{k}"] = images_to_float(self.data[f"obs/{k}"][i])
            batch[f"next_obs/{k}"] = images_to_float(self.data[f"obs/{k}"][j])
        return batch


# --- training -----------------------------------------------------------------------------------
@dataclass
class IQLTrainConfig:
    steps: int = 100_000
    batch_size: int = 256
    reward_key: str = "reward"
    done_key: str | None = "terminated"
    eval_every: int = 0  # steps between interim evaluations (0: only at the end); the best goes to RUN/best
    eval_episodes: int = 100
    eval_num_envs: int = 25
    eval_video: int = 0  # episodes of each interim evaluation written as mp4 in RUN/videos (and to W&B)
    log_every: int = 500
    seed: int = 0
    encoder_init: str | None = None  # V-PTR: an ICVF (or IQL) checkpoint whose image encoder starts this one
    encoder_freeze: bool = False  # keep that encoder fixed (else fine-tuned through Q)
    device: str = "auto"  # auto: CUDA when present (robot_rl.utils.device)
    compile: bool = False  # torch.compile the losses
    max_memory_gb: float | None = None  # refuse a dataset that needs more (None: 3/4 of the available memory)
    checkpoint_every: int = (
        0  # steps between resumable checkpoints in RUN/checkpoints (0: none; Ctrl-C writes one)
    )
    resume: str | None = None  # a run folder: continue it from its latest checkpoint, to the same end
    agent: dict = field(default_factory=dict)  # IQLConfig overrides (expectile, beta, image_keys, ...)


def evaluate_iql(
    agent: IQLAgent, envs: EnvSource, episodes: int, num_envs: int, seed: int = 10_000, progress: bool = False
) -> dict:
    """Success rate of the deterministic actor: on vector envs from state, one env at a time with cameras."""
    from robot_rl.learners.evaluate import evaluate_policy

    agent.eval()
    return evaluate_policy(
        envs,
        None if agent.cfg.image_keys else batch_policy(agent),
        loop_policy(agent),
        episodes,
        num_envs,
        seed,
        progress,
    )


def train_iql(
    store_path, envs: EnvSource | None, out_dir, cfg: IQLTrainConfig, progress: bool = True
) -> dict:
    """IQL (or BC with beta 0) on the stores' transitions; evaluated on `envs` when given."""
    checkpoints = LearnerCheckpoints(out_dir, "iql", cfg)  # a bad resume= is refused before any work
    rng = seed_everything(cfg.seed)
    agent_cfg = dict(cfg.agent)
    image_keys = tuple(agent_cfg.get("image_keys", ()))
    check_video_setup(envs if cfg.eval_every else None, cfg.eval_video, bool(image_keys), "eval_video")
    stores = [str(store_path)] if isinstance(store_path, (str, Path)) else [str(p) for p in store_path]
    data = OfflineDataset(
        stores,
        cfg.reward_key,
        cfg.done_key,
        image_keys,
        max_bytes=None if cfg.max_memory_gb is None else int(cfg.max_memory_gb * 2**30),
    )
    try:
        if data.image_size:  # the cameras' size as recorded; the env evaluated on must render the same
            if agent_cfg.get("image_size") is None:
                agent_cfg["image_size"] = data.image_size
            for what, size in (
                ("agent.image_size", agent_cfg["image_size"]),
                ("the env's image_size", envs.settings.get("image_size") if envs is not None else None),
            ):
                if size is not None and int(size) != data.image_size:
                    raise ConfigError(f"the store's images are {data.image_size} px, {what} says {size}")
        acfg = IQLConfig(
            **{**agent_cfg, "state_dim": data.state_dim, "action_dim": data.action_dim, "steps": cfg.steps}
        )
    except TypeError as exc:
        raise ConfigError(f"bad iql agent settings: {exc}") from None
    agent = IQLAgent(acfg, data.state_mean, data.state_std)
    if cfg.encoder_init:
        from robot_rl.learners.icvf import pretrained_encoder

        agent.init_encoder(
            pretrained_encoder(cfg.encoder_init, acfg.image_keys, acfg.image_size), cfg.encoder_freeze
        )
    device = resolve_device(cfg.device)
    agent.to(device)
    if cfg.compile:
        agent.losses = maybe_compile(agent.losses, True)
    what = "BC (beta 0)" if acfg.beta == 0 else "IQL"
    log = RunLog(
        out_dir, f"{what} on {' + '.join(Path(p).name for p in stores)}, reward {cfg.reward_key} ({device})"
    )
    first, evaluations = checkpoints.start, []
    if (state := checkpoints.restore(log, rng)) is not None:
        agent.load_training_state(state["agent"])
        evaluations = list(state["evaluations"])
    ledger = RngLedger(rng, lambda: data.sample(cfg.batch_size, rng))
    snapshot = checkpoints.snapshot(
        lambda: {"agent": agent.training_state(), "evaluations": evaluations}, log, ledger=ledger
    )

    bar = checkpoints.bar(cfg.steps, what, "step", progress)
    agent.train()
    start = time.monotonic()
    with checkpoints, Prefetcher(ledger.draw, device) as batches:  # closed whatever ends the loop
        for step in bar:
            info = agent.update(ledger.take(batches))
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                log.log(step, **info, updates_per_s=(step + 1 - first) / (time.monotonic() - start))
                bar.set_postfix_str(
                    f"q {info['q_loss']:.4f} v {info['v_loss']:.4f} actor {info['actor_loss']:.3f}",
                    refresh=False,
                )
            if (
                envs is not None
                and cfg.eval_every
                and (step + 1) % cfg.eval_every == 0
                and step + 1 < cfg.steps
            ):
                result = evaluate_iql(agent, envs, cfg.eval_episodes, cfg.eval_num_envs, seed=20_000 + step)
                log.log(step + 1, eval_success_rate=result["success_rate"])
                evaluations.append({"step": step + 1, **result})
                note(f"step {step + 1}: evaluation success {result['success_rate']:.2f}")
                checkpoints.keep_best(result["success_rate"], step + 1, agent.save)
                if cfg.eval_video:
                    interim_videos(envs, batch_policy(agent), cfg.eval_video, 20_000 + step, log, step + 1)
                agent.train()
            checkpoints.step_done(step + 1, cfg.steps, snapshot)
    agent.cpu()  # evaluated (and deployed) on the CPU
    checkpoint = agent.save(Path(out_dir) / "checkpoint")
    final = (
        evaluate_iql(agent, envs, cfg.eval_episodes, cfg.eval_num_envs, progress=progress)
        if envs is not None and cfg.eval_episodes
        else None
    )
    if final:
        log.log(cfg.steps, eval_success_rate=final["success_rate"])
    return log.close(
        {
            "learner": "iql",
            "store": stores[0] if len(stores) == 1 else stores,
            "checkpoint": str(checkpoint),
            "config": asdict(cfg),
            "agent": asdict(acfg),
            "transitions": len(data),
            "evaluation": final,
            "interim_evaluations": evaluations,
        },
        curves=(
            "q_loss",
            "v_loss",
            "actor_loss",
            "adv_mean",
            "adv_std",
            "weights_clipped",
            "eval_success_rate",
        ),
    )
