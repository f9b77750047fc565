"""A Dynamixel arm (WidowX-class: X-series servos, Protocol 2.0) behind the same `Robot` protocol
as the simulated arm: action [dx, dy, dz, dyaw, gripper] in metres and radians per step, solved by
damped least-squares IK on the arm's MuJoCo model, or joint targets with `control: joint`.

- One bulk read per observation (present velocity and position of every servo), one bulk write
  per command (goal positions); `dynamixel_sdk` does the Protocol 2.0 framing.
- Calibration: joint angle = sign * (servo angle - offset), per joint, from the robot's config
  (robot_rl/conf/robot/); targets are clipped to the config's joint limits, which are also
  written into the servos' own position limits, so the firmware refuses what the config refuses.
- Each command moves any joint by at most `max_joint_step` rad from the last goal.
- `stop()` holds the present position (torque stays on: a limp arm falls); `disconnect()` turns
  the torque off. `dry_run` reads the servos and computes every goal but never enables torque or
  writes a goal: the whole loop runs and the motors receive nothing.
- A bus that stops answering raises DeviceError (after `retries` attempts), and the loop stops.
"""

from __future__ import annotations

import select
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robot_rl.core.protocols import Robot
from robot_rl.core.specs import ArraySpec
from robot_rl.errors import ConfigError, DeviceError
from robot_rl.hardware import dynamixel_xseries as x
from robot_rl.tasks.arm import down_rotation, yaw_of  # the same tool frame and yaw as the sim arm

ASSETS = Path(__file__).parent / "assets"


def _waiting_port(path: str):
    """dynamixel_sdk's PortHandler, except that a read finding no bytes waits for them in the
    kernel (up to 1 ms) instead of returning at once. The SDK polls for a status packet in a tight
    loop: that keeps a core busy through every transaction and, in CPython, takes the GIL back
    before the process's other threads (the watchdog, camera readers, an in-process bus simulator)
    get it, so a reply they should produce or handle can miss the SDK's ~35 ms packet timeout."""
    from dynamixel_sdk import PortHandler

    class WaitingPortHandler(PortHandler):
        def readPort(self, length):
            if self.ser.in_waiting == 0:
                select.select([self.ser.fileno()], [], [], 0.001)
            return super().readPort(length)

    return WaitingPortHandler(path)


@dataclass
class JointConfig:
    name: str
    id: int
    low: float  # joint limits, rad (after calibration)
    high: float
    offset: float = 0.0  # servo angle (rad) at the joint's zero
    sign: int = 1  # +1 or -1: servo direction relative to the model's joint axis

    def __post_init__(self):
        if self.sign not in (1, -1):
            raise ConfigError(f"joint {self.name}: sign must be 1 or -1, got {self.sign}")
        if not self.low < self.high:
            raise ConfigError(f"joint {self.name}: low must be below high, got {self.low}, {self.high}")


@dataclass
class GripperConfig:
    id: int
    open: float  # servo angle, rad, fully open
    closed: float  # servo angle, rad, fully closed


@dataclass
class DynamixelArmConfig:
    port: str = "/dev/ttyDXL"
    baudrate: int = 1_000_000
    model: str = (
        "widowx250"  # MJCF in robot_rl/hardware/assets (or a path) for IK; its joints are named as `joints`
    )
    tcp_site: str = "tcp"
    joints: list = field(default_factory=list)
    gripper: dict | None = None
    control: str = "ee"  # ee: [dx, dy, dz, dyaw, gripper]; joint: [q_1..q_n, gripper]
    max_step_m: float = 0.02  # largest end-effector step per command (ee control)
    max_yaw_step: float = 0.1  # rad per command (ee control)
    max_joint_step: float = 0.1  # rad per command, any joint
    ik_damping: float = 0.05
    profile_velocity: int = 0  # servo profile (units of 0.229 rpm; 0: the servo's maximum)
    retries: int = 3  # bus transactions tried before the link counts as lost
    dry_run: bool = False
    home: list | None = None  # joint angles `go_home` returns to (the reset between episodes)

    def __post_init__(self):
        self.joints = [j if isinstance(j, JointConfig) else JointConfig(**j) for j in self.joints]
        if not self.joints:
            raise ConfigError("a Dynamixel arm needs joints (name, id, low, high) in its robot config")
        if self.gripper is not None and not isinstance(self.gripper, GripperConfig):
            self.gripper = GripperConfig(**self.gripper)
        ids = [j.id for j in self.joints] + ([self.gripper.id] if self.gripper else [])
        if len(set(ids)) != len(ids):
            raise ConfigError(f"servo ids must be distinct, got {ids}")
        if self.control not in ("ee", "joint"):
            raise ConfigError(f"control must be 'ee' or 'joint', got {self.control!r}")
        if not (
            self.max_step_m > 0 and self.max_yaw_step > 0 and self.max_joint_step > 0 and self.retries >= 1
        ):
            raise ConfigError(
                "max_step_m, max_yaw_step, max_joint_step must be positive and retries at least 1"
            )


