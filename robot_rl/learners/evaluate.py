"""Evaluate a diffusion policy, alone or with its residual, on a vector env: success rate over N episodes."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from robot_rl.policies.diffusion import DiffusionPolicy
from robot_rl.policies.residual import BaseChunks, ResidualPolicy, combine, residual_input


@torch.no_grad()
def evaluate(make_vec_env, base: DiffusionPolicy, residual: ResidualPolicy | None = None, episodes: int = 100,
             num_envs: int = 50, seed: int = 10_000, ddim_steps: int | None = None, progress: bool = True) -> dict:
    """Success rate over `episodes` episodes, deterministic for a seed.

    Each env runs a fixed share of the episodes (its first ones): counting the first episodes to
    finish would favour the short ones, and successes end early. The residual acts with its mean.
    Env i starts from seed + i and auto-resets from its own RNG.
    """
    torch.set_num_threads(1)  # see learners.common.seed_everything
    num_envs = min(num_envs, episodes)
    vec = make_vec_env(num_envs)
    steps = ddim_steps or base.config.inference_steps
    chunks = BaseChunks(base, num_envs, steps, seed)
    obs, _ = vec.reset(seed=seed)
    state = torch.as_tensor(obs)
    quota = np.full(num_envs, episodes // num_envs) + (np.arange(num_envs) < episodes % num_envs)
    outcomes, lengths, length = [], [], np.zeros(num_envs, int)
    start = time.monotonic()
    bar = tqdm(total=episodes, desc="evaluate", unit="ep", disable=not progress, dynamic_ncols=True, leave=False)
    while len(outcomes) < episodes:
        base_action = chunks.next(state)
        if residual is None:
            action = base.action_norm.unnormalize(base_action).clamp(-1.0, 1.0)
        else:
            mean = residual.dist(residual_input(base, state, base_action)).mean
            action = combine(base, base_action, mean, residual.config.scale)
        obs, _, terminated, truncated, info = vec.step(action.numpy())
        length += 1
        done = np.flatnonzero(terminated | truncated)
        for i in done:
            if quota[i] > 0:
                quota[i] -= 1
                outcomes.append(bool(info["success"][i]))
                lengths.append(int(length[i]))
                bar.update(1)
        length[done] = 0
        chunks.reset(done)
        state = torch.as_tensor(obs)
    bar.close()
    vec.close()
    return {"episodes": episodes, "success_rate": float(np.mean(outcomes)), "successes": int(np.sum(outcomes)),
            "mean_length": float(np.mean(lengths)), "seconds": time.monotonic() - start, "ddim_steps": steps}
