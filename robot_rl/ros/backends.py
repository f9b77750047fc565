"""ROS 2 robots and cameras behind robot_rl's protocols: `RosArm`, `RosCar`, `RosCamera`.

They talk to ROS through a `RosIO` (robot_rl.ros.streams), so nothing here imports rclpy: on a
robot the IO is an rclpy node, in tests an in-process bus of real ROS 2 message types.

- Observations are the newest message of each stream; one older than `max_age_s` on the ROS
  clock (simulation time with `use_sim_time`) is a StaleMessageError, which stops the loop.
- The observation and action layouts equal the hardware drivers' (DynamixelArm, VescCar), so a
  policy trained on one runs on the other; the car's is the car kind's spec (robot_rl/tasks/car.py),
  which the sim car reports too.
- Every command is finite and clipped here, whatever the caller did; each backend runs the
  loop's `Watchdog`, which publishes the stop command when commands stop for `watchdog_s`.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from robot_rl.core.protocols import Camera, Robot
from robot_rl.core.safety import Watchdog
from robot_rl.core.specs import ArraySpec, Frame
from robot_rl.errors import ConfigError, DeviceError
from robot_rl.ros import messages as m
from robot_rl.ros.messages import MissingRosPackage
from robot_rl.ros.streams import LatestMessage, RosIO, StaleMessageError, check_qos
from robot_rl.tasks import car as car_spec
from robot_rl.utils.geometry import GRAVITY

ARM_COMMANDS = ("pose", "joint_trajectory", "joint_forward")
CAR_COMMANDS = ("ackermann", "twist")


# --- quaternions ([x, y, z, w]) ---------------------------------------------------------------------
def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def quat_about_z(angle: float) -> np.ndarray:
    return np.array([0.0, 0.0, math.sin(angle / 2), math.cos(angle / 2)])


class _CommandWatchdog:
    """The loop's Watchdog around a backend: `stop` runs when `fed()` has not been called for
    `timeout_s` (of ROS time under use_sim_time, as the loop's own)."""

    def __init__(self, timeout_s: float, stop, io: RosIO):
        self.timeout_s, self._stop = timeout_s, stop
        self._clock = io.loop_clock()
        self.lock = threading.Lock()
        self._dog: Watchdog | None = None

    def start(self) -> None:
        if self._dog is None and self.timeout_s > 0:
            self._dog = Watchdog(self.timeout_s, self._stop, self.lock, clock=self._clock)
            self._dog.arm()

    def fed(self) -> None:
        if self._dog is not None:
            self._dog.feed()

    @property
    def trips(self) -> int:
        return self._dog.trips if self._dog else 0

    def close(self) -> None:
        if self._dog is not None:
            self._dog.close()
            self._dog = None


@contextmanager
def _needed_by(key: str, instead: str = ""):
    """A ROS 2 package that is missing is reported with the robot config key that needs it."""
    try:
        yield
    except MissingRosPackage as exc:
        raise ConfigError(f"{exc}: the robot config's {key} needs it{instead}") from None


def _hand_pose(msg) -> np.ndarray:
    """A PoseStamped as [x, y, z, qx, qy, qz, qw], the quaternion normalized; a non-finite or
    zero-quaternion pose is unreadable (it must never become a target)."""
    pose = m.pose(msg)
    norm = float(np.linalg.norm(pose[3:]))
    if not np.all(np.isfinite(pose)) or norm < 1e-6:
        raise ValueError(f"the pose {pose} is not finite or has no rotation")
    pose[3:] /= norm
    return pose


def _joint_state(names):
    """JointState in `names` order; non-finite positions make it unreadable, a non-finite velocity
    (drivers that do not know it) reads as 0."""

    def convert(msg):
        values = m.joint_state(msg, names)
        if not np.all(np.isfinite(values["position"])):
            raise ValueError(f"non-finite joint positions {values['position']}")
        values["velocity"] = np.nan_to_num(values["velocity"], nan=0.0, posinf=0.0, neginf=0.0)
        return values

    return convert


def _finite(action, shape, what: str) -> np.ndarray:
    a = np.asarray(action, np.float64)
    if a.shape != shape or not np.all(np.isfinite(a)):
        raise ValueError(f"refusing to send {a} to the {what}: a finite action of shape {shape}")
    return a


# --- the arm ---------------------------------------------------------------------------------------------
@dataclass
class GripperConfig:
    # topic: Float64MultiArray [position] (a ros2_control forward controller);
    # action: control_msgs/GripperCommand
    kind: str = "topic"
    name: str = "gripper_controller/commands"  # the topic or the action server
    open: float = 0.04  # position when open (m or rad, the controller's units)
    closed: float = 0.0
    max_effort: float = 20.0  # action goals only
    joint: str | None = None  # the JointState entry that reports the gripper's position

    def __post_init__(self):
        if self.kind not in ("topic", "action"):
            raise ConfigError(f"gripper.kind must be topic or action, got {self.kind!r}")


@dataclass
class RosArmConfig:
    joint_names: list[str] = field(default_factory=list)
    joint_low: list[float] | None = None  # rad; required for joint commands
    joint_high: list[float] | None = None
    joint_states_topic: str = "joint_states"  # relative: in the node's namespace
    ee_pose_topic: str | None = None  # geometry_msgs/PoseStamped of the end effector ...
    base_frame: str = "base_link"  # ... or, without it, TF from base_frame to ee_frame
    ee_frame: str | None = None
    command: str = "pose"  # pose | joint_trajectory | joint_forward
    command_topic: str = "cartesian_impedance_controller/target_pose"
    max_step_m: float = 0.01  # pose: end-effector step per command
    max_yaw_step: float = 0.05  # pose: rad per command
    max_lead_m: float = 0.05  # pose: the target never leads the measured pose by more
    max_lead_yaw: float = 0.3  # pose: nor its yaw the measured yaw by more (rad)
    workspace_low: list[float] | None = None  # pose: targets stay in this box (m; the robot config's)
    workspace_high: list[float] | None = None
    max_joint_step: float = 0.05  # joint commands: rad per command
    trajectory_time_s: float = 0.1  # joint_trajectory: time_from_start of the single point
    gripper: dict | None = None  # GripperConfig fields
    state_qos: str = "sensor"
    command_qos: str = "command"
    max_age_s: float = 0.2  # a state message older than this stops the loop
    connect_timeout_s: float = 5.0  # wait this long for the first state messages
    watchdog_s: float = 0.5  # hold when commands stop for this long (0: off)
    dry_run: bool = False  # read only: nothing is published

    def __post_init__(self):
        if not self.joint_names:
            raise ConfigError("a ROS arm needs joint_names (its JointState entries, in order)")
        if self.command not in ARM_COMMANDS:
            raise ConfigError(f"arm command must be one of {', '.join(ARM_COMMANDS)}, got {self.command!r}")
        if self.command != "pose" and (self.joint_low is None or self.joint_high is None):
            raise ConfigError("joint commands need joint_low and joint_high (rad, one per joint)")
        for limits in (self.joint_low, self.joint_high):
            if limits is not None and len(limits) != len(self.joint_names):
                raise ConfigError(f"joint limits must have one entry per joint ({len(self.joint_names)})")
        if self.command == "pose" and self.ee_pose_topic is None and self.ee_frame is None:
            raise ConfigError("pose commands need the end effector's pose: ee_pose_topic or ee_frame (TF)")
        check_qos(self.state_qos)
        check_qos(self.command_qos)
        self.gripper_cfg = GripperConfig(**self.gripper) if self.gripper else None


class RosArm(Robot):
    """An arm behind ROS 2 controllers. Observations as DynamixelArm's: joint_pos, joint_vel,
    ee_pos, ee_yaw (cos, sin), gripper (0 closed .. 1 open), timestamp. Actions: with `pose`
    commands [dx, dy, dz, dyaw, gripper] (the sim arm's), sent as a PoseStamped target for a
    Cartesian impedance controller; with joint commands [joint targets..., gripper], sent as a
    one-point JointTrajectory or a Float64MultiArray (ros2_control forward controller). Gripper:
    -1 open, +1 closed."""

    def __init__(self, cfg: RosArmConfig, io: RosIO):
        self.cfg, self.io = cfg, io
        n = len(cfg.joint_names)
        self.observation_spec = {
            "joint_pos": ArraySpec((n,)),
            "joint_vel": ArraySpec((n,)),
            "ee_pos": ArraySpec((3,)),
            "ee_yaw": ArraySpec((2,)),
            "gripper": ArraySpec((1,)),
            "timestamp": ArraySpec((), "float64"),
        }
        if cfg.command == "pose":
            self.action_spec = ArraySpec(
                (5,),
                low=[-cfg.max_step_m] * 3 + [-cfg.max_yaw_step, -1.0],
                high=[cfg.max_step_m] * 3 + [cfg.max_yaw_step, 1.0],
                names=("dx", "dy", "dz", "dyaw", "gripper"),
            )
        else:
            self._low, self._high = (
                np.asarray(cfg.joint_low, np.float64),
                np.asarray(cfg.joint_high, np.float64),
            )
            self.action_spec = ArraySpec(
                (n + 1,),
                low=[*cfg.joint_low, -1.0],
                high=[*cfg.joint_high, 1.0],
                names=(*cfg.joint_names, "gripper"),
            )
        self._joints: LatestMessage | None = None
        self._ee: LatestMessage | None = None
        self._publish = self._publish_gripper = None
        self._watchdog = _CommandWatchdog(cfg.watchdog_s, self.stop, io)
        self._goal: np.ndarray | None = None  # joint goal, or the pose target [x, y, z, qx, qy, qz, qw]
        self._yaw0, self._quat0, self._target_yaw = 0.0, np.array([0.0, 0.0, 0.0, 1.0]), 0.0
        self._gripper_goal: float | None = None
        self._gripper_sent: float | None = None

    # --- Robot ------------------------------------------------------------------------------------
    def connect(self) -> None:
        if self._joints is not None:
            return
        cfg, io = self.cfg, self.io
        joint_names = list(cfg.joint_names) + (
            [cfg.gripper_cfg.joint] if cfg.gripper_cfg and cfg.gripper_cfg.joint else []
        )
        g = cfg.gripper_cfg
        try:
            with _needed_by("joint_states_topic"):
                self._joints = LatestMessage(
                    io,
                    cfg.joint_states_topic,
                    "sensor_msgs/msg/JointState",
                    _joint_state(joint_names),
                    cfg.state_qos,
                )
            if cfg.ee_pose_topic:
                with _needed_by("ee_pose_topic"):
                    self._ee = LatestMessage(
                        io, cfg.ee_pose_topic, "geometry_msgs/msg/PoseStamped", _hand_pose, cfg.state_qos
                    )
            elif cfg.ee_frame:
                with _needed_by("ee_frame (the hand's pose from TF)", ", or give ee_pose_topic"):
                    io.listen_to_tf()
            if not cfg.dry_run:
                msgtype = {
                    "pose": "geometry_msgs/msg/PoseStamped",
                    "joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
                    "joint_forward": "std_msgs/msg/Float64MultiArray",
                }[cfg.command]
                with _needed_by(f"command: {cfg.command}"):
                    self._publish = io.publisher(cfg.command_topic, msgtype, cfg.command_qos)
                if g is not None and g.kind == "topic":
                    with _needed_by("gripper.kind: topic"):
                        self._publish_gripper = io.publisher(
                            g.name, "std_msgs/msg/Float64MultiArray", cfg.command_qos
                        )
            if g is not None and g.kind == "action" and not cfg.dry_run:
                with _needed_by(
                    "gripper.kind: action", ", or use gripper.kind: topic (a Float64MultiArray controller)"
                ):
                    io.connect_gripper(g.name, cfg.connect_timeout_s)
            self._joints.wait(cfg.connect_timeout_s)
            if self._ee is not None:
                self._ee.wait(cfg.connect_timeout_s)
            elif cfg.ee_frame:
                self._wait_for_tf()
            self._quat0 = self._ee_pose()[3:].copy()
            self._yaw0 = m.yaw_of_quaternion(*self._quat0)
            self._hold_here()
        except BaseException:
            self._joints = self._ee = None  # not connected: a later connect() starts over
            raise
        self._watchdog.start()

    def disconnect(self) -> None:
        self._watchdog.close()
        self._joints = self._ee = None  # the IO owns the subscriptions; a new connect subscribes anew

    def observe(self) -> dict[str, np.ndarray]:
        sample = self._joints.get(self.cfg.max_age_s)
        n = len(self.cfg.joint_names)
        pose = self._ee_pose(max_age=True)
        yaw = m.yaw_of_quaternion(*pose[3:])
        return {
            "joint_pos": sample.value["position"][:n].astype(np.float32),
            "joint_vel": sample.value["velocity"][:n].astype(np.float32),
            "ee_pos": pose[:3].astype(np.float32),
            "ee_yaw": np.array([math.cos(yaw), math.sin(yaw)], np.float32),
            "gripper": np.array([self._gripper_opening(sample.value["position"])], np.float32),
            "timestamp": np.float64(sample.monotonic),
        }

    def command(self, action: np.ndarray) -> None:
        cfg = self.cfg
        a = _finite(action, self.action_spec.shape, "arm")
        if cfg.command == "pose":
            hand = self._ee_pose(max_age=True)
            measured, yaw = hand[:3], m.yaw_of_quaternion(*hand[3:])
            delta = np.clip(a[:3], -cfg.max_step_m, cfg.max_step_m)
            # Impedance controllers pull with a force that grows with the target's distance: the
            # target stays within max_lead_m (and max_lead_yaw) of where the hand is, and in the box.
            position = np.clip(self._goal[:3] + delta, measured - cfg.max_lead_m, measured + cfg.max_lead_m)
            if cfg.workspace_low is not None and cfg.workspace_high is not None:
                position = np.clip(position, cfg.workspace_low, cfg.workspace_high)
            target_yaw = self._target_yaw + float(np.clip(a[3], -cfg.max_yaw_step, cfg.max_yaw_step))
            lead = math.remainder(target_yaw - yaw, 2 * math.pi)
            self._target_yaw = yaw + float(np.clip(lead, -cfg.max_lead_yaw, cfg.max_lead_yaw))
            self._goal = np.concatenate(
                [position, quat_multiply(quat_about_z(self._target_yaw - self._yaw0), self._quat0)]
            )
        else:
            step = np.clip(a[:-1] - self._goal, -cfg.max_joint_step, cfg.max_joint_step)
            self._goal = np.clip(self._goal + step, self._low, self._high)
        g = cfg.gripper_cfg
        if g is not None:
            opening = (1.0 - float(np.clip(a[-1], -1.0, 1.0))) / 2.0
            self._gripper_goal = g.closed + opening * (g.open - g.closed)
        with self._watchdog.lock:
            self._send()
        self._watchdog.fed()

    def stop(self) -> None:
        """Hold where the arm is: the measured joints (or hand pose) become the goal."""
        if self._joints is None:
            return
        try:
            self._hold_here()
            self._send(gripper=False)
        except Exception:
            pass  # no usable state: nothing is sent, the controller keeps its last goal

    # --- internals ----------------------------------------------------------------------------------
    def _hold_here(self) -> None:
        if self.cfg.command == "pose":
            self._goal = self._ee_pose().copy()
            self._target_yaw = self._yaw0 + math.remainder(
                m.yaw_of_quaternion(*self._goal[3:]) - self._yaw0, 2 * math.pi
            )
        else:
            n = len(self.cfg.joint_names)
            self._goal = np.clip(self._joints.get(None).value["position"][:n], self._low, self._high)

    def _ee_pose(self, max_age: bool = False) -> np.ndarray:
        cfg = self.cfg
        limit = cfg.max_age_s if max_age else None
        if self._ee is not None:
            return self._ee.get(limit).value
        if not cfg.ee_frame:
            return np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # joint control without a hand frame
        found = self.io.lookup_transform(cfg.base_frame, cfg.ee_frame)
        if found is None:
            raise StaleMessageError(
                f"no transform from {cfg.base_frame} to {cfg.ee_frame} (is TF published?)"
            )
        pose, stamp = np.asarray(found[0], np.float64), found[1]
        age = self.io.now() - stamp
        if limit is not None and age > limit:
            raise StaleMessageError(
                f"TF {cfg.base_frame} -> {cfg.ee_frame} is {1000 * age:.0f} ms old "
                f"(limit {1000 * limit:.0f} ms): robot_state_publisher or the driver stalled"
            )
        norm = float(np.linalg.norm(pose[3:]))
        if not np.all(np.isfinite(pose)) or norm < 1e-6:
            raise StaleMessageError(f"TF {cfg.base_frame} -> {cfg.ee_frame} is not a valid pose: {pose}")
        pose[3:] /= norm
        return pose

    def _wait_for_tf(self) -> None:
        deadline = time.monotonic() + self.cfg.connect_timeout_s
        while True:
            try:
                self._ee_pose()
                return
            except StaleMessageError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _gripper_opening(self, positions: np.ndarray) -> float:
        g = self.cfg.gripper_cfg
        if g is None:
            return 1.0
        if g.joint:
            value = float(positions[len(self.cfg.joint_names)])
        elif self._gripper_goal is not None:
            value = self._gripper_goal
        else:
            return 1.0
        return float(np.clip((value - g.closed) / (g.open - g.closed), 0.0, 1.0))

    def _send(self, gripper: bool = True) -> None:
        if self._publish is None or self._goal is None:  # dry run, or nothing known yet
            return
        if not np.all(np.isfinite(self._goal)):  # cannot happen from checked inputs; never sent if it does
            raise DeviceError(f"refusing to send the non-finite goal {self._goal}")
        cfg, t = self.cfg, self.io.now()
        if cfg.command == "pose":
            self._publish(m.make_pose_stamped(self.io.types, t, cfg.base_frame, self._goal))
        elif cfg.command == "joint_trajectory":
            self._publish(
                m.make_joint_trajectory(self.io.types, t, cfg.joint_names, self._goal, cfg.trajectory_time_s)
            )
        else:
            self._publish(m.make_float64_array(self.io.types, self._goal))
        g = cfg.gripper_cfg
        if gripper and g is not None and self._gripper_goal is not None:
            if g.kind == "topic":
                self._publish_gripper(m.make_float64_array(self.io.types, [self._gripper_goal]))
            elif self._gripper_goal != self._gripper_sent:  # an action goal preempts the last: only on change
                self.io.send_gripper_goal(g.name, self._gripper_goal, g.max_effort)
                self._gripper_sent = self._gripper_goal


# --- the car -----------------------------------------------------------------------------------------------
@dataclass
class RosCarConfig:
    command: str = (
        "ackermann"  # ackermann: AckermannDriveStamped; twist: Twist (yaw rate from the bicycle model)
    )
    command_topic: str = "drive"  # relative: in the node's namespace
    odom_topic: str = "odom"
    imu_topic: str | None = None  # sensor_msgs/Imu; without it the gyro is the odometry's yaw rate
    frame_id: str = "base_link"
    max_speed: float = 3.0  # m/s; a clip within the car spec's 3 m/s
    max_steer: float = 0.35  # rad; a clip within the car spec's 0.35 rad
    wheelbase: float = 0.33  # m
    wheel_radius: float = 0.05  # m: wheel_speed = the odometry's forward speed / wheel_radius
    collision_accel_g: float = 2.0  # a horizontal jolt above this counts as a collision
    state_qos: str = "sensor"
    command_qos: str = "command"
    max_age_s: float = 0.2
    connect_timeout_s: float = 5.0
    watchdog_s: float = 0.25  # publish a stop when commands stop for this long (0: off)
    dry_run: bool = False

    def __post_init__(self):
        if self.command not in CAR_COMMANDS:
            raise ConfigError(f"car command must be one of {', '.join(CAR_COMMANDS)}, got {self.command!r}")
        if not (self.wheelbase > 0 and self.wheel_radius > 0):
            raise ConfigError("wheelbase and wheel_radius must be positive")
        problem = car_spec.check_limits(self.max_steer, self.max_speed)
        if problem:
            raise ConfigError(problem)
        check_qos(self.state_qos)
        check_qos(self.command_qos)


def _all_finite(values: dict, what: str) -> dict:
    """A car state with a non-finite number is unreadable: it counts as no message (the loop stops
    when the stream goes stale) and never reaches a policy or a dataset."""
    for key, value in values.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"non-finite {what} {key} {value}")
    return values


