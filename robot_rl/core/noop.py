"""A robot that does nothing and a task that never ends: for timing the loop itself, and tests."""

from __future__ import annotations

import threading
import time

import numpy as np

from robot_rl.core.protocols import Robot, Task
from robot_rl.core.specs import ArraySpec


class NoopRobot(Robot):
    """Accepts commands instantly and remembers them; `stop()` is counted."""

    def __init__(self, action_dim: int = 3, low: float = -1.0, high: float = 1.0):
        self.observation_spec = {"position": ArraySpec((action_dim,)), "timestamp": ArraySpec((), "float64")}
        self.action_spec = ArraySpec((action_dim,), low=low, high=high)
        self.position = np.zeros(action_dim)
        self.commands: list[np.ndarray] = []
        self.stops = 0
        self.connected = False
        self._lock = threading.Lock()

    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def observe(self) -> dict[str, np.ndarray]:
        return {"position": self.position.astype(np.float32), "timestamp": np.float64(time.monotonic())}

    def command(self, action: np.ndarray) -> None:
        with self._lock:
            self.commands.append(np.array(action))

    def stop(self) -> None:
        with self._lock:
            self.stops += 1


class NullTask(Task):
    """No reward, never terminates; episodes end by truncation after `max_steps`."""

    text = "do nothing"

    def __init__(self, max_steps: int = 100):
        self.max_steps = max_steps

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def evaluate(self, obs) -> tuple[float, bool, bool]:
        return 0.0, False, False
