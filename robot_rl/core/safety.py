"""The safety layer between any action source and a robot.

Rules, in the order they apply: non-finite actions are rejected (the robot holds still and the
event is counted; nothing is forwarded), then the action is clipped to [-1, 1], then limited to a
per-step change, then kept inside a workspace box. A watchdog stops the robot when commands stop.
Actions here are in the env's normalized space; the workspace box is in robot units.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robot_rl.core.specs import ArraySpec
from robot_rl.errors import ConfigError


@dataclass
class SafetyConfig:
    max_delta: float | None = None  # largest change of any action dim per step (normalized units)
    workspace_low: tuple[float, ...] | None = None  # box for the position the action moves
    workspace_high: tuple[float, ...] | None = None
    position_key: str = "ee_pos"  # robot observation entry that holds that position
    position_dims: tuple[int, ...] = (0, 1, 2)  # action dims that move it
    position_mode: str = "delta"  # "delta": action moves the position; "absolute": action is it
    watchdog_s: float | None = 0.5  # stop the robot when no command arrives for this long

    def __post_init__(self):
        if (self.workspace_low is None) != (self.workspace_high is None):
            raise ValueError("workspace_low and workspace_high go together")
        if self.position_mode not in ("delta", "absolute"):
            raise ValueError(f"position_mode must be 'delta' or 'absolute', got {self.position_mode!r}")
        if self.max_delta is not None and not self.max_delta > 0:
            raise ValueError(f"max_delta must be positive, got {self.max_delta}")
        if self.watchdog_s is not None and not self.watchdog_s > 0:
            raise ValueError(f"watchdog_s must be positive, got {self.watchdog_s}")

    @classmethod
    def from_dict(cls, values: dict) -> SafetyConfig:
        """From a config mapping (lists become tuples); a bad value is a ConfigError."""
        values = dict(values)
        try:
            for key in ("workspace_low", "workspace_high", "position_dims"):
                if values.get(key) is not None:
                    values[key] = tuple(values[key])
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad safety config: {exc}") from exc


class SafetyFilter:
    """Turns any proposed action into one that is safe to send, or None (hold still)."""

    EVENTS = ("nonfinite", "clipped", "delta_limited", "workspace_limited")

    def __init__(self, action_spec: ArraySpec, config: SafetyConfig | None = None):
        self.config = config or SafetyConfig()
        self.shape = tuple(action_spec.shape)
        self._low, self._high = action_spec.bounds()
        self.counts = dict.fromkeys(self.EVENTS, 0)
        self._previous: np.ndarray | None = None
        if self.config.workspace_low is not None:
            self._box_low = np.asarray(self.config.workspace_low, np.float64)
            self._box_high = np.asarray(self.config.workspace_high, np.float64)
            self._dims = list(self.config.position_dims)
            if not (len(self._box_low) == len(self._box_high) == len(self._dims)):
                raise ValueError("workspace bounds and position_dims must have the same length")

    def reset(self, previous: np.ndarray | None = None) -> None:
        """Start of an episode; `previous` (if given) is the action the delta limit starts from."""
        self._previous = None if previous is None else np.asarray(previous, np.float64)

    def __call__(self, action, robot_obs: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
        raw = np.asarray(action)
        if (
            raw.dtype.kind not in "iuf"
        ):  # complex would lose its imaginary part, strings and objects mean a bug
            raise ValueError(f"action has dtype {raw.dtype}, the robot takes real numbers")
        a = raw.astype(np.float64)
        if a.shape != self.shape:
            raise ValueError(f"action has shape {a.shape}, the robot expects {self.shape}")
        if not np.all(np.isfinite(a)):
            self.counts["nonfinite"] += 1
            return None
        out = np.clip(a, -1.0, 1.0)
        if not np.array_equal(out, a):
            self.counts["clipped"] += 1
        if self.config.max_delta is not None and self._previous is not None:
            step = self.config.max_delta
            limited = np.clip(out, self._previous - step, self._previous + step)
            if not np.array_equal(limited, out):
                self.counts["delta_limited"] += 1
            out = limited
        if self.config.workspace_low is not None:
            if robot_obs is None or self.config.position_key not in robot_obs:
                raise ValueError(f"the workspace rule needs robot observation '{self.config.position_key}'")
            boxed = self._keep_in_workspace(out, np.asarray(robot_obs[self.config.position_key], np.float64))
            if not np.allclose(boxed, out, atol=1e-9):
                self.counts["workspace_limited"] += 1
            out = boxed
        self._previous = out
        return out.astype(np.float32)

    def _keep_in_workspace(self, a: np.ndarray, position: np.ndarray) -> np.ndarray:
        d = self._dims
        lo, hi = self._low[d], self._high[d]
        physical = lo + (a[d] + 1.0) * 0.5 * (hi - lo)
        if self.config.position_mode == "delta":
            target = np.clip(position + physical, self._box_low, self._box_high)
            physical = target - position
        else:
            physical = np.clip(physical, self._box_low, self._box_high)
        out = a.copy()
        # Back to normalized space; clip again because a position already outside the box may
        # ask for a larger step back than the action range allows.
        out[d] = np.clip(2.0 * (physical - lo) / np.where(hi > lo, hi - lo, 1.0) - 1.0, -1.0, 1.0)
        return out


class Watchdog:
    """Calls `on_timeout` (the robot's stop) when `feed()` has not been called for `timeout_s`.

    Runs in its own thread so it fires even while the loop is stuck in a slow policy call.
    `lock` is held around the stop so it never interleaves with a command being sent. `clock`
    measures the timeout: the host's monotonic clock, or the loop's (the ROS clock under
    use_sim_time, so a simulator slower than real time does not trip it between ticks).
    """

    def __init__(
        self,
        timeout_s: float,
        on_timeout: Callable[[], None],
        lock: threading.Lock,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.timeout_s = timeout_s
        self._on_timeout = on_timeout
        self._lock = lock
        self._clock = clock
        self._last_feed = clock()
        self._armed = False
        self._tripped = False
        self.trips = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="robot_rl-watchdog", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        self._last_feed = self._clock()
        self._tripped = False
        self._armed = True

    def disarm(self) -> None:
        self._armed = False

    def feed(self) -> None:
        self._last_feed = self._clock()
        self._tripped = False

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=1.0)

    def _watch(self) -> None:
        poll = min(self.timeout_s / 5.0, 0.01)
        while not self._closed.wait(poll):
            now = self._clock()
            if now < self._last_feed:  # the clock jumped back (a simulator reset): time since is unknown
                self._last_feed = now
            if self._armed and not self._tripped and now - self._last_feed > self.timeout_s:
                with self._lock:
                    self._tripped = True
                    self.trips += 1
                    self._on_timeout()