def _car_odometry(msg) -> dict[str, np.ndarray]:
    """Odometry as the car spec reads it: pose [x, y, yaw], the body-frame linear velocity
    [vx, vy, vz] (m/s) and, apart, the yaw rate (rad/s: the gyro when there is no IMU)."""
    values = m.odometry(msg)  # its "velocity" is [vx, vy, yaw rate]: a twist summary, not the spec's
    linear = msg.twist.twist.linear
    return _all_finite(
        {
            "pose": values["pose"],
            "linear": np.array([linear.x, linear.y, linear.z]),
            "yaw_rate": values["velocity"][2],
        },
        "odometry",
    )


def _car_imu(msg) -> dict[str, np.ndarray]:
    return _all_finite(m.imu(msg), "IMU")


class RosCar(Robot):
    """A car behind ROS 2 (an F1TENTH / ackermann_mux stack, or anything taking Twist). Action
    [steer rad, speed m/s]; observations in the car spec (robot_rl/tasks/car.py), as VescCar's:
    pose [x, y, yaw] and linear velocity from Odometry, gyro and accel from Imu, the wheel speed
    from the odometry's forward speed, the commanded steer, a collision flag, timestamp."""

    def __init__(self, cfg: RosCarConfig, io: RosIO):
        self.cfg, self.io = cfg, io
        self.observation_spec = car_spec.observation_spec()
        self.action_spec = car_spec.action_spec()
        self._odom: LatestMessage | None = None
        self._imu: LatestMessage | None = None
        self._publish = None
        self._steer = 0.0
        self._pose = np.zeros(3)
        self._watchdog = _CommandWatchdog(cfg.watchdog_s, self.stop, io)

    def connect(self) -> None:
        if self._odom is not None:
            return
        cfg = self.cfg
        try:
            with _needed_by("odom_topic"):
                self._odom = LatestMessage(
                    self.io, cfg.odom_topic, "nav_msgs/msg/Odometry", _car_odometry, cfg.state_qos
                )
            if cfg.imu_topic:
                with _needed_by("imu_topic"):
                    self._imu = LatestMessage(
                        self.io, cfg.imu_topic, "sensor_msgs/msg/Imu", _car_imu, cfg.state_qos
                    )
            if not cfg.dry_run:
                msgtype = (
                    "ackermann_msgs/msg/AckermannDriveStamped"
                    if cfg.command == "ackermann"
                    else "geometry_msgs/msg/Twist"
                )
                instead = (
                    ", or use command: twist (geometry_msgs/Twist)" if cfg.command == "ackermann" else ""
                )
                with _needed_by(f"command: {cfg.command}", instead):
                    self._publish = self.io.publisher(cfg.command_topic, msgtype, cfg.command_qos)
            self._odom.wait(cfg.connect_timeout_s)
            if self._imu is not None:
                self._imu.wait(cfg.connect_timeout_s)
        except BaseException:
            self._odom = self._imu = None  # not connected: a later connect() starts over
            raise
        self._watchdog.start()

    def disconnect(self) -> None:
        self._watchdog.close()
        self._odom = self._imu = None

    def observe(self) -> dict[str, np.ndarray]:
        odom = self._odom.get(self.cfg.max_age_s)
        self._pose = odom.value["pose"]
        linear = odom.value["linear"]
        if self._imu is not None:
            imu = self._imu.get(self.cfg.max_age_s).value
            gyro, accel = imu["gyro"], imu["accel"]
        else:
            gyro, accel = np.array([0.0, 0.0, odom.value["yaw_rate"]]), np.array([0.0, 0.0, GRAVITY])
        jolt = math.hypot(accel[0], accel[1]) / GRAVITY > self.cfg.collision_accel_g
        # On the F1TENTH stack /odom's speed is the VESC's erpm / speed_to_erpm_gain (vesc_to_odom):
        # the motor's speed, as VescCar measures it. (From an odometry that fuses other sensors it
        # is the ground speed: wheel slip would not show.)
        wheel_speed = linear[0] / self.cfg.wheel_radius
        return {
            "pose": self._pose.astype(np.float32),
            "velocity": linear.astype(np.float32),
            "gyro": np.asarray(gyro, np.float32),
            "accel": np.asarray(accel, np.float32),
            "wheel_speed": np.array([wheel_speed], np.float32),
            "steer": np.array([self._steer], np.float32),
            "collision": np.array([float(jolt)], np.float32),
            "timestamp": np.float64(odom.monotonic),
        }

    def command(self, action: np.ndarray) -> None:
        a = _finite(action, (2,), "car")
        steer = float(np.clip(a[0], -self.cfg.max_steer, self.cfg.max_steer))
        speed = float(np.clip(a[1], -self.cfg.max_speed, self.cfg.max_speed))
        with self._watchdog.lock:
            self._send(steer, speed)
        self._watchdog.fed()

    def stop(self) -> None:
        """Speed 0, wheels as they are."""
        self._send(self._steer, 0.0)

    def pose(self) -> np.ndarray:
        """x, y, yaw as of the last observation (FastRLAP's practice task reads it)."""
        return self._pose.copy()

    def _send(self, steer: float, speed: float) -> None:
        if self._publish is None:
            return
        if self.cfg.command == "ackermann":
            self._publish(m.make_ackermann(self.io.types, self.io.now(), steer, speed, self.cfg.frame_id))
        else:
            self._publish(m.make_twist(self.io.types, speed, speed * math.tan(steer) / self.cfg.wheelbase))
        self._steer = steer


