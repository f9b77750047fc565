"""Fixed-rate ticking on the monotonic clock: sleep most of the way, spin the last fraction.

`time.sleep` alone wakes 50-150 us late (Linux timer slack plus scheduling) and a loop that
sleeps a whole period after doing its work drifts below its rate. RateClock keeps an absolute
deadline grid (no drift), lowers the thread's timer slack where Linux allows it, and spins only
for a margin that it learns from the sleep overshoots it actually sees.
"""

from __future__ import annotations

import ctypes
import itertools
import sys
import time
from collections import deque

import numpy as np

_PR_SET_TIMERSLACK = 29


def reduce_timer_slack(ns: int = 1000) -> bool:
    """Ask Linux to wake this thread within `ns` of a sleep's end (default slack is 50 us)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, ns, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class RateClock:
    """Deadline scheduler. Call `start()` once, then `wait()` at the end of every tick.

    An overrun (the tick's work ended after its deadline) is counted and the grid re-anchored at
    the late tick, so the next tick gets a full period rather than a burst of catch-up ticks.
    """

    def __init__(self, rate_hz: float | None, min_spin_s: float = 30e-6, max_spin_fraction: float = 0.2):
        """`rate_hz=None` runs free (as fast as the work allows) and only measures the periods."""
        if rate_hz is not None and not rate_hz > 0:
            raise ValueError(f"rate_hz must be positive or None, got {rate_hz}")
        self.rate_hz = None if rate_hz is None else float(rate_hz)
        self.period = 0.0 if rate_hz is None else 1.0 / self.rate_hz
        self.min_spin_s = min_spin_s
        self.max_spin_s = max_spin_fraction * self.period
        self._overshoots: deque[float] = deque([100e-6], maxlen=64)
        self._deadline = 0.0
        self._last_tick = 0.0
        self.overruns = 0
        self.ticks = 0
        # Rings, so a loop that runs for hours keeps bounded memory (the last ~100k ticks).
        self.periods: deque[float] = deque(maxlen=100_000)
        self.lateness: deque[float] = deque(maxlen=100_000)

    @property
    def spin_margin(self) -> float:
        # 1.5x the worst recent overshoot: wake-up latency on a busy or virtual machine has a long tail.
        return float(np.clip(1.5 * max(self._overshoots) + self.min_spin_s, self.min_spin_s, self.max_spin_s))

    def start(self) -> None:
        reduce_timer_slack()
        now = time.monotonic()
        self._last_tick = now
        self._deadline = now + self.period

    def wait(self) -> None:
        """Block until the next deadline; return at once (and count an overrun) if it has passed."""
        deadline = self._deadline
        now = time.monotonic()
        if self.rate_hz is None:
            tick = deadline = now
        elif now > deadline:
            self.overruns += 1
            tick = now
            self._deadline = now + self.period
        else:
            margin = self.spin_margin
            if deadline - now > margin:
                wake_at = deadline - margin
                time.sleep(wake_at - now)
                self._overshoots.append(max(0.0, time.monotonic() - wake_at))
            while (tick := time.monotonic()) < deadline:
                pass
            self._deadline = deadline + self.period
        self.lateness.append(tick - deadline)
        self.periods.append(tick - self._last_tick)
        self._last_tick = tick
        self.ticks += 1

    def recent_hz(self, n: int = 20) -> float:
        """The rate over the last n periods (0 before any), without copying the whole history."""
        recent = list(itertools.islice(reversed(self.periods), n))
        total = sum(recent)
        return len(recent) / total if total > 0 else 0.0

    def report(self) -> dict:
        periods = np.asarray(self.periods)
        if periods.size == 0:
            return {"rate_hz": self.rate_hz, "ticks": 0, "overruns": 0}
        if self.rate_hz is None:
            return {"rate_hz": None, "achieved_hz": float(1.0 / max(periods.mean(), 1e-9)), "ticks": self.ticks, "overruns": 0}
        err = np.abs(periods - self.period) * 1e6
        return {
            "rate_hz": self.rate_hz,
            "achieved_hz": float(1.0 / periods.mean()),
            "ticks": self.ticks,
            "overruns": self.overruns,
            "period_error_us_p50": float(np.percentile(err, 50)),
            "period_error_us_p99": float(np.percentile(err, 99)),
            "period_error_us_max": float(err.max()),
        }
