"""A VectorEnv whose envs live in Ray actors: N envs split over W rollout workers, each a local
VectorEnv of its share, stepped together. It is a drop-in for VectorEnv(N) — PPO and evaluation
batch their policy over all N envs here, in the driver (where the GPU is) — and it runs the same
episodes: env i is seeded seed + i and auto-resets from its own RNG wherever it lives, so the
results do not depend on the number of workers.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from robot_rl.errors import ConfigError


class RolloutWorker:
    """One Ray actor's share of the envs."""

    def __init__(self, env_cfg: dict, num_envs: int):
        import torch
        from omegaconf import OmegaConf

        from robot_rl.sim.vector import make_vector_env

        torch.set_num_threads(1)
        self.vec = make_vector_env(OmegaConf.create(env_cfg), num_envs, threads=1)  # one core per worker

    def spaces(self):
        return self.vec.single_observation_space, self.vec.single_action_space

    def reset(self, seed):
        return self.vec.reset(seed=seed)[0]

    def step(self, actions):
        return self.vec.step(actions)

    def episode_state(self):
        return self.vec.episode_state()

    def restore(self, states):
        return self.vec.restore(states)

    def close(self):
        self.vec.close()


class RayVectorEnv(gym.vector.VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, env_cfg, num_envs: int, workers: int):
        import ray
        from omegaconf import OmegaConf

        if not 1 <= workers <= num_envs:
            raise ConfigError(f"workers must be between 1 and num_envs ({num_envs}), got {workers}")
        sizes = [len(part) for part in np.array_split(np.arange(num_envs), workers)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        cfg = OmegaConf.to_container(OmegaConf.merge(env_cfg, {"cameras": []}), resolve=True)
        # A core per worker where the cluster has them; more workers than cores share (a 4-worker
        # evaluation on 2 cores still runs, each worker on half a core).
        cpus = min(1.0, ray.cluster_resources().get("CPU", 1.0) / workers)
        remote = ray.remote(num_cpus=cpus)(RolloutWorker)
        self.workers = [remote.remote(cfg, n) for n in sizes]
        self._ray = ray
        self.num_envs = num_envs
        try:
            self.single_observation_space, self.single_action_space = ray.get(self.workers[0].spaces.remote())
        except BaseException:
            for w in self.workers:  # the env could not be built: no actor is left behind
                ray.kill(w)
            raise
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.render_mode = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        parts = self._ray.get(
            [
                w.reset.remote(None if seed is None else seed + int(off))
                for w, off in zip(self.workers, self.offsets)
            ]
        )
        return np.concatenate(parts), {}

    def step(self, actions):
        actions = np.asarray(actions, np.float32)
        if actions.shape != self.action_space.shape:
            raise ValueError(f"actions have shape {actions.shape}, expected {self.action_space.shape}")
        parts = self._ray.get(
            [w.step.remote(actions[a:b]) for w, a, b in zip(self.workers, self.offsets, self.offsets[1:])]
        )
        obs, rewards, terminated, truncated = (np.concatenate([p[k] for p in parts]) for k in range(4))
        infos = {key: np.concatenate([p[4][key] for p in parts]) for key in parts[0][4]}
        return obs, rewards, terminated, truncated, infos

    def episode_state(self) -> list[dict]:
        """Each env's episode, as VectorEnv.episode_state gives it (for a training checkpoint)."""
        return [s for part in self._ray.get([w.episode_state.remote() for w in self.workers]) for s in part]

    def restore(self, states: list[dict]) -> np.ndarray:
        if len(states) != self.num_envs:
            raise ValueError(f"{len(states)} env states for {self.num_envs} envs")
        parts = self._ray.get(
            [w.restore.remote(states[a:b]) for w, a, b in zip(self.workers, self.offsets, self.offsets[1:])]
        )
        return np.concatenate(parts)

    def close(self, **kwargs):
        try:
            self._ray.get([w.close.remote() for w in self.workers])
        finally:
            for w in self.workers:
                self._ray.kill(w)
        self.closed = True


def vector_env_factory(env_cfg, dist: str = "none", workers: int = 1):
    """make_vec_env(n) for a learner or an evaluation: a local VectorEnv, or (dist local / ray)
    a RayVectorEnv over `workers` rollout workers (Ray must be running: robot_rl.utils.dist.ray_session)."""
    from robot_rl.sim.vector import make_vector_env
    from robot_rl.utils.dist import check_dist

    if check_dist(dist) == "none":
        return lambda n: make_vector_env(env_cfg, n)
    if int(workers) < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    return lambda n: RayVectorEnv(env_cfg, n, min(int(workers), n))
