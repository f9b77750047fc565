"""`robot-rl bench sac`: the SAC/RLPD learner's update rate and the actor's control rate.

1. Learner steps/s at batch 256 (one step = `cta_ratio` 2 critic updates + an actor and temperature
   update, state input 34-D as cube_lift, action 5-D), with critic ensembles of 2 and 10 (REDQ
   subsample 2): the batched ensemble (one call for all members) beside the same ensemble as a
   Python loop over separate MLPs, in the same run. One torch thread.
2. The image learner (HIL-SERL from cameras): learner steps/s with two 84 px cameras and 20-D
   proprioception, batches sampled from the learner's buffers, with the frozen EfficientNet's
   feature maps computed once per frame and stored (`cache_features`, the default) beside the
   backbone run on every sampled batch (the way it ran before, and what a learner that keeps
   frames in its buffer does), in the same run. Batch 256 (16 in --quick).
3. The actor's ControlLoop on cube_lift at 20 Hz with the policy acting every tick: alone, with a
   learner training in another process (a Ray actor, as `dist=ray` runs it), and with the learner
   in a thread of the same process. Achieved rate, period error p50/p99 and overruns.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import torch

from robot_rl.policies.sac import SACAgent, SACConfig
from robot_rl.policies.sac_networks import CriticEnsemble, LoopCriticEnsemble
from robot_rl.utils.dist import ray_session

STATE_DIM, ACTION_DIM, BATCH = 34, 5, 256
RAY_WAIT_S = 300  # a learner process that has not started or stopped by then is an error, not a wait


def _batches(n: int, seed: int = 0, batch: int = BATCH) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "obs": {"state": torch.randn(batch, STATE_DIM, generator=g)},
            "next_obs": {"state": torch.randn(batch, STATE_DIM, generator=g)},
            "action": torch.rand(batch, ACTION_DIM, generator=g) * 2 - 1,
            "prev_action": torch.rand(batch, ACTION_DIM, generator=g) * 2 - 1,
            "reward": torch.rand(batch, generator=g),
            "mask": torch.ones(batch),
        }
        for _ in range(n)
    ]


def _agent(members: int, critic_cls) -> SACAgent:
    cfg = SACConfig(
        STATE_DIM, ACTION_DIM, critic_ensemble=members, critic_subsample=2 if members > 2 else None
    )
    agent = SACAgent(cfg)
    if critic_cls is not CriticEnsemble:  # the same agent with a per-member loop for the critics
        agent.critic = critic_cls(members, STATE_DIM, ACTION_DIM, cfg.hidden)
        agent.target_critic = critic_cls(members, STATE_DIM, ACTION_DIM, cfg.hidden).requires_grad_(False)
        agent.target_critic.load_state_dict(agent.critic.state_dict())
        agent.critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=cfg.critic_lr)
    return agent


def learner_steps_per_s(members: int, critic_cls, seconds: float) -> float:
    agent = _agent(members, critic_cls)
    batches = _batches(agent.cfg.cta_ratio)
    for _ in range(3):
        agent.update(batches)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        agent.update(batches)
        n += 1
    return n / (time.perf_counter() - start)


IMAGE_STATE_DIM, CAMERAS, IMAGE_SIZE = 20, ("image/front", "image/wrist"), 84


def image_spaces() -> dict:
    """The image learner's observation spaces: 20-D proprioception and two 84 px cameras."""
    import gymnasium as gym
    import numpy as np

    return {
        "state": gym.spaces.Box(-1, 1, (IMAGE_STATE_DIM,), np.float32),
        **{k: gym.spaces.Box(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8) for k in CAMERAS},
    }


