"""Teleoperation from a terminal keyboard: works over SSH, no display or X server needed.

The terminal is put in cbreak mode (keys arrive one by one, unechoed) and restored on disconnect.
A terminal reports key presses, never releases, so each press moves along its axis for `hold_s`;
holding a key down repeats it (the terminal's auto-repeat) and so keeps moving.

    w/s  +x/-x (forward/back)     a/d  +y/-y (left/right)     r/f  +z/-z (up/down)
    q/e  +yaw/-yaw                space  gripper open/close   i  intervene on/off
    Enter  success   Backspace  failure   x  re-record   Esc  stop
"""

from __future__ import annotations

import os
import re
import select
import sys
import termios
import time
import tty

import numpy as np

from robot_rl.errors import DeviceError
from robot_rl.hardware.teleop_input import DeviceTeleop, TeleopMapper

AXIS_KEYS = {
    "w": (0, 1),
    "s": (0, -1),
    "a": (1, 1),
    "d": (1, -1),
    "r": (2, 1),
    "f": (2, -1),
    "q": (5, 1),
    "e": (5, -1),
}
BUTTON_KEYS = {
    " ": "gripper",
    "i": "intervene",
    "\r": "success",
    "\n": "success",
    "\x7f": "failure",
    "\x08": "failure",
    "x": "rerecord",
    "\x1b": "stop",
}
HELP = (
    "w/s a/d r/f: move x y z, q/e: yaw, space: gripper, i: intervene, "
    "Enter: success, Backspace: failure, x: re-record, Esc: stop"
)


class KeyboardTeleop(DeviceTeleop):
    def __init__(self, mapper: TeleopMapper, fd: int | None = None, hold_s: float = 0.15):
        super().__init__(mapper)
        self.fd, self.hold_s = fd, hold_s
        self._saved = None
        self._until = np.zeros(6)  # per axis: until when the last press moves it
        self._sign = np.zeros(6)

    def _open(self) -> None:
        if self.fd is None:
            if not sys.stdin.isatty():
                raise DeviceError(
                    "teleop=keyboard needs a terminal on stdin (run it in a shell, or over ssh -t)"
                )
            self.fd = sys.stdin.fileno()
        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)

    def _close(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def handle(self, key: str, now: float) -> None:
        key = key.lower() if key.isalpha() else key
        if key in AXIS_KEYS:
            axis, sign = AXIS_KEYS[key]
            self._until[axis], self._sign[axis] = now + self.hold_s, sign
        elif key in BUTTON_KEYS:
            self.press(BUTTON_KEYS[key])

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.01)
            now = time.monotonic()
            if ready:
                try:
                    data = os.read(self.fd, 64)
                except OSError as exc:
                    self.device_lost(f"terminal: {exc.strerror}")
                    return
                # Arrow and function keys arrive as escape sequences: drop them (a lone Esc stops).
                text = re.sub(r"\x1b(\[[0-9;]*[A-Za-z~]|O[A-Za-z])", "", data.decode(errors="ignore"))
                for key in text:
                    self.handle(key, now)
            self.set_axes(np.where(self._until > now, self._sign, 0.0))
