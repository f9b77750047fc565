"""Autonomous practice for a car on a course (FastRLAP): the progress reward, stuck and flip
detection, and the recovery manoeuvre that replaces a human reset.

`PracticeTask` is a `Task` for any car `Robot` that gives `pose()` (x, y, yaw from its odometry)
and observes `velocity` (body frame), `accel` (IMU specific force), `collision` and `timestamp`:
the simulated car and the VESC car alike. Its episodes are stretches of one continuous drive
(time limits, bootstrapped through): after the first, `reset` puts nothing back.
`RecoveryTeleop` takes over while the task asks for recovery (reverse with random steering);
the loop flags those steps `intervened` and the FastRLAP learner does not store them.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from robot_rl.core.protocols import Task, Teleop
from robot_rl.core.specs import ArraySpec, TeleopCommand
from robot_rl.errors import ConfigError
from robot_rl.tasks.course import CheckpointTracker, progress_reward, world_velocity
from robot_rl.utils.geometry import GRAVITY


class StuckDetector:
    """Stuck: the last `window` positions all lie within `radius` of their mean (FastRLAP: 30
    positions within 0.3 m)."""

    def __init__(self, window: int = 30, radius: float = 0.3):
        if window < 2 or not radius > 0:
            raise ConfigError(f"stuck detection needs window >= 2 and radius > 0, got {window}, {radius}")
        self.window, self.radius = window, radius
        self._positions: deque[np.ndarray] = deque(maxlen=window)

    def clear(self) -> None:
        self._positions.clear()

    def update(self, xy: np.ndarray) -> bool:
        self._positions.append(np.asarray(xy, np.float64)[:2])
        if len(self._positions) < self.window:
            return False
        points = np.stack(self._positions)
        return bool(np.all(np.linalg.norm(points - points.mean(0), axis=1) <= self.radius))


class FlipDetector:
    """Flipped: the IMU's upward specific force, averaged over `window` readings, is below
    `threshold` g (upright it reads +1 g; on its side about 0, on its roof -1 g). The average
    keeps bumps and landings from counting."""

    def __init__(self, window: int = 5, threshold: float = 0.4):
        if window < 1:
            raise ConfigError(f"flip detection needs window >= 1, got {window}")
        self.threshold = threshold
        self._up: deque[float] = deque(maxlen=window)

    def clear(self) -> None:
        self._up.clear()

    def update(self, accel: np.ndarray) -> bool:
        self._up.append(float(np.asarray(accel)[2]) / GRAVITY)
        return len(self._up) == self._up.maxlen and float(np.mean(self._up)) < self.threshold


class PracticeTask(Task):
    """Laps of the checkpoints from a demo lap, rewarded as FastRLAP is.

    reward = velocity along the unit vector to the next checkpoint (m/s)
             - collision_penalty while touching something - stuck_penalty when found stuck.
    Observation: the next `lookahead` checkpoints in the car frame. `needs_recovery` is set when
    the car is stuck; on a flip, `right_car` (sim: put it back on its wheels where it lies) is
    called, and without one (a real car) `flipped` stays set for the learner to stop on.
    `place_start(rng)` puts the car at the start before the first episode (sim); a real car
    starts wherever it stands. `clock` reads the time of the car's `timestamp` observations (sim
    time for the simulated car): laps are timed from the first reset.
    """

    text = "drive laps of the course as fast as possible without hitting anything"

    def __init__(
        self,
        car,
        checkpoints: np.ndarray,
        radius: float,
        max_steps: int = 500,
        lookahead: int = 2,
        collision_penalty: float = 1.0,
        stuck_penalty: float = 2.0,
        stuck: StuckDetector | None = None,
        flip: FlipDetector | None = None,
        place_start: Callable[[np.random.Generator], None] | None = None,
        right_car: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_steps < 1 or lookahead < 1:
            raise ConfigError(f"max_steps and lookahead must be at least 1, got {max_steps}, {lookahead}")
        self.car, self.max_steps, self.lookahead = car, max_steps, lookahead
        self.tracker = CheckpointTracker(checkpoints, radius)
        self.collision_penalty, self.stuck_penalty = collision_penalty, stuck_penalty
        self.stuck, self.flip = stuck or StuckDetector(), flip or FlipDetector()
        self.place_start, self.right_car, self.clock = place_start, right_car, clock
        self.needs_recovery = False
        self.flipped = False
        self.counts = {"stuck": 0, "flips": 0, "collision_steps": 0}
        self.lap_log: list[dict] = []  # every lap: its time, when it ended, collisions during it
        self._started = False
        self._lap_collisions = 0

    def observation_spec(self) -> dict[str, ArraySpec]:
        return {"checkpoints_ahead": ArraySpec((2 * self.lookahead,))}

    def observe(self) -> dict[str, np.ndarray]:
        x, y, yaw = self.car.pose()
        ahead = self.tracker.upcoming(np.array([x, y]), self.lookahead) - [x, y]
        c, s = math.cos(yaw), math.sin(yaw)
        body = np.stack([c * ahead[:, 0] + s * ahead[:, 1], -s * ahead[:, 0] + c * ahead[:, 1]], axis=1)
        return {"checkpoints_ahead": body.ravel().astype(np.float32)}

    def reset(self, rng: np.random.Generator) -> None:
        if self._started:
            return  # practice goes on from where the car is: no reset between episodes
        self._started = True
        if self.place_start is not None:
            self.place_start(rng)
        self.tracker.reset(float(self.clock()))
        self.stuck.clear()
        self.flip.clear()

    def evaluate(self, obs: dict[str, np.ndarray]) -> tuple[float, bool, bool]:
        x, y, yaw = self.car.pose()
        xy = np.array([x, y])
        (target,) = self.tracker.upcoming(xy, 1)  # past any reached now: the one it drives to next
        reward = progress_reward(xy, world_velocity(obs["velocity"], yaw), target)
        _, lap = self.tracker.advance(xy, float(obs["timestamp"]))
        collided = bool(np.asarray(obs["collision"]).ravel()[0] > 0)
        if collided:
            reward -= self.collision_penalty
            self.counts["collision_steps"] += 1
            self._lap_collisions += 1
        if lap is not None:
            self.lap_log.append(
                {"lap_time": lap, "t": float(obs["timestamp"]), "collision_steps": self._lap_collisions}
            )
            self._lap_collisions = 0
        if self.flip.update(obs["accel"]):
            self.counts["flips"] += 1
            self.flip.clear()
            if self.right_car is not None:
                self.right_car()
            else:
                self.flipped = True
        elif not self.needs_recovery and self.stuck.update(xy):
            self.counts["stuck"] += 1
            self.needs_recovery = True
            reward -= self.stuck_penalty
        return reward, self.tracker.laps_completed >= 1, False

    def recovered(self) -> None:
        """The recovery manoeuvre is over: stuck detection starts afresh."""
        self.needs_recovery = False
        self.stuck.clear()


class RecoveryTeleop(Teleop):
    """FastRLAP's autonomous reset: while the task needs recovery, reverse at `speed` (normalized,
    negative) with one random steering command for `steps` ticks, then hand back to the policy."""

    def __init__(self, task: PracticeTask, steps: int = 10, speed: float = -0.3, seed: int = 0):
        if steps < 1 or not -1 <= speed < 0:
            raise ConfigError(
                f"recovery needs steps >= 1 and a reverse speed in [-1, 0), got {steps}, {speed}"
            )
        self.task, self.steps, self.speed = task, steps, speed
        self.rng = np.random.default_rng(seed)
        self._left, self._steer = 0, 0.0
        self.manoeuvres = 0

    def read(self) -> TeleopCommand:
        if self._left == 0 and self.task.needs_recovery:
            self._left, self._steer = self.steps, float(self.rng.uniform(-1.0, 1.0))
            self.manoeuvres += 1
        if self._left == 0:
            return TeleopCommand(np.zeros(2, np.float32), intervening=False)
        self._left -= 1
        if self._left == 0:
            self.task.recovered()
        return TeleopCommand(np.array([self._steer, self.speed], np.float32), intervening=True)