# --- cameras -----------------------------------------------------------------------------------------------
@dataclass
class RosCameraConfig:
    name: str = "front"
    topic: str = "camera/color/image_raw"  # relative: in the node's namespace
    compressed: bool = False  # sensor_msgs/CompressedImage (e.g. .../image_raw/compressed)
    width: int = 128  # frames are resized to this (the policy's input size)
    height: int = 128
    qos: str = "sensor"
    connect_timeout_s: float = 5.0

    def __post_init__(self):
        if self.width < 1 or self.height < 1:
            raise ConfigError(f"camera {self.name}: width and height must be positive")
        check_qos(self.qos)


class RosCamera(Camera):
    """A camera topic. `read()` returns the newest frame; its timestamp is the header stamp moved
    onto the host's monotonic clock (arrival time minus the ROS-time delay since the stamp), so
    RobotEnv's frame-age check measures capture-to-use latency."""

    def __init__(self, cfg: RosCameraConfig, io: RosIO):
        self.cfg, self.io = cfg, io
        self.name, self.shape = cfg.name, (cfg.height, cfg.width, 3)
        self._latest: LatestMessage | None = None

    def connect(self) -> None:
        if self._latest is None:
            kind = "sensor_msgs/msg/CompressedImage" if self.cfg.compressed else "sensor_msgs/msg/Image"
            convert = m.compressed_image if self.cfg.compressed else m.image
            with _needed_by(f"camera {self.name}"):
                latest = LatestMessage(
                    self.io, self.cfg.topic, kind, lambda msg: self._fit(convert(msg)), self.cfg.qos
                )
            latest.wait(self.cfg.connect_timeout_s)
            self._latest = latest

    def read(self) -> Frame:
        sample = self._latest.get(None)  # the age check is RobotEnv's (max_frame_age_s)
        return Frame(sample.value, sample.monotonic - max(0.0, sample.received - sample.stamp))

    def disconnect(self) -> None:
        self._latest = None

    def _fit(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.ndim != 3:
            raise ConfigError(f"camera {self.name}: {self.cfg.topic} carries depth, not a colour image")
        if pixels.shape[:2] != self.shape[:2]:
            import cv2

            pixels = cv2.resize(pixels, (self.cfg.width, self.cfg.height), interpolation=cv2.INTER_AREA)
        return pixels
