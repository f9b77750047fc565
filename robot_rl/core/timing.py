"""Timing: the control loop's per-stage percentiles, and a learner loop's seconds per phase."""

from __future__ import annotations

import time

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


class PhaseClock:
    """Seconds spent in each named phase, summed over calls: `with clock("physics"): ...`.

    A learner's loop takes one so that a benchmark can time its phases in the real code path; with
    `enabled=False` (the default in training) each phase costs one branch and records nothing.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> _Phase:
        return _Phase(self, name)


class _Phase:
    __slots__ = ("clock", "name", "start")

    def __init__(self, clock: PhaseClock, name: str):
        self.clock, self.name = clock, name

    def __enter__(self) -> None:
        if self.clock.enabled:
            self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        if self.clock.enabled:
            elapsed = time.perf_counter() - self.start
            self.clock.seconds[self.name] = self.clock.seconds.get(self.name, 0.0) + elapsed


UNTIMED = PhaseClock(enabled=False)  # the default clock of loops that are timed only when benchmarked
