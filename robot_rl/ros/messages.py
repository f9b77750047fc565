"""Conversions between ROS 2 messages and robot_rl's arrays, for rclpy messages and for the
`rosbags` type store's alike: readers only read attributes, and builders take `types`, a
callable from a type name ("sensor_msgs/msg/JointState") to its class — rclpy's generated
classes on a robot (`rclpy_types`), the rosbags type store in bags and tests (`bag_types`) —
and pass every field, so both kinds of class accept them. No rclpy import here.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence

import numpy as np

from robot_rl.errors import ConfigError

Types = Callable[[str], type]

# Not in the rosbags store: ackermann_msgs, as its package defines it.
ACKERMANN_MSGS = {
    "ackermann_msgs/msg/AckermannDrive": (
        "float32 steering_angle\nfloat32 steering_angle_velocity\nfloat32 speed\n"
        "float32 acceleration\nfloat32 jerk\n"
    ),
    "ackermann_msgs/msg/AckermannDriveStamped": (
        "std_msgs/Header header\nackermann_msgs/AckermannDrive drive\n"
    ),
}


def ros2_typestore():
    """The rosbags type store of ROS 2 Humble's message definitions, plus ackermann_msgs."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    types = {}
    for name, text in ACKERMANN_MSGS.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def bag_types(store=None) -> Types:
    store = store or ros2_typestore()
    return lambda name: store.types[name]


class MissingRosPackage(ConfigError):
    """A ROS 2 package (messages, tf2_ros) is not installed; `robot_rl.ros.backends` adds the
    config key that needs it."""

    def __init__(self, package: str, what: str):
        self.package = package
        apt = "ros-$ROS_DISTRO-" + package.replace("_", "-")
        super().__init__(
            f"the ROS 2 package {package} is not installed ({what}; apt install {apt}, or build it in "
            "your workspace; the ros-wheels extra does not have it)"
        )


def rclpy_types(name: str) -> type:
    """The rclpy message class of a type name (its package must be installed in the ROS workspace)."""
    package, _, message = name.split("/")
    try:
        module = importlib.import_module(f"{package}.msg")
    except ImportError:
        raise MissingRosPackage(package, name) from None
    if not hasattr(module, message):
        raise ConfigError(f"the ROS 2 package {package} has no message {message} (is {name} spelled right?)")
    return getattr(module, message)


# --- time -----------------------------------------------------------------------------------------
def stamp_to_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def header(types: Types, t: float, frame_id: str = ""):
    sec, nanosec = divmod(int(round(t * 1e9)), 1_000_000_000)  # rounding up to a whole second carries
    stamp = types("builtin_interfaces/msg/Time")(sec=int(sec), nanosec=int(nanosec))
    return types("std_msgs/msg/Header")(stamp=stamp, frame_id=frame_id)


