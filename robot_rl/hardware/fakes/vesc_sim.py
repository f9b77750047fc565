"""A VESC on a pseudo-terminal: the firmware's side of the UART protocol, for tests and dry runs.

`with VescSimulator() as vesc:` opens a pty; `vesc.port` is its device path, which pyserial (and
so `VescCar`) opens like any USB-serial VESC. A thread decodes the packets (CRC checked), runs a
first-order motor model for speed, brake and current commands, holds the servo position, and
answers COMM_GET_VALUES and COMM_GET_IMU_DATA. As the firmware does, when no motor command
arrives for `timeout_s` it brakes with `timeout_brake_current` (the VESC app setting that stops a
car whose link dropped). `unplug()` makes it vanish as a pulled USB cable does.
"""

from __future__ import annotations

import struct
import threading
import time

from robot_rl.hardware import vesc_protocol as vp
from robot_rl.hardware.fakes.pty_device import PtyDevice

MOTOR_COMMANDS = {
    vp.COMM_SET_DUTY,
    vp.COMM_SET_CURRENT,
    vp.COMM_SET_CURRENT_BRAKE,
    vp.COMM_SET_RPM,
    vp.COMM_ALIVE,
}


class VescSimulator(PtyDevice):
    name = "vesc-sim"

    def __init__(
        self,
        timeout_s: float = 0.5,
        timeout_brake_current: float = 10.0,
        tau_s: float = 0.1,
        erpm_per_amp: float = 300.0,
        v_in: float = 12.0,
    ):
        self.timeout_s, self.timeout_brake_current, self.tau_s = timeout_s, timeout_brake_current, tau_s
        self.erpm_per_amp, self.v_in = erpm_per_amp, v_in
        self.mode, self.target = "brake", 0.0  # rpm | current | duty | brake, with its set-point
        self.erpm, self.servo, self.tachometer, self.tachometer_abs = 0.0, 0.5, 0.0, 0.0
        self.log: list[tuple[float, int, float]] = []  # (time, command id, value) of every command received
        self.timeouts = 0  # times the firmware timeout braked
        self.reader = vp.PacketReader()
        self._lock = threading.Lock()
        self._last_command = time.monotonic()
        self._timed_out = False
        super().__init__()

    # --- what tests look at ------------------------------------------------------------------
    def commands(self, command_id: int) -> list[float]:
        with self._lock:
            return [v for _, c, v in self.log if c == command_id]

    @property
    def braking(self) -> bool:
        return self.mode == "brake" and self.target > 0

    # --- the firmware --------------------------------------------------------------------------
    def on_bytes(self, data: bytes, now: float) -> bytes:
        replies = (self._handle(payload, now) for payload in self.reader.feed(data))
        return b"".join(vp.encode(r) for r in replies if r is not None)

    def _handle(self, payload: bytes, now: float) -> bytes | None:
        command, body = payload[0], payload[1:]
        value = 0.0
        with self._lock:
            if command == vp.COMM_SET_RPM:
                value = struct.unpack(">i", body[:4])[0]
                self.mode, self.target = "rpm", float(value)
            elif command == vp.COMM_SET_CURRENT_BRAKE:
                value = struct.unpack(">i", body[:4])[0] / 1000
                self.mode, self.target = "brake", value
            elif command == vp.COMM_SET_CURRENT:
                value = struct.unpack(">i", body[:4])[0] / 1000
                self.mode, self.target = "current", value
            elif command == vp.COMM_SET_DUTY:
                value = struct.unpack(">i", body[:4])[0] / 100_000
                self.mode, self.target = "duty", value
            elif command == vp.COMM_SET_SERVO_POS:
                value = struct.unpack(">h", body[:2])[0] / 1000
                self.servo = value
            if command in MOTOR_COMMANDS:
                self._last_command, self._timed_out = now, False
            self.log.append((now, command, float(value)))
            if command == vp.COMM_GET_VALUES:
                return vp.encode_values(
                    vp.Values(
                        temp_fet=30.0,
                        temp_motor=35.0,
                        current_motor=self._current(),
                        current_in=0.0,
                        duty=self.erpm / 40_000,
                        erpm=self.erpm,
                        v_in=self.v_in,
                        tachometer=int(self.tachometer),
                        tachometer_abs=int(self.tachometer_abs),
                        fault=0,
                    )
                )
            if command == vp.COMM_GET_IMU_DATA:
                (mask,) = struct.unpack(">H", body[:2])
                return vp.encode_imu(
                    {
                        "roll": 0.0,
                        "pitch": 0.0,
                        "yaw": 0.0,
                        "acc_x": 0.0,
                        "acc_y": 0.0,
                        "acc_z": 1.0,
                        "gyro_x": 0.0,
                        "gyro_y": 0.0,
                        "gyro_z": 0.0,
                    },
                    mask,
                )
            if command == vp.COMM_FW_VERSION:
                return bytes([vp.COMM_FW_VERSION, 6, 2]) + b"robot_rl vesc simulator\x00"
        return None

    def _current(self) -> float:
        return self.target if self.mode == "current" else 0.0

    def tick(self, dt: float, now: float) -> None:
        with self._lock:
            if not self._timed_out and now - self._last_command > self.timeout_s:
                self.mode, self.target, self._timed_out = "brake", self.timeout_brake_current, True
                self.timeouts += 1
            if self.mode == "rpm":
                goal, tau = self.target, self.tau_s
            elif self.mode == "duty":
                goal, tau = self.target * 40_000, self.tau_s
            elif self.mode == "current":
                goal, tau = self.erpm + self.target * self.erpm_per_amp, self.tau_s
            else:  # brake: harder braking stops sooner; 0 A coasts
                goal, tau = 0.0, self.tau_s * 10 / max(self.target, 1e-3) if self.target > 0 else 10.0
            self.erpm += (goal - self.erpm) * min(1.0, dt / tau)
            step = self.erpm * dt / 60 * 6  # six tachometer counts per electrical revolution
            self.tachometer += step
            self.tachometer_abs += abs(step)
