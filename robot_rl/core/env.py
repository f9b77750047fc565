"""RobotEnv: one gymnasium.Env over a Robot, its cameras and a Task, for sim and hardware alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from robot_rl.core.protocols import Camera, Robot, Task
from robot_rl.core.safety import SafetyConfig
from robot_rl.errors import StaleFrameError


class EnvHook:
    """Something that acts at fixed points of every episode: domain randomization, observation
    noise, action latency. Hooks run in the order given, in `reset`, on each command (robot
    units, after the safety layer) and on each observation."""

    def on_reset(self, env: RobotEnv, rng: np.random.Generator) -> None:
        pass

    def on_command(self, command: np.ndarray) -> np.ndarray:
        return command

    def on_observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return obs


class RobotEnv(gym.Env):
    """Dict observations {"state", "image/<camera>"}; actions normalized to [-1, 1].

    `step()` is `apply_action()` + `observe()` + `evaluate()`; the ControlLoop calls the three
    separately so it can wait for the tick deadline between sending and observing, and time each.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        robot: Robot,
        task: Task,
        cameras: Sequence[Camera] = (),
        hooks: Sequence[EnvHook] = (),
        max_frame_age_s: float | None = None,
        render_camera: Camera | None = None,
        render_mode: str | None = None,
        task_state: bool = True,
    ):
        # max_frame_age_s: a camera frame older than this (host monotonic clock) when observed is
        # a StaleFrameError, not a silently repeated image (real cameras; sim frames are fresh).
        # render_camera: what `render()` shows with render_mode "rgb_array" (not an observation).
        # task_state: the task's observations (object poses: in sim, privileged) in the state;
        # without them the state is the robot's proprioception and the cameras must show the rest.
        self.robot, self.task, self.cameras, self.hooks = robot, task, list(cameras), list(hooks)
        self.render_camera, self.render_mode, self._render_live = None, None, False
        if render_camera is not None or render_mode is not None:
            self.set_render_camera(render_camera, render_mode)
        self.max_frame_age_s = max_frame_age_s
        self.robot_state_keys = [k for k in robot.observation_spec if k != "timestamp"]
        task_spec = task.observation_spec() if task_state else {}
        specs = {**{k: robot.observation_spec[k] for k in self.robot_state_keys}, **task_spec}
        self.state_layout = {k: int(np.prod(s.shape)) for k, s in specs.items()}
        state_dim = sum(self.state_layout.values())
        spaces = {"state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)}
        for cam in self.cameras:
            spaces[f"image/{cam.name}"] = gym.spaces.Box(0, 255, tuple(cam.shape), np.uint8)
            if getattr(cam, "depth", False):  # aligned depth, uint16 millimetres
                spaces[f"depth/{cam.name}"] = gym.spaces.Box(0, 65535, tuple(cam.shape[:2]), np.uint16)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, tuple(robot.action_spec.shape), np.float32)
        self._low, self._high = robot.action_spec.bounds()
        self.raw_obs: dict[str, np.ndarray] = {}
        self.steps = 0
        self._connected = False

    def state_names(self) -> list[str]:
        """One name per entry of the `state` vector, e.g. ee_pos[0]."""
        return [f"{k}[{i}]" if n > 1 else k for k, n in self.state_layout.items() for i in range(n)]

    # --- lifecycle -------------------------------------------------------------------------
    def connect(self) -> None:
        if not self._connected:
            self.robot.connect()
            for cam in self.cameras:
                cam.connect()
            self._connected = True

    def close(self) -> None:
        self._release_render_camera()  # connected by render() alone, without the robot
        if self._connected:
            try:
                self.robot.stop()
            finally:
                for cam in self.cameras:
                    cam.disconnect()
                self.robot.disconnect()
                self._connected = False

    def set_render_camera(self, camera: Camera | None, render_mode: str | None = "rgb_array") -> None:
        """What `render()` shows under render_mode "rgb_array" (not an observation); the camera it
        replaces is released."""
        if render_mode not in (None, "rgb_array") or (render_mode and camera is None):
            raise ValueError(f"render_mode {render_mode!r}: None, or 'rgb_array' with a render camera")
        self._release_render_camera()
        self.render_camera, self.render_mode = camera, render_mode

    def render(self):
        """The render camera's view (H, W, 3 uint8) under render_mode "rgb_array"; None otherwise.
        Only the render camera is connected for it (never the robot: rendering moves nothing)."""
        if self.render_mode != "rgb_array":
            return None
        if not self._render_live:
            self.render_camera.connect()
            self._render_live = True
        return self.render_camera.read().image

    def _release_render_camera(self) -> None:
        if self._render_live:
            self.render_camera.disconnect()
            self._render_live = False

    def __enter__(self) -> RobotEnv:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- gymnasium -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.connect()
        for hook in self.hooks:
            hook.on_reset(self, self.np_random)
        self.task.reset(self.np_random)
        self.steps = 0
        return self.observe(), {}

    def step(self, action):
        self.apply_action(action)
        obs = self.observe()
        reward, terminated, truncated, info = self.evaluate()
        return obs, reward, terminated, truncated, info

    # --- the three parts of a step ---------------------------------------------------------
    def to_robot_units(self, action: np.ndarray) -> np.ndarray:
        return self._low + (np.asarray(action, np.float64) + 1.0) * 0.5 * (self._high - self._low)

    def command_for(self, action) -> np.ndarray:
        """The robot-unit command for a normalized action, which must be finite and well shaped."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action has shape {a.shape}, expected {self.action_space.shape}")
        if not np.all(np.isfinite(a)):
            # Last line of defence: the ControlLoop's safety filter normally catches this first.
            raise ValueError("refusing to send a non-finite action to the robot")
        command = self.to_robot_units(np.clip(a, -1.0, 1.0))
        for hook in self.hooks:
            command = hook.on_command(command)
        return command

    def apply_action(self, action) -> None:
        self.robot.command(self.command_for(action))
        self.steps += 1

    def hold(self) -> None:
        """Spend this step holding still (the safety layer rejected the action)."""
        self.robot.stop()
        self.steps += 1

    def observe(self) -> dict[str, np.ndarray]:
        raw = dict(self.robot.observe())
        raw.update(self.task.observe())
        self.raw_obs = raw
        parts = [np.asarray(raw[k], np.float32).ravel() for k in self.state_layout]
        obs = {"state": np.concatenate(parts) if parts else np.zeros(0, np.float32)}
        now = time.monotonic()
        for cam in self.cameras:
            frame = cam.read()
            if self.max_frame_age_s is not None and now - frame.timestamp > self.max_frame_age_s:
                raise StaleFrameError(
                    f"camera {cam.name}: its newest frame is {1000 * (now - frame.timestamp):.0f} ms old "
                    f"(limit {1000 * self.max_frame_age_s:.0f} ms): the camera stalled or dropped"
                )
            obs[f"image/{cam.name}"] = frame.image
            if getattr(cam, "depth", False):
                obs[f"depth/{cam.name}"] = frame.depth
            raw[f"timestamp/{cam.name}"] = np.float64(frame.timestamp)
        for hook in self.hooks:
            obs = hook.on_observation(obs)
        return obs

    def evaluate(self) -> tuple[float, bool, bool, dict]:
        reward, success, terminated = self.task.evaluate(self.raw_obs)
        truncated = (not terminated) and self.steps >= self.task.max_steps
        return float(reward), bool(terminated), bool(truncated), {"success": bool(success)}


@dataclass
class EnvSource:
    """The environments a learner acts on, built from a config by robot_rl.factory: learners are
    given them and never build an env themselves.

    `make(seed=None, render=False, **overrides)` gives one env and its scripted expert (None where
    the env has none); overrides change the env's settings (e.g. control_hz, cameras); with
    `render` the env's render() shows its config's render_camera. `make_vec(n)` gives n
    state-only envs that step together (None where the env offers no vector form). `safety` is the
    loop's safety settings for this env; `settings` the env config's plain values (name, kind,
    image_size, ...) for checks and reports; `extras` what a learner may use where the env offers
    it (the sim car: `driver(env, speed)`, `practice_hooks(env)`, `walls()`).
    """

    name: str
    make: Callable[..., tuple[RobotEnv, object]]
    make_vec: Callable[[int], object] | None
    safety: SafetyConfig
    settings: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
