"""Per-stage timing of the control loop: mean, p50, p99 and max of each stage's duration."""

from __future__ import annotations

import numpy as np


class StageTimer:
    """Keeps the last `capacity` durations of each named stage in a preallocated ring."""

    def __init__(self, stages: tuple[str, ...], capacity: int = 100_000):
        self.stages = stages
        self._buf = {s: np.zeros(capacity) for s in stages}
        self._n = dict.fromkeys(stages, 0)
        self._capacity = capacity

    def add(self, stage: str, seconds: float) -> None:
        n = self._n[stage]
        self._buf[stage][n % self._capacity] = seconds
        self._n[stage] = n + 1

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for s in self.stages:
            n = min(self._n[s], self._capacity)
            if n == 0:
                continue
            ms = self._buf[s][:n] * 1e3
            out[s] = {
                "mean_ms": float(ms.mean()),
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "max_ms": float(ms.max()),
                "n": int(self._n[s]),
            }
        return out
