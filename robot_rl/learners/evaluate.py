"""Evaluating a policy: success rate over N episodes, deterministic for a seed, on vector envs
(state policies) or through the ControlLoop (image policies)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from robot_rl.core.env import EnvSource
from robot_rl.policies.diffusion import DiffusionPolicy
from robot_rl.policies.residual import BaseChunks, ResidualPolicy, combine, residual_input

# act(obs, reset): actions (N, A) for the batched obs (N, D); `reset` holds the indices of envs
# whose episode ended on the previous step (empty at the start), so a stateful policy can reset.
BatchPolicy = Callable[[np.ndarray, np.ndarray], np.ndarray]


def run_episodes(
    make_vec_env,
    act: BatchPolicy,
    episodes: int = 100,
    num_envs: int = 50,
    seed: int = 10_000,
    progress: bool = True,
) -> dict:
    """Success rate (and mean return) over `episodes` episodes of `act`, deterministic for a seed.

    Each env runs a fixed share of the episodes (its first ones): counting the first episodes to
    finish would favour the short ones, and successes end early. Env i starts from seed + i and
    auto-resets from its own RNG.
    """
    torch.set_num_threads(1)  # see utils.training.seed_everything
    num_envs = min(num_envs, episodes)
    vec = make_vec_env(num_envs)
    obs, _ = vec.reset(seed=seed)
    quota = np.full(num_envs, episodes // num_envs) + (np.arange(num_envs) < episodes % num_envs)
    outcomes, lengths, returns, length, ret = [], [], [], np.zeros(num_envs, int), np.zeros(num_envs)
    done = np.zeros(0, int)
    start = time.monotonic()
    bar = tqdm(
        total=episodes, desc="evaluate", unit="ep", disable=not progress, dynamic_ncols=True, leave=False
    )
    try:
        while len(outcomes) < episodes:
            obs, reward, terminated, truncated, info = vec.step(act(obs, done))
            length += 1
            ret += reward
            done = np.flatnonzero(terminated | truncated)
            for i in done:
                if quota[i] > 0:
                    quota[i] -= 1
                    outcomes.append(bool(info["success"][i]))
                    lengths.append(int(length[i]))
                    returns.append(float(ret[i]))
                    bar.update(1)
            length[done], ret[done] = 0, 0.0
    finally:
        bar.close()
        vec.close()
    return {
        "episodes": episodes,
        "success_rate": float(np.mean(outcomes)),
        "successes": int(np.sum(outcomes)),
        "mean_length": float(np.mean(lengths)),
        "mean_return": float(np.mean(returns)),
        "seconds": time.monotonic() - start,
    }


def evaluate_policy(
    envs: EnvSource,
    batch_act: BatchPolicy | None,
    loop_act,
    episodes: int,
    num_envs: int,
    seed: int = 10_000,
    progress: bool = False,
    env=None,
) -> dict:
    """Success rate (and mean return) of a policy over `episodes` episodes, deterministic for a
    seed: on the source's vector envs with `batch_act` where both exist (state policies), else
    through the ControlLoop with `loop_act` (obs dict -> action), episode i from seed + i, on `env`
    or on a new env from `envs` (image policies: vector envs are state-only)."""
    if batch_act is not None and envs.make_vec is not None:
        return run_episodes(envs.make_vec, batch_act, episodes, num_envs, seed, progress)
    from robot_rl.core import ControlLoop

    own = env is None
    if own:
        env, _ = envs.make(seed=seed)
    start = time.monotonic()
    loop = ControlLoop(env, loop_act, rate_hz=None, execute_k=1)
    try:
        results = [
            loop.run_episode(seed=seed + i)
            for i in tqdm(range(episodes), desc="evaluate", unit="ep", disable=not progress, leave=False)
        ]
    finally:
        loop.close()
        if own:
            env.close()
    return loop_summary(results, time.monotonic() - start)


def loop_summary(results: list, seconds: float) -> dict:
    """run_episodes' figures for episodes run through the ControlLoop (`EpisodeResult`s)."""
    return {
        "episodes": len(results),
        "success_rate": float(np.mean([r.success for r in results])),
        "successes": int(sum(r.success for r in results)),
        "mean_length": float(np.mean([r.steps for r in results])),
        "mean_return": float(np.mean([r.reward for r in results])),
        "seconds": seconds,
    }