def image_learner(cache_features: bool, batch: int, device: str | torch.device = "cpu"):
    """HIL-SERL's Learner from cameras, its buffers holding batch + 1 transitions of random frames
    (the backbone's cost does not depend on what they show); the agent on `device`."""
    import numpy as np

    from robot_rl.learners.hil_serl import Learner
    from robot_rl.learners.replay import replay_schema

    cfg = SACConfig(IMAGE_STATE_DIM, ACTION_DIM, image_keys=CAMERAS, cache_features=cache_features)
    learner = Learner(SACAgent(cfg), replay_schema(image_spaces(), ACTION_DIM), 2 * batch, batch)
    learner.agent.to(device)
    rng = np.random.default_rng(0)
    n = batch + 1
    frames = {k: rng.integers(0, 256, (n + 1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for k in CAMERAS}
    learner.insert_batch(
        {
            "obs/state": rng.standard_normal((n, IMAGE_STATE_DIM)).astype(np.float32),
            "next_obs/state": rng.standard_normal((n, IMAGE_STATE_DIM)).astype(np.float32),
            **{f"obs/{k}": f[:-1] for k, f in frames.items()},
            **{f"next_obs/{k}": f[1:] for k, f in frames.items()},
            "action": rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32),
            "prev_action": rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32),
            "reward": np.zeros(n, np.float32),
            "mask": np.ones(n, np.float32),
            "intervened": np.arange(n) % 2 == 0,  # half of them in the prior buffer too
        }
    )
    return learner


def image_learner_steps_per_s(cache_features: bool, batch: int, seconds: float) -> float:
    """HIL-SERL's learner step from cameras, sampling from its buffers. At least two steps are timed."""
    learner = image_learner(cache_features, batch)
    learner.step()
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < seconds:
        learner.step()
        steps += 1
    return steps / (time.perf_counter() - start)


def actor_rate(seconds: float, learner: str) -> dict:
    """The ControlLoop's timing at 20 Hz on cube_lift while a learner trains `learner`: none,
    process (a Ray actor) or thread (same process)."""
    from omegaconf import OmegaConf

    from robot_rl.config import CONF_DIR
    from robot_rl.core import ControlLoop
    from robot_rl.factory import make_sim_env
    from robot_rl.policies.sac import AgentPolicy

    env_cfg = OmegaConf.load(CONF_DIR / "env" / "cube_lift.yaml")
    # Episodes no longer than the run (--quick's 1.5 s run would otherwise wait out a 5 s episode).
    env_cfg = OmegaConf.merge(
        env_cfg, {"cameras": [], "max_steps": min(env_cfg.max_steps, max(1, int(20 * seconds)))}
    )
    env, _ = make_sim_env(env_cfg)
    agent = SACAgent(SACConfig(STATE_DIM, ACTION_DIM))
    stop = threading.Event()
    updates = [0]
    remote = None
    if learner == "thread":

        def train():
            trainer, batches = SACAgent(SACConfig(STATE_DIM, ACTION_DIM)), _batches(2)
            while not stop.is_set():
                trainer.update(batches)
                updates[0] += 1

        worker = threading.Thread(target=train, daemon=True)
        worker.start()
    elif learner == "process":
        import ray

        remote = ray.remote(num_cpus=1)(_BusyLearner).remote()
        ray.get(remote.ready.remote(), timeout=RAY_WAIT_S)
        remote.train.remote()
    loop = ControlLoop(env, AgentPolicy(agent), rate_hz=20.0, execute_k=1)
    start = time.monotonic()
    with env:
        while time.monotonic() - start < seconds:
            loop.run_episode(seed=int(start))
    stop.set()
    report = loop.report()["clock"]
    if remote is not None:
        import ray

        updates[0] = ray.get(remote.stop.remote(), timeout=RAY_WAIT_S)
    loop.close()
    return {
        "learner": learner,
        "achieved_hz": report["achieved_hz"],
        "overruns": report["overruns"],
        "ticks": report["ticks"],
        "period_error_us_p50": report["period_error_us_p50"],
        "period_error_us_p99": report["period_error_us_p99"],
        "learner_updates_per_s": updates[0] / seconds,
    }