# --- readers ----------------------------------------------------------------------------------------
def joint_state(msg, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """position / velocity / effort, in `names` order (the message's own order without names)."""
    order = list(range(len(msg.name))) if names is None else _indices(list(msg.name), names)

    def pick(values):
        values = np.asarray(values, np.float64)
        return values[order] if len(values) else np.zeros(len(order))

    return {"position": pick(msg.position), "velocity": pick(msg.velocity), "effort": pick(msg.effort)}


def _indices(have: list[str], want: Sequence[str]) -> list[int]:
    missing = [n for n in want if n not in have]
    if missing:
        raise ConfigError(f"JointState has no joint {', '.join(missing)} (it has {', '.join(have)})")
    return [have.index(n) for n in want]


def pose(msg) -> np.ndarray:
    """[x, y, z, qx, qy, qz, qw] of a Pose (or of a PoseStamped's)."""
    p = getattr(msg, "pose", msg)
    return np.array(
        [
            p.position.x,
            p.position.y,
            p.position.z,
            p.orientation.x,
            p.orientation.y,
            p.orientation.z,
            p.orientation.w,
        ]
    )


def yaw_of_quaternion(x: float, y: float, z: float, w: float) -> float:
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def odometry(msg) -> dict[str, np.ndarray]:
    """The car's pose [x, y, yaw] and velocity [vx, vy, yaw rate] (in the child frame)."""
    p, q, v = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist
    return {
        "pose": np.array([p.x, p.y, yaw_of_quaternion(q.x, q.y, q.z, q.w)]),
        "velocity": np.array([v.linear.x, v.linear.y, v.angular.z]),
    }


def imu(msg) -> dict[str, np.ndarray]:
    g, a = msg.angular_velocity, msg.linear_acceleration
    return {"gyro": np.array([g.x, g.y, g.z]), "accel": np.array([a.x, a.y, a.z])}


def ackermann(msg) -> np.ndarray:
    """[steer rad, speed m/s] of an AckermannDriveStamped."""
    return np.array([msg.drive.steering_angle, msg.drive.speed])


def twist(msg) -> np.ndarray:
    """[forward speed, yaw rate] of a Twist (or TwistStamped)."""
    t = getattr(msg, "twist", msg)
    return np.array([t.linear.x, t.angular.z])


ENCODINGS = {
    "rgb8": (3, False),
    "bgr8": (3, True),
    "rgba8": (4, False),
    "bgra8": (4, True),
    "mono8": (1, False),
}


def image(msg) -> np.ndarray:
    """An Image as uint8 HWC RGB (or a 16UC1 / mono16 depth image as uint16 HW)."""
    h, w, data = int(msg.height), int(msg.width), np.asarray(msg.data, np.uint8)
    if msg.encoding in ("16UC1", "mono16"):
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        return np.frombuffer(data.tobytes(), dtype).reshape(h, int(msg.step) // 2)[:, :w].astype(np.uint16)
    if msg.encoding not in ENCODINGS:
        raise ConfigError(
            f"image encoding {msg.encoding!r} is not supported ({', '.join([*ENCODINGS, '16UC1'])})"
        )
    channels, bgr = ENCODINGS[msg.encoding]
    pixels = data.reshape(h, int(msg.step))[:, : w * channels].reshape(h, w, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    pixels = pixels[..., :3]
    return np.ascontiguousarray(pixels[..., ::-1] if bgr else pixels)


def compressed_image(msg) -> np.ndarray:
    import cv2

    decoded = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ConfigError(f"cannot decode a {msg.format!r} CompressedImage")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


# --- builders ---------------------------------------------------------------------------------------
def make_joint_state(types: Types, t: float, names, position, velocity=(), effort=()):
    return types("sensor_msgs/msg/JointState")(
        header=header(types, t),
        name=list(names),
        position=np.asarray(position, np.float64),
        velocity=np.asarray(velocity, np.float64),
        effort=np.asarray(effort, np.float64),
    )


def _vector3(types: Types, x, y, z):
    return types("geometry_msgs/msg/Vector3")(x=float(x), y=float(y), z=float(z))


def make_pose_stamped(types: Types, t: float, frame_id: str, xyz_quat):
    x, y, z, qx, qy, qz, qw = (float(v) for v in xyz_quat)
    pose_msg = types("geometry_msgs/msg/Pose")(
        position=types("geometry_msgs/msg/Point")(x=x, y=y, z=z),
        orientation=types("geometry_msgs/msg/Quaternion")(x=qx, y=qy, z=qz, w=qw),
    )
    return types("geometry_msgs/msg/PoseStamped")(header=header(types, t, frame_id), pose=pose_msg)


def make_joint_trajectory(types: Types, t: float, names, positions, time_from_start_s: float):
    sec, nanosec = divmod(int(round(time_from_start_s * 1e9)), 1_000_000_000)
    duration = types("builtin_interfaces/msg/Duration")(sec=int(sec), nanosec=int(nanosec))
    point = types("trajectory_msgs/msg/JointTrajectoryPoint")(
        positions=np.asarray(positions, np.float64),
        velocities=np.zeros(0),
        accelerations=np.zeros(0),
        effort=np.zeros(0),
        time_from_start=duration,
    )
    return types("trajectory_msgs/msg/JointTrajectory")(
        header=header(types, t), joint_names=list(names), points=[point]
    )


def make_float64_array(types: Types, values):
    layout = types("std_msgs/msg/MultiArrayLayout")(dim=[], data_offset=0)
    return types("std_msgs/msg/Float64MultiArray")(layout=layout, data=np.asarray(values, np.float64))


def make_ackermann(types: Types, t: float, steer: float, speed: float, frame_id: str = "base_link"):
    drive = types("ackermann_msgs/msg/AckermannDrive")(
        steering_angle=float(steer),
        steering_angle_velocity=0.0,
        speed=float(speed),
        acceleration=0.0,
        jerk=0.0,
    )
    return types("ackermann_msgs/msg/AckermannDriveStamped")(header=header(types, t, frame_id), drive=drive)


def make_twist(types: Types, speed: float, yaw_rate: float):
    return types("geometry_msgs/msg/Twist")(
        linear=_vector3(types, speed, 0, 0), angular=_vector3(types, 0, 0, yaw_rate)
    )


def make_image(types: Types, t: float, pixels: np.ndarray, encoding: str = "rgb8", frame_id: str = "camera"):
    pixels = np.ascontiguousarray(pixels)
    h, w = pixels.shape[:2]
    return types("sensor_msgs/msg/Image")(
        header=header(types, t, frame_id),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=pixels.strides[0],
        data=pixels.view(np.uint8).ravel(),
    )


def make_compressed_image(types: Types, t: float, pixels: np.ndarray, frame_id: str = "camera"):
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ConfigError("cannot encode the image")
    return types("sensor_msgs/msg/CompressedImage")(
        header=header(types, t, frame_id), format="png", data=data.ravel()
    )


def make_odometry(types: Types, t: float, x: float, y: float, yaw: float, vx: float, wz: float):
    cov = np.zeros(36)
    quat = types("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2))
    pose_msg = types("geometry_msgs/msg/Pose")(
        position=types("geometry_msgs/msg/Point")(x=float(x), y=float(y), z=0.0), orientation=quat
    )
    return types("nav_msgs/msg/Odometry")(
        header=header(types, t, "odom"),
        child_frame_id="base_link",
        pose=types("geometry_msgs/msg/PoseWithCovariance")(pose=pose_msg, covariance=cov),
        twist=types("geometry_msgs/msg/TwistWithCovariance")(twist=make_twist(types, vx, wz), covariance=cov),
    )


def make_imu(types: Types, t: float, gyro, accel):
    quat = types("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0)
    cov = np.zeros(9)
    return types("sensor_msgs/msg/Imu")(
        header=header(types, t, "imu"),
        orientation=quat,
        orientation_covariance=cov,
        angular_velocity=_vector3(types, *gyro),
        angular_velocity_covariance=cov,
        linear_acceleration=_vector3(types, *accel),
        linear_acceleration_covariance=cov,
    )


# --- what a bag importer or a node reads out of each message kind ---------------------------------
def read_field(msg, msgtype: str, field: str | None, names: Sequence[str] | None = None) -> np.ndarray:
    """One array out of a message: `field` picks among a message kind's parts (None: its default)."""
    kind = msgtype.split("/")[-1]
    parts = {
        "JointState": lambda: joint_state(msg, names),
        "Odometry": lambda: odometry(msg),
        "Imu": lambda: imu(msg),
    }
    if kind in parts:
        values = parts[kind]()
        default = next(iter(values))
        if (field or default) not in values:
            raise ConfigError(f"{msgtype} has no field {field!r} (one of {', '.join(values)})")
        return values[field or default]
    if kind in ("PoseStamped", "Pose"):
        return pose(msg)
    if kind == "AckermannDriveStamped":
        return ackermann(msg)
    if kind in ("Twist", "TwistStamped"):
        return twist(msg)
    if kind in ("Float64MultiArray", "Float32MultiArray"):
        return np.asarray(msg.data, np.float64)
    if kind == "Image":
        return image(msg)
    if kind == "CompressedImage":
        return compressed_image(msg)
    raise ConfigError(
        f"robot_rl does not read {msgtype} (JointState, Odometry, Imu, PoseStamped, "
        "AckermannDriveStamped, Twist, Float64MultiArray, Image, CompressedImage)"
    )
