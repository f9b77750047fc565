"""What the human teleop devices share: their axes and buttons become one TeleopCommand.

A device fills a `TeleopState` (six motion axes in [-1, 1] — x, y, z, roll, pitch, yaw in the
operator's frame — plus named button presses) from its own thread; `TeleopMapper` turns that into
the env's normalized action and the loop's events:

- arm (`target: arm`): [dx, dy, dz, dyaw, gripper] = [x, y, z, yaw] * scale, gripper -1 open / +1
  closed, toggled by the `gripper` button;
- car (`target: car`): [steer, speed] = [y (left: positive steer, a left turn), x (forward)] * scale.

Buttons: `intervene` toggles whether the human's action is executed (a policy runs otherwise; with
no policy the human always drives), `success` / `failure` end the episode with that label,
`rerecord` discards it, `stop` ends the session. Motion below `deadzone` reads as zero.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from robot_rl.core.protocols import Teleop
from robot_rl.core.specs import TeleopCommand
from robot_rl.errors import ConfigError, DeviceError

EVENTS = ("success", "failure", "rerecord", "stop")
BUTTONS = ("gripper", "intervene", *EVENTS)


@dataclass
class TeleopState:
    axes: np.ndarray = field(default_factory=lambda: np.zeros(6))
    pressed: list[str] = field(default_factory=list)  # button presses since the last read


class TeleopMapper:
    def __init__(
        self, target: str = "arm", scale: float = 1.0, deadzone: float = 0.05, intervening: bool = False
    ):
        if target not in ("arm", "car"):
            raise ConfigError(f"teleop target must be 'arm' or 'car', got {target!r}")
        if not 0 <= deadzone < 1:
            raise ConfigError(f"deadzone must be in [0, 1), got {deadzone}")
        self.target, self.scale, self.deadzone = target, scale, deadzone
        self.start_intervening = intervening
        self.intervening, self.gripper_closed = intervening, False

    def reset(self) -> None:
        self.intervening, self.gripper_closed = self.start_intervening, False

    def __call__(self, state: TeleopState) -> TeleopCommand:
        axes = np.clip(np.asarray(state.axes, np.float64), -1.0, 1.0)
        # Deadzone, rescaled so motion starts from zero at its edge.
        axes = np.sign(axes) * np.maximum(np.abs(axes) - self.deadzone, 0.0) / (1.0 - self.deadzone)
        for button in state.pressed:
            if button == "gripper":
                self.gripper_closed = not self.gripper_closed
            elif button == "intervene":
                self.intervening = not self.intervening
        if self.target == "arm":
            motion = np.clip(axes[[0, 1, 2, 5]] * self.scale, -1.0, 1.0)
            action = np.concatenate([motion, [1.0 if self.gripper_closed else -1.0]])
        else:
            action = np.clip(np.array([axes[1], axes[0]]) * self.scale, -1.0, 1.0)
        events = frozenset(b for b in state.pressed if b in EVENTS)
        return TeleopCommand(action.astype(np.float32), self.intervening, events)


class DeviceTeleop(Teleop):
    """A human device read by a background thread (`_read_loop`, which updates `self._state`
    under `self._lock`); `read()` maps the latest state without waiting."""

    def __init__(self, mapper: TeleopMapper):
        self.mapper = mapper
        self._state = TeleopState()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None  # set when the device went away: read() then raises

    def connect(self) -> None:
        if self._thread is None:
            self._open()
            self._stop.clear()
            self._thread = threading.Thread(target=self._read_loop, name=type(self).__name__, daemon=True)
            self._thread.start()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self._close()

    def reset(self) -> None:
        self.mapper.reset()
        with self._lock:  # keys pressed during the reset period do not end the next episode
            self._state.pressed = []

    def read(self) -> TeleopCommand:
        if self.lost:
            raise DeviceError(self.lost)
        with self._lock:
            state = TeleopState(self._state.axes.copy(), self._state.pressed)
            self._state.pressed = []
        return self.mapper(state)

    def press(self, button: str) -> None:
        with self._lock:
            self._state.pressed.append(button)

    def device_lost(self, what: str) -> None:
        """The read thread lost its device: no motion from here on, and the next read() raises."""
        with self._lock:
            self._state.axes = np.zeros(6)
        self.lost = f"teleop device lost: {what}"

    def set_axes(self, axes) -> None:
        with self._lock:
            self._state.axes = np.asarray(axes, np.float64)

    # --- what a device implements --------------------------------------------------------------
    def _open(self) -> None: ...

    def _close(self) -> None: ...

    def _read_loop(self) -> None: ...