def diffusion_batch_policy(
    base: DiffusionPolicy, residual: ResidualPolicy | None, num_envs: int, ddim_steps: int, seed: int
) -> BatchPolicy:
    """A diffusion policy alone, or with its residual acting with its mean, on `num_envs` envs."""
    chunks = BaseChunks(base, num_envs, ddim_steps, seed)
    device = next(base.parameters()).device  # a learner's selection evaluates on its own device

    @torch.no_grad()
    def act(obs: np.ndarray, reset: np.ndarray) -> np.ndarray:
        chunks.reset(reset)
        state = torch.as_tensor(obs, device=device)
        base_action = chunks.next(state)
        if residual is None:
            return base.action_norm.unnormalize(base_action).clamp(-1.0, 1.0).cpu().numpy()
        mean = residual.dist(residual_input(base, state, base_action)).mean
        return combine(base, base_action, mean, residual.config.scale).cpu().numpy()

    return act


def evaluate_diffusion(
    make_vec_env,
    base: DiffusionPolicy,
    residual: ResidualPolicy | None = None,
    episodes: int = 100,
    num_envs: int = 50,
    seed: int = 10_000,
    ddim_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """A diffusion policy alone, or with its residual acting with its mean."""
    steps = ddim_steps or base.config.inference_steps
    act = diffusion_batch_policy(base, residual, min(num_envs, episodes), steps, seed)
    return {**run_episodes(make_vec_env, act, episodes, num_envs, seed, progress), "ddim_steps": steps}


def record_videos(env, act: BatchPolicy, episodes: int, seed: int, out_dir, fps: float) -> list[str]:
    """Episodes i = 0..episodes-1 of a state policy, reset from seed + i (the seeds the evaluation's
    envs start from), on one env that renders; each an H.264 mp4 named with its outcome and return:
    `episode_000_success_return_1.00.mp4`. A policy that samples (diffusion) draws its own noise
    here, so an episode can end otherwise than the evaluation's from the same seed."""
    from pathlib import Path

    from robot_rl.utils.video import write_video

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        frames, total, reset = [env.render()], 0.0, np.array([0])
        while True:
            action = act(np.asarray(obs["state"], np.float32)[None], reset)[0]
            reset = np.zeros(0, int)
            obs, reward, terminated, truncated, info = env.step(action)
            frames.append(env.render())
            total += float(reward)
            if terminated or truncated:
                break
        outcome = "success" if info.get("success") else "failure"
        path = out_dir / f"episode_{i:03d}_{outcome}_return_{total:.2f}.mp4"
        written.append(str(write_video(np.stack(frames), path, fps)))
    return written


def interim_videos(envs: EnvSource, act: BatchPolicy, episodes: int, seed: int, log, step: int) -> None:
    """The videos of an evaluation inside training, at `step`: into RUN/videos/step_N (RUN: the
    RunLog's folder), and to the log (W&B, when it logs there)."""
    folder = log.dir / "videos" / f"step_{step:09d}"
    log.videos(step, evaluation_videos(envs, act, episodes, seed, folder))


def evaluation_videos(envs: EnvSource, act: BatchPolicy, episodes: int, seed: int, out_dir) -> list[str]:
    """`record_videos` on one env of `envs`, rendered by its config's render_camera."""
    env, _ = envs.make(seed=seed, render=True)
    try:
        return record_videos(env, act, episodes, seed, out_dir, env.metadata["render_fps"])
    finally:
        env.close()


def check_video_setup(envs: EnvSource | None, episodes: int, image_agent: bool, setting: str) -> None:
    """Refuse, before any work, the evaluation videos a `setting` asks for that could not be made."""
    from robot_rl.errors import ConfigError

    if not episodes:
        return
    if envs is None:
        raise ConfigError(f"{setting}= records evaluations on an env; this run has none")
    if image_agent:
        raise ConfigError(f"{setting}= records state policies; this agent reads cameras")
    if not envs.settings.get("render_camera"):
        raise ConfigError(f"{setting}= renders the env's render_camera; env {envs.name} names none")
