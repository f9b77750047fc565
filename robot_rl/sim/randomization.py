"""Domain randomization for sim-to-real work, as RobotEnv hooks configured per task.

Model parameters (friction, masses, actuator gains, camera poses, lights) are re-sampled at every
reset around the values the model was built with; observation noise, actuation noise and action
latency act on each step. Each env owns its MjModel, so envs of a vector env are randomized independently.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import mujoco
import numpy as np

from robot_rl.core.env import EnvHook
from robot_rl.errors import ConfigError


@dataclass
class RandomizationConfig:
    friction: tuple[float, float] | None = None  # scale range of every geom's sliding friction
    mass: tuple[float, float] | None = None  # scale range of every body's mass
    actuator_gain: tuple[float, float] | None = None  # scale range of position-servo stiffness
    camera_pos_m: float | None = None  # std of a camera's position offset, metres
    camera_angle_rad: float | None = None  # std of a camera's rotation about each axis
    light: tuple[float, float] | None = None  # scale range of light intensity (diffuse)
    obs_noise: float | None = None  # std of Gaussian noise on the state vector
    action_latency: int = 0  # the robot executes the command given this many steps earlier
    action_noise: float | None = None  # std of Gaussian actuation noise, normalized action units

    @classmethod
    def from_dict(cls, values: dict | None) -> RandomizationConfig:
        values = dict(values or {})
        try:
            cfg = cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()})
        except TypeError as exc:
            raise ConfigError(f"bad randomization config: {exc}") from exc
        for name in ("friction", "mass", "actuator_gain", "light"):
            scale = getattr(cfg, name)
            if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1]):
                raise ConfigError(f"randomization.{name} must be a range [low, high] with 0 < low <= high")
        if cfg.action_latency < 0:
            raise ConfigError("randomization.action_latency must be >= 0")
        return cfg


class ModelRandomization(EnvHook):
    def __init__(self, model: mujoco.MjModel, cfg: RandomizationConfig):
        self.model, self.cfg = model, cfg
        # Nominal values, so each episode samples around the model as built, not around the last sample.
        self._friction = model.geom_friction[:, 0].copy()
        self._mass = model.body_mass.copy()
        self._inertia = model.body_inertia.copy()
        self._servo = model.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE
        self._gain = model.actuator_gainprm[:, 0].copy()
        self._bias = model.actuator_biasprm[:, 1].copy()
        self._cam_pos = model.cam_pos.copy()
        self._cam_quat = model.cam_quat.copy()
        self._light = model.light_diffuse.copy()

    def on_reset(self, env, rng: np.random.Generator) -> None:
        m, cfg = self.model, self.cfg
        if cfg.friction:
            m.geom_friction[:, 0] = self._friction * rng.uniform(*cfg.friction, size=len(self._friction))
        if cfg.mass:
            scale = rng.uniform(*cfg.mass, size=len(self._mass))
            m.body_mass[:] = self._mass * scale
            m.body_inertia[:] = self._inertia * scale[:, None]
        if cfg.actuator_gain:
            # A position servo is gain kp on ctrl and bias -kp on qpos: scale both together.
            scale = rng.uniform(*cfg.actuator_gain, size=len(self._gain))
            m.actuator_gainprm[self._servo, 0] = self._gain[self._servo] * scale[self._servo]
            m.actuator_biasprm[self._servo, 1] = self._bias[self._servo] * scale[self._servo]
        if cfg.camera_pos_m:
            m.cam_pos[:] = self._cam_pos + rng.normal(0.0, cfg.camera_pos_m, size=self._cam_pos.shape)
        if cfg.camera_angle_rad:
            for i in range(m.ncam):
                turn = np.zeros(4)
                mujoco.mju_axisAngle2Quat(
                    turn, rng.normal(size=3) / np.sqrt(3), rng.normal(0.0, cfg.camera_angle_rad)
                )
                mujoco.mju_mulQuat(m.cam_quat[i], self._cam_quat[i], turn)
        if cfg.light:
            m.light_diffuse[:] = np.clip(
                self._light * rng.uniform(*cfg.light, size=(len(self._light), 1)), 0.0, 1.0
            )


class ObservationNoise(EnvHook):
    def __init__(self, std: float):
        self.std = std
        self._rng = np.random.default_rng(0)

    def on_reset(self, env, rng) -> None:
        self._rng = rng

    def on_observation(self, obs):
        state = obs["state"]
        return {
            **obs,
            "state": (state + self._rng.normal(0.0, self.std, size=state.shape)).astype(state.dtype),
        }


class ActionNoise(EnvHook):
    """The robot executes each command plus Gaussian noise (actuation error), clipped to its limits.

    Recorders store the commanded action, not the executed one, so demonstrations collected with
    this on carry clean labels from states the noise pushed off the expert's path: the recovery
    data of DART (Laskey et al. 2017) that behaviour cloning needs to correct its own drift.
    """

    def __init__(self, std: float):
        self.std = std
        self._rng = np.random.default_rng(0)

    def on_reset(self, env, rng) -> None:
        self._rng = rng
        spec = env.robot.action_spec
        self._low, self._high = np.asarray(spec.low, float), np.asarray(spec.high, float)

    def on_command(self, command):
        noise = self._rng.normal(0.0, self.std, size=command.shape) * (self._high - self._low) / 2
        return np.clip(command + noise, self._low, self._high)


class ActionLatency(EnvHook):
    """The robot receives each command `steps` ticks late; until then it repeats the first one."""

    def __init__(self, steps: int):
        self.steps = steps
        self._queue: deque[np.ndarray] = deque()

    def on_reset(self, env, rng) -> None:
        self._queue.clear()

    def on_command(self, command):
        self._queue.append(command)
        while len(self._queue) > self.steps + 1:
            self._queue.popleft()
        return self._queue[0]


def randomization_hooks(model: mujoco.MjModel, values: dict | None) -> list[EnvHook]:
    """The hooks a task's `randomization` config block asks for (none when it is empty)."""
    cfg = RandomizationConfig.from_dict(values)
    hooks: list[EnvHook] = []
    if any(
        getattr(cfg, k)
        for k in ("friction", "mass", "actuator_gain", "camera_pos_m", "camera_angle_rad", "light")
    ):
        hooks.append(ModelRandomization(model, cfg))
    if cfg.obs_noise:
        hooks.append(ObservationNoise(cfg.obs_noise))
    if cfg.action_noise:
        hooks.append(ActionNoise(cfg.action_noise))
    if cfg.action_latency:
        hooks.append(ActionLatency(cfg.action_latency))
    return hooks
