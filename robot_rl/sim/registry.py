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


def render_camera(env, name: str, height: int = 240, width: int = 320):
    """A camera of a sim env's scene for `render()`: robot_rl's own MuJoCo scenes (the robot has
    the world) or robosuite's (made with an offscreen context: `offscreen: true` in its config)."""
    world = getattr(env.robot, "world", None)
    if world is not None:
        from robot_rl.sim.world import MujocoCamera

        return MujocoCamera(world, name, height, width)
    from robot_rl.sim.robosuite_adapter import RobosuiteCamera

    return RobosuiteCamera(env.robot, name, height, width)
