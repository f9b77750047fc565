"""Teleoperation from a 3Dconnexion SpaceMouse through hidapi: its HID reports parsed here.

Reports: id 1 holds the translation (x, y, z as little-endian int16) and, on newer devices
(SpaceMouse Compact, Wireless), the rotation too (12 bytes); older ones send the rotation as
report id 2; id 3 is the button bitmask. Full scale is about +-350 counts. The device's axes
(x right, y toward the user, z down) are turned into the operator's (x forward, y left, z up).
Left button toggles the gripper, right button intervenes.
"""

from __future__ import annotations

import struct

import numpy as np

from robot_rl.errors import DeviceError
from robot_rl.hardware.teleop_input import DeviceTeleop, TeleopMapper

VENDORS = (0x256F, 0x046D)  # 3Dconnexion, and Logitech (older SpaceMouse / SpaceNavigator)
FULL_SCALE = 350.0
BUTTON_MAP = {0: "gripper", 1: "intervene"}


def parse_report(report: bytes, axes: np.ndarray) -> list[int]:
    """Update `axes` (device frame: x, y, z, rx, ry, rz in [-1, 1]) from one report; return the
    buttons pressed in it (indices), empty for motion reports."""
    kind = report[0]
    if kind == 1:
        values = struct.unpack_from(f"<{min(6, (len(report) - 1) // 2)}h", report, 1)
        axes[: len(values)] = np.clip(np.asarray(values) / FULL_SCALE, -1.0, 1.0)
    elif kind == 2 and len(report) >= 7:
        axes[3:6] = np.clip(np.asarray(struct.unpack_from("<3h", report, 1)) / FULL_SCALE, -1.0, 1.0)
    elif kind == 3 and len(report) >= 2:
        mask = int.from_bytes(report[1:], "little")
        return [bit for bit in range(8 * (len(report) - 1)) if mask >> bit & 1]
    return []


def to_operator(device_axes: np.ndarray) -> np.ndarray:
    """Device (x right, y toward the user, z down) -> operator (x forward, y left, z up)."""
    x, y, z, rx, ry, rz = device_axes
    return np.array([-y, -x, -z, -ry, -rx, -rz])


class SpaceMouseTeleop(DeviceTeleop):
    def __init__(self, mapper: TeleopMapper, path: bytes | None = None):
        super().__init__(mapper)
        self.path = path
        self._device = None
        self._axes = np.zeros(6)
        self._held: set[int] = set()

    def _open(self) -> None:
        import hid

        path = self.path
        if path is None:
            found = [
                d
                for d in hid.enumerate()
                if d["vendor_id"] in VENDORS and "space" in (d.get("product_string") or "").lower()
            ]
            if not found:
                raise DeviceError(
                    "no SpaceMouse found "
                    "(is it plugged in, and does the udev rule in docs/hardware.md give you access?)"
                )
            path = found[0]["path"]
        self._device = hid.device()
        try:
            self._device.open_path(path)
        except OSError as exc:
            raise DeviceError(f"cannot open the SpaceMouse: {exc}") from None

    def _close(self) -> None:
        if self._device is not None:
            self._device.close()
            self._device = None

    def feed(self, report: bytes) -> None:
        buttons = parse_report(bytes(report), self._axes)
        if report[0] == 3:
            for bit in set(buttons) - self._held:  # newly pressed
                if bit in BUTTON_MAP:
                    self.press(BUTTON_MAP[bit])
            self._held = set(buttons)
        self.set_axes(to_operator(self._axes))

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                report = self._device.read(64, 10)  # 10 ms timeout
            except OSError as exc:
                self.device_lost(f"SpaceMouse: {exc}")
                return
            if report:
                self.feed(bytes(report))
