"""Fixed-rate ticking on the monotonic clock: sleep most of the way, spin the last fraction.

`time.sleep` alone wakes 50-150 us late (Linux timer slack plus scheduling) and a loop that
sleeps a whole period after doing its work drifts below its rate. RateClock keeps an absolute
deadline grid (no drift), lowers the thread's timer slack where Linux allows it, and spins only
for a margin that it learns from the sleep overshoots it actually sees.

The spin and the reduced slack only pay on a quiet CPU. When other processes compete for the
cores, both make the loop later, not earlier: a thread that sleeps is run promptly when it wakes
(the scheduler owes it the CPU time it left), but a spinning thread uses that credit up, and the
competing processes then preempt it mid-spin for a time slice of theirs (milliseconds), besides
the CPU the spin burns; and with a 1 us timer slack, wake-ups under load were measured late
(more than 10 % of a period) about three times as often as with Linux's default 50 us (500 Hz,
2 busy processes on 2 cores). So RateClock spins, with reduced slack, only while the CPU is
uncontended (ContentionProbe: over the recent ticks its thread never waited on a run queue for a
CPU, and no more tasks were runnable than it has CPUs) and its wake-ups were prompt enough for a
bounded spin to cover. Otherwise it restores the thread's own timer slack and sleeps to the
deadline, as a plain deadline loop does, and spins again once the contention is gone
(`robot-rl bench loop --load N` measures both).

With a `time_source` (the ROS clock under `use_sim_time`: a simulator's or a bag's /clock), the
grid is on that clock: the thread polls it in short host-time sleeps and never spins, so a
simulation that runs at half real time gets half the wall-clock rate.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable

import numpy as np

_PR_SET_TIMERSLACK, _PR_GET_TIMERSLACK = 29, 30
_libc = None


def _prctl(option: int, value: int = 0) -> int | None:
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        return None


def reduce_timer_slack(ns: int = 1000) -> bool:
    """Ask Linux to wake this thread within `ns` of a sleep's end (default slack is 50 us);
    0 restores the thread's default."""
    return _prctl(_PR_SET_TIMERSLACK, ns) == 0


def timer_slack() -> int | None:
    """This thread's timer slack in ns (None where unknown)."""
    slack = _prctl(_PR_GET_TIMERSLACK)
    return slack if slack is not None and slack > 0 else None


class _ProcFile:
    """A /proc file kept open and re-read from its start (a few microseconds a read)."""

    def __init__(self, path: str):
        try:
            self.fd: int | None = os.open(path, os.O_RDONLY)
        except OSError:
            self.fd = None
        if self.fd is not None:
            self._finalizer = weakref.finalize(self, os.close, self.fd)

    def read(self) -> bytes | None:
        if self.fd is None:
            return None
        try:
            return os.pread(self.fd, 128, 0)
        except OSError:
            return None

    def close(self) -> None:
        if self.fd is not None:
            self._finalizer()
            self.fd = None


class ContentionProbe:
    """Whether other tasks compete with this thread for the CPU, sampled once a tick (Linux).

    Contended: since the last sample the thread waited longer than `wait_s` on a run queue for a
    CPU (its schedstat run delay), or more tasks are runnable now than there are CPUs it may run
    on (/proc/loadavg). `sample()` returns None where Linux reports neither. Create the probe in
    the thread it measures.
    """

    def __init__(self, wait_s: float = 50e-6):
        self.wait_s = wait_s
        self._schedstat = _ProcFile("/proc/thread-self/schedstat")
        self._loadavg = _ProcFile("/proc/loadavg")
        try:
            self._cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self._cpus = os.cpu_count() or 1
        self._last_delay = self._run_delay()

    def _run_delay(self) -> float | None:
        raw = self._schedstat.read()  # "<ns on CPU> <ns waiting on a run queue> <time slices>"
        try:
            return int(raw.split()[1]) * 1e-9 if raw else None
        except (ValueError, IndexError):
            return None

    def _runnable(self) -> int | None:
        raw = self._loadavg.read()  # "0.52 0.58 0.59 <runnable>/<tasks> <last pid>"
        try:
            return int(raw.split()[3].split(b"/")[0]) if raw else None
        except (ValueError, IndexError):
            return None

    def sample(self) -> bool | None:
        delay, runnable = self._run_delay(), self._runnable()
        waited = None if delay is None or self._last_delay is None else delay - self._last_delay > self.wait_s
        self._last_delay = delay
        crowded = None if runnable is None else runnable > self._cpus
        if waited is None and crowded is None:
            return None
        return bool(waited or crowded)

    def close(self) -> None:
        self._schedstat.close()
        self._loadavg.close()


