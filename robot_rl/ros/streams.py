"""The plumbing between ROS 2 topics and robot_rl's backends, without rclpy.

A backend talks to ROS only through a `RosIO` (below): subscribe with a callback, get a publish
function, read the ROS clock, look up a transform, send a gripper goal. On a robot that is
`robot_rl.ros.rclpy_io.RclpyIO` (one rclpy node, spun in a background thread); in tests, an
in-process bus that carries the rosbags type store's messages through CDR serialization.

QoS is chosen per stream: sensor streams subscribe best-effort (a best-effort subscription
receives from reliable and best-effort publishers alike, and never queues stale samples),
commands are published reliable (received by reliable and best-effort subscriptions alike).
A stream config may name another profile.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from robot_rl.errors import ConfigError, DeviceError

# name -> (reliability, history depth); durability is volatile for all (no latched samples).
QOS_PROFILES = {"sensor": ("best_effort", 5), "reliable": ("reliable", 10), "command": ("reliable", 10)}


def check_qos(name: str) -> str:
    if name not in QOS_PROFILES:
        raise ConfigError(f"unknown QoS profile {name!r} (one of {', '.join(QOS_PROFILES)})")
    return name


class StaleMessageError(DeviceError):
    """A stream the robot needs has no message, or none recent enough: its publisher stalled or died."""


class RosIO(abc.ABC):
    """What a ROS backend needs from ROS 2."""

    types: Callable[[str], type]  # message type name -> class (messages.rclpy_types / bag_types)
    use_sim_time: bool = False  # the ROS clock is the /clock topic's simulation time
    name: str = "/robot_rl"  # the node's fully qualified name

    def loop_clock(self) -> Callable[[], float]:
        """What the loop and the watchdogs measure time on: the ROS clock under use_sim_time (so
        a simulator slower than real time is not taken for a stall), else the host's."""
        return self.now if self.use_sim_time else time.monotonic

    def wait_for_clock(self, timeout_s: float) -> None:
        """Under use_sim_time, block (host time) until /clock has set the ROS clock; ConfigError
        after `timeout_s`. Without a clock the loop would wait forever and every age would read 0."""
        deadline = time.monotonic() + timeout_s
        while self.use_sim_time and self.now() <= 0.0:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"use_sim_time is true but nothing published /clock within {timeout_s:g} s: start the "
                    "simulator (or ros2 bag play --clock), or set use_sim_time false"
                )
            time.sleep(0.01)

    def resolve(self, name: str) -> str:
        """A topic name as the node resolves it (`x` in its namespace, `~/x` under its name)."""
        return name

    def listen_to_tf(self) -> None:
        """Start listening to TF, so that lookups right after connecting find what arrived (a
        connection without a TF listener answers no lookup: see lookup_transform)."""
        return None

    @abc.abstractmethod
    def subscribe(self, topic: str, msgtype: str, callback: Callable, qos: str = "sensor") -> None: ...

    @abc.abstractmethod
    def publisher(self, topic: str, msgtype: str, qos: str = "command") -> Callable: ...

    @abc.abstractmethod
    def now(self) -> float:
        """The node's ROS time in seconds (simulation time when `use_sim_time` is set)."""

    def lookup_transform(self, target_frame: str, source_frame: str):
        """(the newest [x, y, z, qx, qy, qz, qw] of source_frame in target_frame, its stamp in
        ROS seconds) from TF, or None while TF does not know it."""
        raise ConfigError("this ROS connection has no TF listener: give the arm an ee_pose_topic")

    def connect_gripper(self, action_name: str, timeout_s: float) -> None:
        """Wait for a control_msgs/GripperCommand action server; DeviceError if none comes."""
        raise ConfigError("this ROS connection cannot send action goals: use a gripper topic")

    def send_gripper_goal(self, action_name: str, position: float, max_effort: float) -> None:
        raise ConfigError("this ROS connection cannot send action goals: use a gripper topic")


@dataclass
class Sample:
    value: object
    stamp: float  # the message's header stamp (ROS time), or its arrival when it has no header
    received: float  # ROS time of arrival
    monotonic: float  # host monotonic time of arrival


class LatestMessage:
    """The newest message of one topic, converted by `convert`, with its stamps. Thread-safe:
    the ROS executor thread writes, the control loop reads."""

    def __init__(self, io: RosIO, topic: str, msgtype: str, convert: Callable, qos: str = "sensor"):
        self.io, self.topic, self.convert = io, io.resolve(topic), convert
        self._lock = threading.Lock()
        self._sample: Sample | None = None
        self._error: str | None = None  # a message that could not be converted (raised to the reader)
        self.count = 0
        io.subscribe(topic, msgtype, self._on_message, check_qos(qos))

    def _on_message(self, msg) -> None:
        try:  # in the executor's thread: an exception here would stop every subscription
            value = self.convert(msg)
            now = self.io.now()
            stamp = getattr(getattr(msg, "header", None), "stamp", None)
            stamp_s = (
                stamp.sec + stamp.nanosec * 1e-9
                if stamp is not None and (stamp.sec or stamp.nanosec)
                else now
            )
        except Exception as exc:  # an unreadable message counts as no message; its error is reported
            self._error = f"the last message on {self.topic} could not be read: {exc}"
            return
        with self._lock:
            self._sample = Sample(value, stamp_s, now, time.monotonic())
            self.count += 1

    def get(self, max_age_s: float | None) -> Sample:
        """The newest sample; StaleMessageError when there is none or it arrived more than
        `max_age_s` ago on the ROS clock (None: any age)."""
        with self._lock:
            sample = self._sample
        why = f"; {self._error}" if self._error else ""
        if sample is None:
            raise StaleMessageError(
                f"no message on {self.topic} yet (is its publisher running, with a compatible QoS?){why}"
            )
        age = self.io.now() - sample.received
        if max_age_s is not None and age > max_age_s:
            raise StaleMessageError(
                f"{self.topic}: the newest message is {1000 * age:.0f} ms old "
                f"(limit {1000 * max_age_s:.0f} ms): its publisher stalled or died{why}"
            )
        return sample

    def wait(self, timeout_s: float) -> Sample:
        """Block (host time) until a first message is in; StaleMessageError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if self._sample is not None:
                    return self._sample
            if time.monotonic() > deadline:
                why = f"; {self._error}" if self._error else ""
                raise StaleMessageError(
                    f"no message on {self.topic} within {timeout_s:.1f} s "
                    f"(is its publisher running, with a compatible QoS?){why}"
                )
            time.sleep(0.005)
