"""Plain data types shared by robots, cameras, teleop devices, tasks and the loop."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ArraySpec:
    """Shape, dtype and (for actions) bounds of one array, in the robot's own units."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: np.ndarray | float | None = None
    high: np.ndarray | float | None = None
    names: tuple[str, ...] = ()

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if self.low is None or self.high is None:
            raise ValueError("this spec has no bounds")
        low = np.broadcast_to(np.asarray(self.low, np.float64), self.shape)
        high = np.broadcast_to(np.asarray(self.high, np.float64), self.shape)
        return low, high


@dataclass
class Frame:
    """One camera image (uint8 HWC, RGB), the host-monotonic time it was captured and, from
    depth cameras, depth aligned to the image (uint16 millimetres, HW)."""

    image: np.ndarray
    timestamp: float
    depth: np.ndarray | None = None


@dataclass
class TeleopCommand:
    """What a teleop device says this tick.

    `action` is in the env's normalized action space ([-1, 1]); `intervening` means the human (or a
    scripted stand-in) wants its action executed instead of the policy's. `events` holds any of
    "success", "failure", "rerecord", "stop".
    """

    action: np.ndarray
    intervening: bool = False
    events: frozenset[str] = field(default_factory=frozenset)
