"""Builds a simulated env and its scripted expert from an `env` config group entry."""

from __future__ import annotations

from robot_rl.errors import ConfigError

ENVS = ("reach",)


def make_sim_env(cfg, expert_noise: float = 0.0, seed: int | None = None):
    """Return (RobotEnv, expert) for an `env` config entry."""
    if cfg.name == "reach":
        from robot_rl.sim.experts import ReachExpert
        from robot_rl.sim.reach import make_reach_env

        env = make_reach_env(cameras=tuple(cfg.cameras), image_size=int(cfg.image_size), max_steps=int(cfg.max_steps))
        return env, ReachExpert(env.task, noise=expert_noise, seed=seed)
    raise ConfigError(f"unknown env {cfg.name!r}; known: {', '.join(ENVS)}")