class ArmKinematics:
    """Forward kinematics and one damped least-squares IK step on the arm's MuJoCo model."""

    def __init__(self, model: str, joint_names: list[str], site: str, damping: float):
        import mujoco

        path = Path(model) if Path(model).suffix == ".xml" else ASSETS / f"{model}.xml"
        if not path.exists():
            raise ConfigError(f"no arm model {model!r} (looked for {path})")
        self._mj = mujoco
        self.model = mujoco.MjModel.from_xml_path(str(path))
        self.data = mujoco.MjData(self.model)
        try:
            joints = [self.model.joint(n) for n in joint_names]
            self._site = self.model.site(site).id
        except KeyError as exc:
            raise ConfigError(f"arm model {path.name} has no {exc}") from None
        self._qadr = np.array([self.model.jnt_qposadr[j.id] for j in joints])
        self._dadr = np.array([self.model.jnt_dofadr[j.id] for j in joints])
        self._damping2 = damping**2
        self._jacp, self._jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))

    def pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tool position and rotation matrix at joint angles q."""
        self.data.qpos[self._qadr] = q
        self._mj.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self._site].copy(), self.data.site_xmat[self._site].reshape(3, 3).copy()

    def step(self, q: np.ndarray, delta: np.ndarray, goal_rotation: np.ndarray) -> np.ndarray:
        """Joint change that moves the tool by `delta` and turns it toward `goal_rotation`."""
        _, rotation = self.pose(q)
        self._mj.mj_comPos(self.model, self.data)
        self._mj.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self._site)
        jac = np.vstack([self._jacp[:, self._dadr], self._jacr[:, self._dadr]])
        err = goal_rotation @ rotation.T  # its rotation vector, to first order
        twist = np.concatenate(
            [delta, 0.5 * np.array([err[2, 1] - err[1, 2], err[0, 2] - err[2, 0], err[1, 0] - err[0, 1]])]
        )
        return jac.T @ np.linalg.solve(jac @ jac.T + self._damping2 * np.eye(6), twist)


class DynamixelArm(Robot):
    def __init__(self, cfg: DynamixelArmConfig):
        self.cfg = cfg
        self.joints = cfg.joints
        n = len(self.joints)
        self.kinematics = ArmKinematics(
            cfg.model, [j.name for j in self.joints], cfg.tcp_site, cfg.ik_damping
        )
        self._low = np.array([j.low for j in self.joints])
        self._high = np.array([j.high for j in self.joints])
        self._offset = np.array([j.offset for j in self.joints])
        self._sign = np.array([j.sign for j in self.joints], np.float64)
        self._ids = [j.id for j in self.joints] + ([cfg.gripper.id] if cfg.gripper else [])
        self.observation_spec = {
            "joint_pos": ArraySpec((n,)),
            "joint_vel": ArraySpec((n,)),
            "ee_pos": ArraySpec((3,)),
            "ee_yaw": ArraySpec((2,)),  # cos, sin, as the sim arm
            "gripper": ArraySpec((1,)),  # 0 closed .. 1 open
            "timestamp": ArraySpec((), "float64"),
        }
        if cfg.control == "ee":
            self.action_spec = ArraySpec(
                (5,),
                low=[-cfg.max_step_m] * 3 + [-cfg.max_yaw_step, -1.0],
                high=[cfg.max_step_m] * 3 + [cfg.max_yaw_step, 1.0],
                names=("dx", "dy", "dz", "dyaw", "gripper"),
            )
        else:
            self.action_spec = ArraySpec(
                (n + 1,),
                low=[*self._low, -1.0],
                high=[*self._high, 1.0],
                names=(*[j.name for j in self.joints], "gripper"),
            )
        self._port = self._packets = None
        self._io = threading.Lock()  # one bus transaction at a time; stop() may come from the watchdog thread
        self._goal = np.zeros(n)  # joint goal last sent (rad)
        self._gripper_goal = 1.0
        self._target_yaw = 0.0
        self._q = np.zeros(n)
        self._raw = {i: (0.0, 0.0) for i in self._ids}  # servo angle, velocity

    # --- connection ----------------------------------------------------------------------------
    RETRY_QUIET_S = 0.05  # before a retry: longer than the SDK's ~35 ms packet timeout
    PING_TRIES = 3  # a lost packet or a busy host misses a ping; a missing servo misses them all

    def _answers(self, servo_id: int) -> bool:
        return any(self._packets.ping(self._port, servo_id)[1] == 0 for _ in range(self.PING_TRIES))

    def connect(self) -> None:
        if self._port is not None:
            return
        from dynamixel_sdk import PacketHandler

        port = _waiting_port(self.cfg.port)
        try:
            opened = port.openPort() and port.setBaudRate(self.cfg.baudrate)
        except Exception as exc:  # pyserial's SerialException, OSError
            raise DeviceError(f"cannot open the Dynamixel bus at {self.cfg.port}: {exc}") from None
        if not opened:
            raise DeviceError(f"cannot open the Dynamixel bus at {self.cfg.port} at {self.cfg.baudrate} baud")
        self._port, self._packets = port, PacketHandler(2.0)
        try:
            missing = [i for i in self._ids if not self._answers(i)]
            if missing:
                raise DeviceError(
                    f"no servo answers on {self.cfg.port} with id {', '.join(map(str, missing))} "
                    f"(check power, baud rate {self.cfg.baudrate} and ids)"
                )
            if not self.cfg.dry_run:
                self._configure_servos()
            self._read_state()
            outside = [j.name for j, q in zip(self.joints, self._q) if not j.low - 0.05 <= q <= j.high + 0.05]
            if outside and not self.cfg.dry_run:  # a dry run only reads: calibration starts there
                raise DeviceError(
                    f"joints {', '.join(outside)} are outside their limits: check the calibration "
                    f"(offset, sign) in the robot config, or move the arm by hand into range"
                )
            self._goal = np.clip(self._q, self._low, self._high)
            self._gripper_goal = self._gripper_opening()
            self._target_yaw = yaw_of(self.kinematics.pose(self._q)[1])
            if not self.cfg.dry_run:
                self._send_goals()
                for i in self._ids:
                    self._write(i, x.TORQUE_ENABLE, 1)
        except BaseException:
            self._close_port()
            raise

    def _configure_servos(self) -> None:
        """Position mode and the config's limits in every servo's EEPROM. EEPROM is writable only
        with torque off, so a servo already configured is left alone (and a held arm held)."""
        wanted = {}
        for joint in self.joints:  # the firmware's own limits, in servo angle
            servo = sorted([joint.sign * joint.low + joint.offset, joint.sign * joint.high + joint.offset])
            wanted[joint.id] = {
                x.OPERATING_MODE: x.POSITION_MODE,
                x.MIN_POSITION_LIMIT: int(np.floor(x.rad_to_ticks(servo[0]))),
                x.MAX_POSITION_LIMIT: int(np.ceil(x.rad_to_ticks(servo[1]))),
            }
        if self.cfg.gripper is not None:  # Interbotix ships the gripper in PWM mode; goals need position mode
            wanted[self.cfg.gripper.id] = {x.OPERATING_MODE: x.POSITION_MODE}
        for i, fields in wanted.items():
            if any(self._read(i, f) != v for f, v in fields.items()):
                self._write(i, x.TORQUE_ENABLE, 0)
                for f, v in fields.items():
                    self._write(i, f, v)
        for i in self._ids:
            self._write(i, x.PROFILE_VELOCITY, self.cfg.profile_velocity)

    def disconnect(self) -> None:
        if self._port is None:
            return
        try:
            if not self.cfg.dry_run:
                for i in self._ids:  # torque off: the servos go limp (the arm should be at rest)
                    try:
                        self._write(i, x.TORQUE_ENABLE, 0)
                    except DeviceError:
                        pass
        finally:
            self._close_port()

    def _close_port(self) -> None:
        with self._io:
            if self._port is not None:
                self._port.closePort()
            self._port = None

    # --- Robot protocol --------------------------------------------------------------------------
    def observe(self) -> dict[str, np.ndarray]:
        self._read_state()
        position, rotation = self.kinematics.pose(self._q)
        yaw = yaw_of(rotation)
        velocity = np.array([self._raw[j.id][1] for j in self.joints]) * self._sign
        return {
            "joint_pos": self._q.astype(np.float32),
            "joint_vel": velocity.astype(np.float32),
            "ee_pos": position.astype(np.float32),
            "ee_yaw": np.array([np.cos(yaw), np.sin(yaw)], np.float32),
            "gripper": np.array([self._gripper_opening()], np.float32),
            "timestamp": np.float64(time.monotonic()),
        }

    def command(self, action: np.ndarray) -> None:
        a = np.asarray(action, np.float64)
        if a.shape != self.action_spec.shape or not np.all(np.isfinite(a)):
            raise ValueError(
                f"a Dynamixel arm takes a finite action of shape {self.action_spec.shape}, got {a}"
            )
        if self.cfg.control == "ee":
            delta = np.clip(a[:3], -self.cfg.max_step_m, self.cfg.max_step_m)
            self._target_yaw += float(np.clip(a[3], -self.cfg.max_yaw_step, self.cfg.max_yaw_step))
            target = self._goal + self.kinematics.step(self._goal, delta, down_rotation(self._target_yaw))
        else:
            target = a[:-1]
        step = np.clip(target - self._goal, -self.cfg.max_joint_step, self.cfg.max_joint_step)
        self._goal = np.clip(self._goal + step, self._low, self._high)
        # Gripper: -1 open, +1 closed, as the sim arm.
        self._gripper_goal = float((1.0 - np.clip(a[-1], -1.0, 1.0)) / 2.0)
        self._send_goals()

    def go_home(self, seconds: float = 3.0, rate_hz: float = 20.0) -> None:
        """Move to the config's home joints at the per-step motion limit, then open the gripper."""
        if self.cfg.home is None:
            return
        home = np.clip(np.asarray(self.cfg.home, np.float64), self._low, self._high)
        for _ in range(max(1, int(seconds * rate_hz))):
            self._read_state()
            if np.max(np.abs(self._goal - home)) < 1e-3:
                break
            step = np.clip(home - self._goal, -self.cfg.max_joint_step, self.cfg.max_joint_step)
            self._goal = self._goal + step
            self._gripper_goal = 1.0
            self._send_goals()
            time.sleep(1.0 / rate_hz)
        self._target_yaw = yaw_of(self.kinematics.pose(self._goal)[1])

    def stop(self) -> None:
        """Hold where the arm is now: goals = the joints as measured this moment."""
        if self._port is None:
            return
        try:
            self._read_state()
            self._goal = np.clip(self._q, self._low, self._high)
            self._send_goals()
        except DeviceError:
            pass  # a lost bus cannot be told anything; the firmware holds its last goal

    def servo_angles(self) -> dict[int, float]:
        """Raw servo angles (rad) by id, as last read: what calibration offsets are taken from."""
        return {i: angle for i, (angle, _) in self._raw.items()}

    # --- the bus -------------------------------------------------------------------------------------
    def _gripper_opening(self) -> float:
        g = self.cfg.gripper
        if g is None:
            return 0.0
        return float(np.clip((self._raw[g.id][0] - g.closed) / (g.open - g.closed), 0.0, 1.0))

    def _servo_goals(self) -> dict[int, float]:
        goals = {j.id: float(j.sign * q + j.offset) for j, q in zip(self.joints, self._goal)}
        if self.cfg.gripper is not None:
            g = self.cfg.gripper
            goals[g.id] = g.closed + self._gripper_goal * (g.open - g.closed)
        return goals

    def _send_goals(self) -> None:
        if self.cfg.dry_run:
            return
        from dynamixel_sdk import GroupBulkWrite

        with self._io:
            if self._port is None:
                raise DeviceError("the Dynamixel arm is not connected")
            group = GroupBulkWrite(self._port, self._packets)
            address, size = x.GOAL_POSITION
            for i, rad in self._servo_goals().items():
                group.addParam(
                    i,
                    address,
                    size,
                    list(int(round(x.rad_to_ticks(rad))).to_bytes(size, "little", signed=True)),
                )
            self._transact(group.txPacket, "write goal positions")

    def _read_state(self) -> None:
        from dynamixel_sdk import GroupBulkRead

        with self._io:
            if self._port is None:
                raise DeviceError("the Dynamixel arm is not connected")
            group = GroupBulkRead(self._port, self._packets)
            start = x.PRESENT_VELOCITY[0]
            length = x.PRESENT_POSITION[0] + x.PRESENT_POSITION[1] - start
            for i in self._ids:
                group.addParam(i, start, length)
            self._transact(group.txRxPacket, "read positions")
            for i in self._ids:
                velocity = x.signed32(group.getData(i, *x.PRESENT_VELOCITY))
                position = x.signed32(group.getData(i, *x.PRESENT_POSITION))
                self._raw[i] = (float(x.ticks_to_rad(position)), float(x.velocity_to_rad_s(velocity)))
        self._q = np.array([j.sign * (self._raw[j.id][0] - j.offset) for j in self.joints])

    def _read(self, dxl_id: int, field: tuple[int, int]) -> int:
        address, size = field
        reader = {
            1: self._packets.read1ByteTxRx,
            2: self._packets.read2ByteTxRx,
            4: self._packets.read4ByteTxRx,
        }[size]
        out = {}

        def call():
            value, code, error = reader(self._port, dxl_id, address)
            out["value"] = value
            return code, error

        with self._io:
            self._transact(call, f"read servo {dxl_id}")
        return out["value"]

    def _write(self, dxl_id: int, field: tuple[int, int], value: int) -> None:
        address, size = field
        writer = {
            1: self._packets.write1ByteTxRx,
            2: self._packets.write2ByteTxRx,
            4: self._packets.write4ByteTxRx,
        }[size]
        with self._io:
            self._transact(
                lambda: writer(self._port, dxl_id, address, value & ((1 << (8 * size)) - 1)),
                f"write servo {dxl_id}",
            )

    def _transact(self, call, what: str) -> None:
        result = None
        for attempt in range(self.cfg.retries):
            try:
                if attempt:  # status packets carry no sequence number: a late reply to the failed
                    time.sleep(self.RETRY_QUIET_S)  # try would pass for the retry's own, so let it
                    self._port.clearPort()  # arrive and drop it first
                result = call()
            except (OSError, termios.error) as exc:  # the port itself failed: a pulled USB cable
                raise DeviceError(f"Dynamixel bus {self.cfg.port}: {what} failed ({exc})") from None
            code, error = result if isinstance(result, tuple) else (result, 0)
            if code == 0 and error == 0:
                return
        detail = self._packets.getTxRxResult(code) if code != 0 else self._packets.getRxPacketError(error)
        raise DeviceError(f"Dynamixel bus {self.cfg.port}: {what} failed ({detail.strip()})")
