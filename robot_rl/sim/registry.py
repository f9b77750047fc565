"""Builds a simulated env and its scripted expert from an `env` config entry (robot_rl/conf/env/).

Each env config names a `kind`; the module registered for it provides
`from_config(cfg, expert_noise, seed) -> (RobotEnv, expert)`. Modules are imported only when
their kind is asked for, so an env whose extra is missing breaks nothing else.
"""

from __future__ import annotations

import importlib

from robot_rl.errors import ConfigError

KINDS = {
    "reach": "robot_rl.sim.reach",
    "arm_task": "robot_rl.sim.arm_tasks",
    "rc_car": "robot_rl.sim.rc_car",
    "robosuite": "robot_rl.sim.robosuite_adapter",
}


def make_sim_env(cfg, expert_noise: float = 0.0, seed: int | None = None):
    """Return (RobotEnv, expert) for an `env` config entry."""
    kind = cfg.get("kind", cfg.get("name"))
    if kind not in KINDS:
        raise ConfigError(f"unknown env kind {kind!r}; known: {', '.join(KINDS)}")
    module = importlib.import_module(KINDS[kind])
    return module.from_config(cfg, expert_noise=expert_noise, seed=seed)
