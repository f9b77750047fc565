"""Scripted stand-ins for a human at the teleop device: random actions, or a scripted expert that
drives always, when the learner drifts, or on a schedule. Shared by sim and real runs."""

from __future__ import annotations

import numpy as np

from robot_rl.core.protocols import Teleop
from robot_rl.core.specs import TeleopCommand


class RandomTeleop(Teleop):
    """Uniformly random actions in [-1, 1]: the low end of a mixed-quality dataset."""

    def __init__(self, action_dim: int, seed: int | None = None):
        self.action_dim, self.rng = action_dim, np.random.default_rng(seed)

    def read(self) -> TeleopCommand:
        return TeleopCommand(
            self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32), intervening=True
        )


class ScriptedTeleop(Teleop):
    """Stands in for a human at the teleop device, driven by a scripted expert.

    mode "always": drives every step (demonstration collection).
    mode "drift": takes over when the learner drifts (the distance to the goal has grown more
    than `drift_m` beyond the best reached so far this episode) and hands back once it is within
    half that margin again, like an operator who intervenes only when things go wrong.
    mode "schedule": in each episode, with probability `attention()` (a number, or a function
    called at every reset: a schedule that tapers off as training goes on), takes over at a step
    drawn from `takeover_steps` and drives to the end of the episode, planning afresh from the
    state the learner left (the expert is reset at the takeover).
    Outside "always" mode an episode in which the human may act is an "attended" one.
    """

    MODES = ("always", "drift", "schedule")

    def __init__(
        self,
        expert,
        mode: str = "always",
        drift_m: float = 0.05,
        attention=1.0,
        takeover_steps: tuple[int, int] = (0, 40),
        seed: int | None = None,
    ):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.expert, self.mode, self.drift_m = expert, mode, drift_m
        self.attention = attention if callable(attention) else (lambda: float(attention))
        self.takeover_steps = takeover_steps
        self.rng = np.random.default_rng(seed)
        self._best = np.inf
        self._intervening = False
        self._attended, self._step, self._takeover = True, 0, 0

    def reset(self) -> None:
        self._best = np.inf
        self._intervening = False
        self._attended = self.mode == "always" or self.rng.random() < self.attention()
        self._step, self._takeover = (
            0,
            int(self.rng.integers(self.takeover_steps[0], self.takeover_steps[1] + 1)),
        )
        if hasattr(self.expert, "reset"):
            self.expert.reset()

    def read(self) -> TeleopCommand:
        if (
            self.mode == "schedule"
            and self._attended
            and not self._intervening
            and self._step >= self._takeover
        ):
            self._intervening = True
            if hasattr(self.expert, "reset"):
                self.expert.reset()  # plan from where the learner left the scene
        self._step += 1
        action = self.expert()
        if self.mode == "always":
            return TeleopCommand(action, intervening=True)
        if self.mode == "schedule":
            return TeleopCommand(action, intervening=self._intervening)
        distance = self.expert.distance()
        self._best = min(self._best, distance)
        if self._intervening:
            self._intervening = distance > self._best + self.drift_m / 2
        else:
            self._intervening = self._attended and distance > self._best + self.drift_m
        return TeleopCommand(action, intervening=self._intervening)