class RateClock:
    """Deadline scheduler. Call `start()` once, then `wait()` at the end of every tick.

    An overrun (the tick's work ended after its deadline) is counted and the tick runs at once.
    Less than half a period late, it keeps the grid: the next deadline is the grid's next one, so
    a late wake-up or a slow tick does not push every later tick back (on a loaded CPU that lost
    the rate), and no period is shorter than half the nominal one. Later than that, the grid is
    re-anchored at the late tick, so the next tick gets a full period rather than a burst of
    catch-up ticks.
    """

    def __init__(
        self,
        rate_hz: float | None,
        min_spin_s: float = 30e-6,
        max_spin_fraction: float = 0.2,
        max_spin_s: float = 500e-6,
        contended_wait_s: float = 50e-6,
        time_source: Callable[[], float] | None = None,
        poll_s: float = 1e-3,
    ):
        """`rate_hz=None` runs free (as fast as the work allows) and only measures the periods.

        The spin before each deadline is at most `max_spin_fraction` of the period and at most
        `max_spin_s`. The CPU counts as contended, and the clock sleeps to the deadline without
        spinning, while one of the last 64 ticks found it so (ContentionProbe, with
        `contended_wait_s`), or while the 90th percentile of the recent wake-up delays needs a
        longer spin than allowed. `time_source` (seconds) replaces the monotonic clock; it is
        polled every `poll_s` of host time.
        """
        if rate_hz is not None and not rate_hz > 0:
            raise ValueError(f"rate_hz must be positive or None, got {rate_hz}")
        self.rate_hz = None if rate_hz is None else float(rate_hz)
        self.time_source, self.poll_s = time_source, poll_s
        self._now = time_source or time.monotonic
        self.period = 0.0 if rate_hz is None else 1.0 / self.rate_hz
        self.min_spin_s = min_spin_s
        self.max_spin_s = min(max_spin_fraction * self.period, max_spin_s)
        self._overshoots: deque[float] = deque([100e-6], maxlen=64)
        self.contended_wait_s = contended_wait_s
        self._contended: deque[bool] = deque(maxlen=64)  # per tick: the probe found the CPU contended
        self._contended_count = 0  # how many of self._contended are True
        self._probe: ContentionProbe | None = None
        self._thread_slack: int | None = (
            None  # the ticking thread's own timer slack, restored while contended
        )
        self._precise = False  # timer slack reduced (while spinning)
        self.contended_ticks = 0  # ticks that slept to the deadline without a spin: the CPU was contended
        self._deadline = 0.0
        self._last_tick = 0.0
        self.overruns = 0
        self.ticks = 0
        # Rings, so a loop that runs for hours keeps bounded memory (the last ~100k ticks).
        self.periods: deque[float] = deque(maxlen=100_000)
        self.lateness: deque[float] = deque(maxlen=100_000)

    @property
    def spin_margin(self) -> float:
        """How long before the deadline to stop sleeping and spin; 0 while the CPU is contended."""
        if self._contended_count:  # other tasks wanted this thread's CPU lately: a spin would be preempted
            return 0.0
        recent = sorted(self._overshoots)
        # One wake-up in ten later than the longest spin allowed: contended too (and where the
        # kernel does not report run-queue waits, the only sign of it).
        if 1.5 * recent[(len(recent) - 1) * 9 // 10] + self.min_spin_s > self.max_spin_s:
            return 0.0
        # 1.5x the worst recent overshoot: wake-up latency on a busy or virtual machine has a long tail.
        return min(max(1.5 * recent[-1] + self.min_spin_s, self.min_spin_s), self.max_spin_s)

    def start(self) -> None:
        """Start the grid now; call it in the thread that will call `wait()`."""
        if self.time_source is None:  # polling another clock: no spin for a reduced slack to serve
            if self._thread_slack is None or not self._precise:
                self._thread_slack = timer_slack()
            self._precise = reduce_timer_slack()
        if self.rate_hz is not None and self.time_source is None:
            if self._probe is not None:
                self._probe.close()
            self._probe = ContentionProbe(self.contended_wait_s)  # per thread: made in the ticking one
        now = self._now()
        self._last_tick = now
        self._deadline = now + self.period

    def wait(self) -> None:
        """Block until the next deadline; return at once (and count an overrun) if it has passed."""
        deadline = self._deadline
        now = self._now()
        if self.rate_hz is None:
            tick = deadline = now
        elif now > deadline:
            self.overruns += 1
            tick = now
            # On the grid while less than half a period behind; re-anchored (no catch-up burst) beyond.
            self._deadline = (
                deadline + self.period if now - deadline < 0.5 * self.period else now + self.period
            )
        elif self.time_source is not None:
            while (tick := self._now()) < deadline:
                if tick < self._last_tick:  # the source jumped back (a simulator reset, a looping bag):
                    deadline, self._last_tick = tick, tick - self.period  # tick now, on a new grid
                    break
                time.sleep(self.poll_s)
            self._deadline = deadline + self.period
        else:
            margin = self.spin_margin
            if margin == 0.0:
                self.contended_ticks += 1
            if (margin > 0.0) != self._precise and self._thread_slack is not None:
                # Reduced slack while spinning; the thread's own while contended (see the module doc).
                self._precise = (
                    reduce_timer_slack(1000 if margin > 0.0 else self._thread_slack) and margin > 0.0
                )
            slept = deadline - now > margin
            if slept:
                wake_at = deadline - margin
                time.sleep(wake_at - now)
                woke = time.monotonic()
            while (tick := time.monotonic()) < deadline:
                pass
            if slept:
                # The wake-up's delay; or, if the thread lost the CPU during the spin and passed
                # the deadline, that lateness: the spin did not deliver, which is contention too.
                self._overshoots.append(max(0.0, woke - wake_at, tick - deadline))
            self._deadline = deadline + self.period
        if self._probe is not None and (contended := self._probe.sample()) is not None:
            if len(self._contended) == self._contended.maxlen:
                self._contended_count -= self._contended[0]
            self._contended.append(contended)
            self._contended_count += contended
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
            return {
                "rate_hz": None,
                "achieved_hz": float(1.0 / max(periods.mean(), 1e-9)),
                "ticks": self.ticks,
                "overruns": 0,
            }
        err = np.abs(periods - self.period) * 1e6
        return {
            "rate_hz": self.rate_hz,
            "achieved_hz": float(1.0 / periods.mean()),
            "ticks": self.ticks,
            "overruns": self.overruns,
            "contended_ticks": self.contended_ticks,
            "period_error_us_p50": float(np.percentile(err, 50)),
            "period_error_us_p99": float(np.percentile(err, 99)),
            "period_error_us_max": float(err.max()),
        }
