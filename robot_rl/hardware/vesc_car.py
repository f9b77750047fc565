"""A real RC car on a VESC motor controller over USB serial, behind the same `Robot` protocol as
the simulated car: [steer rad, speed m/s] in; odometry, IMU and a timestamp out, in the car kind's
spec (robot_rl/tasks/car.py) that the sim and ROS cars report too.

- Speed: COMM_SET_RPM with erpm = speed_to_erpm_gain * speed + offset (a standing command brakes
  with COMM_SET_CURRENT_BRAKE instead of holding zero rpm); steering: the VESC's servo output,
  servo = steer_to_servo_gain * steer + offset, within [servo_min, servo_max]. The defaults are
  F1TENTH's (vesc.yaml); calibrate them for your car in robot_rl/conf/robot/vesc_car.yaml.
- Odometry as F1TENTH's vesc_to_odom: speed from the motor's erpm, yaw rate from the IMU's gyro
  (or the bicycle model on the commanded steering without one), integrated between readings. The
  wheel speed is the same erpm through the gearing: speed / wheel_radius.
- The action bounds are the car kind's (+-0.35 rad, +-3 m/s): max_steer / max_speed only clip
  below them, so a normalized action means what it meant in the sim.
- A watchdog thread brakes when no command has come for `watchdog_s` (a stalled policy or a
  dead loop); `stop()` brakes too and is safe from any thread. The VESC's own timeout (its app
  setting) brakes if the USB link itself drops. A lost link raises DeviceError.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from robot_rl.core.protocols import Robot
from robot_rl.errors import ConfigError, DeviceError, require
from robot_rl.hardware import vesc_protocol as vp
from robot_rl.tasks import car as car_spec
from robot_rl.utils.geometry import GRAVITY


@dataclass
class VescCarConfig:
    port: str = "/dev/ttyACM0"
    baudrate: int = 115200
    speed_to_erpm_gain: float = 4614.0  # erpm per m/s
    speed_to_erpm_offset: float = 0.0
    steer_to_servo_gain: float = -1.2135  # servo units per rad
    steer_to_servo_offset: float = 0.5304
    servo_min: float = 0.15
    servo_max: float = 0.85
    max_speed: float = 3.0  # m/s, forward and reverse; a clip within the spec's 3 m/s
    max_steer: float = 0.35  # rad; a clip within the spec's 0.35 rad
    wheel_radius: float = 0.05  # m: turns the motor's speed into the driven wheels' rad/s
    brake_current: float = 20.0  # A, when stopping
    wheelbase: float = 0.33  # m, for the bicycle model without an IMU
    use_imu: bool = True  # COMM_GET_IMU_DATA for gyro and acceleration
    collision_accel_g: float = 2.0  # a horizontal jolt above this counts as a collision
    watchdog_s: float = 0.25  # brake when no command came for this long
    read_timeout_s: float = 0.1  # a reply later than this: the link is lost

    def __post_init__(self):
        if self.speed_to_erpm_gain == 0 or self.steer_to_servo_gain == 0:
            raise ConfigError("speed_to_erpm_gain and steer_to_servo_gain must not be zero")
        if not 0 <= self.servo_min < self.servo_max <= 1:
            raise ConfigError(
                f"servo limits must satisfy 0 <= min < max <= 1, got {self.servo_min}, {self.servo_max}"
            )
        if not (self.wheel_radius > 0 and self.watchdog_s > 0 and self.read_timeout_s > 0):
            raise ConfigError("wheel_radius, watchdog_s and read_timeout_s must be positive")
        problem = car_spec.check_limits(self.max_steer, self.max_speed)
        if problem:
            raise ConfigError(problem)


class VescCar(Robot):
    def __init__(self, cfg: VescCarConfig):
        self.cfg = cfg
        self.observation_spec = car_spec.observation_spec()
        self.action_spec = car_spec.action_spec()
        self._serial = None
        self._reader = vp.PacketReader()
        self._io = threading.Lock()  # one request/reply at a time; stop() may come from the watchdog thread
        self._pose = np.zeros(3)
        self._steer = 0.0
        self._last_obs_t: float | None = None
        self._last_command = time.monotonic()
        self._braked = True
        self.watchdog_trips = 0
        self._stop_event = threading.Event()
        self._watchdog: threading.Thread | None = None

    # --- Robot -------------------------------------------------------------------------------
    def connect(self) -> None:
        if self._serial is not None:
            return
        serial = require("serial", "hardware", "the VESC car")
        try:
            self._serial = serial.Serial(
                self.cfg.port,
                self.cfg.baudrate,
                timeout=self.cfg.read_timeout_s,
                write_timeout=self.cfg.read_timeout_s,
            )
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"cannot open the VESC on {self.cfg.port}: {exc}") from None
        try:
            self._request(bytes([vp.COMM_FW_VERSION]), vp.COMM_FW_VERSION)
        except DeviceError:
            self._close_port()
            raise DeviceError(f"nothing answers as a VESC on {self.cfg.port}") from None
        self._last_command = time.monotonic()
        self._stop_event.clear()
        self._watchdog = threading.Thread(target=self._watch, name="vesc-watchdog", daemon=True)
        self._watchdog.start()

    def disconnect(self) -> None:
        self._stop_event.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=1)
            self._watchdog = None
        if self._serial is not None:
            try:
                self.stop()
            finally:
                self._close_port()

    def observe(self) -> dict[str, np.ndarray]:
        values = vp.decode_values(self._request(vp.get_values(), vp.COMM_GET_VALUES))
        imu = (
            vp.decode_imu(self._request(vp.get_imu_data(), vp.COMM_GET_IMU_DATA))
            if self.cfg.use_imu
            else None
        )
        now = time.monotonic()
        speed = (values.erpm - self.cfg.speed_to_erpm_offset) / self.cfg.speed_to_erpm_gain
        if imu is not None:
            gyro = np.radians([imu["gyro_x"], imu["gyro_y"], imu["gyro_z"]])
            accel = GRAVITY * np.array([imu["acc_x"], imu["acc_y"], imu["acc_z"]])
        else:
            gyro = np.array([0.0, 0.0, speed * math.tan(self._steer) / self.cfg.wheelbase])
            accel = np.array([0.0, 0.0, GRAVITY])
        if self._last_obs_t is not None:  # integrate the odometry over the time since the last reading
            dt = now - self._last_obs_t
            x, y, yaw = self._pose
            self._pose = np.array(
                [
                    x + speed * math.cos(yaw) * dt,
                    y + speed * math.sin(yaw) * dt,
                    math.remainder(yaw + gyro[2] * dt, 2 * math.pi),
                ]
            )
        self._last_obs_t = now
        jolt = math.hypot(accel[0], accel[1]) / GRAVITY > self.cfg.collision_accel_g
        return {
            "pose": self._pose.astype(np.float32),
            "velocity": np.array([speed, 0.0, 0.0], np.float32),
            "gyro": gyro.astype(np.float32),
            "accel": accel.astype(np.float32),
            "wheel_speed": np.array([speed / self.cfg.wheel_radius], np.float32),
            "steer": np.array([self._steer], np.float32),
            "collision": np.array([float(jolt)], np.float32),
            "timestamp": np.float64(now),
        }

    def command(self, action: np.ndarray) -> None:
        action = np.asarray(action, np.float64)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ValueError(f"refusing to send {action} to the car: [steer, speed], finite")
        steer = float(np.clip(action[0], -self.cfg.max_steer, self.cfg.max_steer))
        speed = float(np.clip(action[1], -self.cfg.max_speed, self.cfg.max_speed))
        servo = float(
            np.clip(
                self.cfg.steer_to_servo_gain * steer + self.cfg.steer_to_servo_offset,
                self.cfg.servo_min,
                self.cfg.servo_max,
            )
        )
        motor = (
            vp.set_current_brake(self.cfg.brake_current)
            if abs(speed) < 0.02
            else vp.set_rpm(self.cfg.speed_to_erpm_gain * speed + self.cfg.speed_to_erpm_offset)
        )
        self._send(vp.set_servo_pos(servo), motor)
        self._steer = (servo - self.cfg.steer_to_servo_offset) / self.cfg.steer_to_servo_gain
        self._last_command, self._braked = time.monotonic(), False

    def stop(self) -> None:
        try:
            self._send(vp.set_current_brake(self.cfg.brake_current))
        except DeviceError:
            pass  # the link is gone: the VESC's own timeout brakes
        self._braked = True

    # --- car-specific ------------------------------------------------------------------------
    def pose(self) -> np.ndarray:
        """The odometry estimate (x, y, yaw) as of the last observation."""
        return self._pose.copy()

    def reset_odometry(self, x: float = 0.0, y: float = 0.0, yaw: float = 0.0) -> None:
        self._pose = np.array([x, y, yaw], np.float64)

    # --- the link ----------------------------------------------------------------------------
    def _send(self, *payloads: bytes) -> None:
        if self._serial is None:
            raise DeviceError("the VESC car is not connected")
        with self._io:
            try:
                self._serial.write(b"".join(vp.encode(p) for p in payloads))
            except Exception as exc:  # pyserial raises SerialException, or OSError from the port
                raise DeviceError(f"lost the VESC on {self.cfg.port}: {exc}") from None

    def _request(self, payload: bytes, reply_id: int) -> bytes:
        """Send a request and wait (up to read_timeout_s) for the reply with `reply_id`."""
        if self._serial is None:
            raise DeviceError("the VESC car is not connected")
        with self._io:
            try:
                self._serial.write(vp.encode(payload))
                deadline = time.monotonic() + self.cfg.read_timeout_s
                while time.monotonic() < deadline:
                    data = self._serial.read(max(1, self._serial.in_waiting))
                    for reply in self._reader.feed(data):
                        if reply[0] == reply_id:
                            return reply
            except Exception as exc:
                raise DeviceError(f"lost the VESC on {self.cfg.port}: {exc}") from None
        raise DeviceError(
            f"the VESC on {self.cfg.port} did not answer within {self.cfg.read_timeout_s * 1000:.0f} ms"
        )

    def _watch(self) -> None:
        while not self._stop_event.wait(self.cfg.watchdog_s / 4):
            if not self._braked and time.monotonic() - self._last_command > self.cfg.watchdog_s:
                self.watchdog_trips += 1
                self.stop()

    def _close_port(self) -> None:
        try:
            self._serial.close()
        except Exception:
            pass
        self._serial = None


def from_config(cfg) -> VescCar:
    """A VescCar from a robot config entry like robot_rl/conf/robot/vesc_car.yaml."""
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    values.pop("name", None)
    values.pop("kind", None)
    try:
        return VescCar(VescCarConfig(**values))
    except TypeError as exc:
        raise ConfigError(f"bad vesc_car config: {exc}") from None
