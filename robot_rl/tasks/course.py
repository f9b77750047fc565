"""A driving course as checkpoints: extraction from one demo lap, in-order tracking with lap
timing, and FastRLAP's progress reward (velocity projected toward the next checkpoint).

Nothing here knows about MuJoCo: it works on (x, y) positions, velocities and timestamps, from the
simulated car's sensors or a real car's odometry alike.
"""

from __future__ import annotations

import math

import numpy as np

from robot_rl.errors import ConfigError, DatasetError


def extract_checkpoints(path_xy: np.ndarray, spacing: float) -> np.ndarray:
    """Checkpoints every `spacing` metres of arc length along a demo lap's path (T, 2), driven
    from the start line round to it again: (K, 2), the last one at the path's end (the finish).

    The path is resampled by arc length, so a slow or stop-and-go demo gives the same checkpoints
    as a smooth one; K = round(length / spacing), at least 2.
    """
    xy = np.asarray(path_xy, np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 2:
        raise DatasetError(f"a demo lap's path must be (T >= 2, 2) positions, got shape {xy.shape}")
    if not np.all(np.isfinite(xy)):
        raise DatasetError("the demo lap's path has non-finite positions")
    if not spacing > 0:
        raise ConfigError(f"checkpoint spacing must be positive, got {spacing}")
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    if arc[-1] < 2 * spacing:
        raise DatasetError(
            f"the demo lap is {arc[-1]:.2f} m long: too short for checkpoints every {spacing} m"
        )
    n = max(2, int(round(arc[-1] / spacing)))
    s = arc[-1] * np.arange(1, n + 1) / n
    return np.stack([np.interp(s, arc, xy[:, 0]), np.interp(s, arc, xy[:, 1])], axis=1)


def world_velocity(velocity_body: np.ndarray, yaw: float) -> np.ndarray:
    """Planar velocity in the course frame from the body-frame velocity (forward, left) and yaw."""
    c, s = math.cos(yaw), math.sin(yaw)
    vx, vy = float(velocity_body[0]), float(velocity_body[1])
    return np.array([c * vx - s * vy, s * vx + c * vy])


def progress_reward(xy: np.ndarray, velocity_xy: np.ndarray, target_xy: np.ndarray) -> float:
    """FastRLAP's reward: the velocity's component along the unit vector to the next checkpoint
    (m/s; negative when driving away from it)."""
    to_target = np.asarray(target_xy, np.float64) - np.asarray(xy, np.float64)
    distance = float(np.linalg.norm(to_target))
    if distance < 1e-9:
        return 0.0
    return float(np.dot(velocity_xy, to_target) / distance)


class CheckpointTracker:
    """Checkpoints in order around a closed lap; the last one is the start/finish line.

    `advance(xy, t)` moves past every checkpoint within `radius`, in order (more than one when they
    are closer than the radius), stopping at the finish so that one call completes at most one lap;
    a lap's time runs from the reset (or the previous lap's end) to reaching the finish.
    """

    def __init__(self, checkpoints: np.ndarray, radius: float):
        checkpoints = np.asarray(checkpoints, np.float64)
        if checkpoints.ndim != 2 or checkpoints.shape[1] != 2 or len(checkpoints) < 2:
            raise ConfigError(f"a lap needs at least 2 checkpoints (K, 2), got shape {checkpoints.shape}")
        if not radius > 0:
            raise ConfigError(f"checkpoint radius must be positive, got {radius}")
        self.checkpoints, self.radius = checkpoints, float(radius)
        self.reset()

    def reset(self, t0: float = 0.0) -> None:
        self.next_checkpoint, self.laps_completed = 0, 0
        self.lap_times: list[float] = []
        self.checkpoint_times: list[float] = []  # when each checkpoint was reached
        self._lap_start = float(t0)

    def __len__(self) -> int:
        return len(self.checkpoints)

    def reachable(self, xy: np.ndarray) -> int:
        """How many checkpoints, in order from the next one, are within reach of `xy` now."""
        count = 0
        for i in range(self.next_checkpoint, len(self.checkpoints)):
            if np.linalg.norm(self.checkpoints[i] - xy[:2]) > self.radius:
                break
            count += 1
        return count

    def upcoming(self, xy: np.ndarray, k: int = 1) -> np.ndarray:
        """The next `k` checkpoints (k, 2) as they will be once `xy` is credited: an observation
        taken before `advance` already shows the checkpoint the car is rewarded for next."""
        first = self.next_checkpoint + self.reachable(np.asarray(xy, np.float64))
        return self.checkpoints[(first + np.arange(k)) % len(self.checkpoints)]

    def advance(self, xy: np.ndarray, t: float) -> tuple[int, float | None]:
        """(checkpoints reached now, the lap time if this completed a lap, else None)."""
        reached = self.reachable(np.asarray(xy, np.float64))
        self.checkpoint_times += [float(t)] * reached
        self.next_checkpoint += reached
        if self.next_checkpoint < len(self.checkpoints):
            return reached, None
        self.next_checkpoint = 0
        self.laps_completed += 1
        lap = float(t) - self._lap_start
        self.lap_times.append(lap)
        self._lap_start = float(t)
        return reached, lap
