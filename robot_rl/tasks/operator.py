"""The task of a real robot under an operator: the operator ends each episode."""

from __future__ import annotations

import numpy as np

from robot_rl.core.protocols import Task


class OperatorTask(Task):
    """A task whose end the operator decides (success / failure keys); a step limit truncates."""

    def __init__(self, text: str, max_steps: int):
        self.text, self.max_steps = text, int(max_steps)

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def evaluate(self, obs: dict[str, np.ndarray]) -> tuple[float, bool, bool]:
        return 0.0, False, False
