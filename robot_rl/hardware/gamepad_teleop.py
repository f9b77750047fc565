"""Teleoperation from a gamepad through Linux evdev (/dev/input/event*): the kernel's
input_event records are read and parsed here (no pygame or display needed).

Default layout (Xbox-style): left stick x/y, right stick vertical z and horizontal yaw; A toggles
the gripper, B intervenes, Start = success, Back = failure, X = re-record, the Xbox/mode button
stops. Stick ranges come from the device (EVIOCGABS) or from `axis_ranges`.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct

import numpy as np

from robot_rl.errors import DeviceError
from robot_rl.hardware.teleop_input import DeviceTeleop, TeleopMapper

EVENT = struct.Struct("llHHi")  # struct input_event: timeval (sec, usec), type, code, value
EV_KEY, EV_ABS = 0x01, 0x03
ABS_X, ABS_Y, ABS_RX, ABS_RY = 0x00, 0x01, 0x03, 0x04
BTN_SOUTH, BTN_EAST, BTN_NORTH, BTN_WEST, BTN_SELECT, BTN_START, BTN_MODE = (
    0x130,
    0x131,
    0x133,
    0x134,
    0x13A,
    0x13B,
    0x13C,
)
# evdev axis code -> (our axis, sign): the operator's forward is stick up (evdev y grows downward).
AXES = {ABS_Y: (0, -1), ABS_X: (1, -1), ABS_RY: (2, -1), ABS_RX: (5, -1)}
BUTTONS = {
    BTN_SOUTH: "gripper",
    BTN_EAST: "intervene",
    BTN_START: "success",
    BTN_SELECT: "failure",
    BTN_NORTH: "rerecord",
    BTN_WEST: "rerecord",
    BTN_MODE: "stop",
}
XBOX_RANGE = (-32768, 32767)


def _eviocgabs(code: int) -> int:
    # _IOR('E', 0x40 + code, struct input_absinfo): six int32
    return (2 << 30) | (24 << 16) | (ord("E") << 8) | (0x40 + code)


class GamepadTeleop(DeviceTeleop):
    def __init__(
        self, mapper: TeleopMapper, device: str = "/dev/input/event0", axis_ranges: dict | None = None
    ):
        super().__init__(mapper)
        self.device = device
        self.ranges = {code: XBOX_RANGE for code in AXES} | {
            int(k): tuple(v) for k, v in (axis_ranges or {}).items()
        }
        self._fd = None
        self._axes = np.zeros(6)
        self._buffer = b""

    def _open(self) -> None:
        try:
            self._fd = os.open(self.device, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise DeviceError(
                f"cannot open gamepad {self.device}: {exc.strerror} "
                "(is it plugged in, and are you in the 'input' group?)"
            ) from None
        for code in AXES:  # the device's own ranges, where it reports them
            try:
                info = fcntl.ioctl(self._fd, _eviocgabs(code), bytes(24))
                _, low, high, *_ = struct.unpack("6i", info)
                if high > low:
                    self.ranges[code] = (low, high)
            except OSError:
                pass  # not an evdev device (a file of recorded events): keep the configured ranges

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def feed(self, data: bytes) -> None:
        """Parse raw input_event bytes (from the device, or a recording)."""
        self._buffer += data
        whole = len(self._buffer) // EVENT.size * EVENT.size
        for _, _, kind, code, value in EVENT.iter_unpack(self._buffer[:whole]):
            if kind == EV_ABS and code in AXES:
                axis, sign = AXES[code]
                low, high = self.ranges[code]
                self._axes[axis] = sign * np.clip((2.0 * (value - low) / (high - low)) - 1.0, -1.0, 1.0)
            elif kind == EV_KEY and code in BUTTONS and value == 1:  # 1: pressed (0 released, 2 repeat)
                self.press(BUTTONS[code])
        self._buffer = self._buffer[whole:]
        self.set_axes(self._axes.copy())

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.01)
            if not ready:
                continue
            try:
                data = os.read(self._fd, EVENT.size * 64)
            except BlockingIOError:
                continue
            except OSError as exc:
                self.device_lost(f"gamepad {self.device}: {exc.strerror}")
                return
            if not data:
                self.device_lost(f"gamepad {self.device} closed")
                return
            self.feed(data)