class _BusyLearner:
    """A learner process that updates as fast as it can on fixed batches (for the actor-rate run)."""

    def __init__(self):
        torch.set_num_threads(1)
        self.agent, self.batches = SACAgent(SACConfig(STATE_DIM, ACTION_DIM)), _batches(2)
        self.updates, self._stop = 0, threading.Event()

    def ready(self) -> bool:
        return True

    def train(self) -> None:
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.agent.update(self.batches)
            self.updates += 1

    def stop(self) -> int:
        self._stop.set()
        return self.updates


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    seconds = 0.5 if quick else 8.0
    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "batch": BATCH,
        "load_average_1min_at_start": os.getloadavg()[0],
        "learner": [],
    }
    for members in (2, 10):
        batched = learner_steps_per_s(members, CriticEnsemble, seconds)
        looped = learner_steps_per_s(members, LoopCriticEnsemble, seconds)
        results["learner"].append(
            {
                "critics": members,
                "batched_steps_per_s": batched,
                "loop_steps_per_s": looped,
                "batched_over_loop": batched / looped,
            }
        )
    image_batch = 16 if quick else BATCH
    cached = image_learner_steps_per_s(True, image_batch, seconds)
    per_batch = image_learner_steps_per_s(False, image_batch, seconds)
    results["image_learner"] = {
        "batch": image_batch,
        "cameras": list(CAMERAS),
        "image_size": IMAGE_SIZE,
        "cached_steps_per_s": cached,
        "per_batch_steps_per_s": per_batch,
        "cached_over_per_batch": cached / per_batch,
    }
    actor_seconds = 1.5 if quick else 20.0
    try:
        import ray  # noqa: F401  (the learner-in-a-process run needs it)

        session, modes = ray_session("local", num_cpus=2), ["none", "process", "thread"]
    except ImportError:
        session, modes = contextlib.nullcontext(), ["none", "thread"]
    with session:
        results["actor"] = [actor_rate(actor_seconds, mode) for mode in modes]
    results["load_average_1min_at_end"] = os.getloadavg()[0]
    return results


def format_table(r: dict) -> str:
    lines = [
        f"SAC benchmark: torch {r['torch']}, {r['threads']} thread(s), {r['cpu_count']} cores, "
        f"batch {r['batch']}; "
        f"load average {r['load_average_1min_at_start']:.2f} at start, "
        f"{r['load_average_1min_at_end']:.2f} at end",
        "",
        "learner steps/s (2 critic updates + 1 actor update each)",
        f"{'critics':<9}{'batched':>10}{'loop':>10}{'ratio':>8}",
    ]
    for m in r["learner"]:
        lines.append(
            f"{m['critics']:<9}{m['batched_steps_per_s']:>10.1f}{m['loop_steps_per_s']:>10.1f}"
            f"{m['batched_over_loop']:>7.2f}x"
        )
    im = r["image_learner"]
    lines += [
        "",
        f"image learner steps/s, batch {im['batch']}, cameras {', '.join(im['cameras'])} "
        f"at {im['image_size']} px",
        f"{'cached maps':<32}{im['cached_steps_per_s']:>10.2f}",
        f"{'backbone on every batch':<32}{im['per_batch_steps_per_s']:>10.3f}",
        f"{'ratio':<32}{im['cached_over_per_batch']:>9.1f}x",
        "",
        "actor ControlLoop at 20 Hz on cube_lift (policy every tick)",
        f"{'learner':<10}{'Hz':>8}{'p50 us':>10}{'p99 us':>10}{'overruns':>10}{'learner upd/s':>15}",
    ]
    for m in r["actor"]:
        lines.append(
            f"{m['learner']:<10}{m['achieved_hz']:>8.2f}{m['period_error_us_p50']:>10.0f}"
            f"{m['period_error_us_p99']:>10.0f}{m['overruns']:>10}{m['learner_updates_per_s']:>15.1f}"
        )
    return "\n".join(lines)
