"""An in-process ROS 2 graph for machines without rclpy (tests, offline checks): publishers and
subscriptions on topics, each message carried as DDS would carry it — CDR-serialized with the
real ROS 2 definitions (the rosbags type store) and deserialized for each subscriber — with the
QoS rule DDS applies (a reliable subscription gets nothing from a best-effort publisher), one
type per topic, and a ROS clock that is wall time or, with `use_sim_time`, the graph's /clock.

It stands in for rclpy and DDS only; everything above `RosIO` runs unchanged on it.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

from robot_rl.errors import ConfigError, DeviceError
from robot_rl.ros.messages import bag_types, ros2_typestore
from robot_rl.ros.streams import QOS_PROFILES, RosIO


class LoopbackGraph:
    def __init__(self):
        self.store = ros2_typestore()
        self.types = bag_types(self.store)
        self._subs: dict[str, list[tuple[str, Callable, str]]] = defaultdict(list)
        self._topic_types: dict[str, str] = {}
        self.published: dict[str, list] = defaultdict(list)  # topic -> messages as delivered
        self.sim_time: float | None = None
        self._lock = threading.Lock()

    def _claim(self, topic: str, msgtype: str) -> None:
        known = self._topic_types.setdefault(topic, msgtype)
        if known != msgtype:
            raise ConfigError(f"topic {topic} carries {known}, not {msgtype}")

    def subscribe(self, topic: str, msgtype: str, callback: Callable, qos: str) -> None:
        with self._lock:
            self._claim(topic, msgtype)
            self._subs[topic].append((msgtype, callback, QOS_PROFILES[qos][0]))

    def publish(self, topic: str, msgtype: str, msg, qos: str = "reliable") -> None:
        with self._lock:
            self._claim(topic, msgtype)
            subs = list(self._subs[topic])
        data = self.store.serialize_cdr(msg, msgtype)
        delivered = self.store.deserialize_cdr(data, msgtype)
        self.published[topic].append(delivered)
        for _, callback, reliability in subs:
            if reliability == "reliable" and QOS_PROFILES[qos][0] != "reliable":
                continue  # DDS: incompatible QoS, nothing is delivered
            callback(self.store.deserialize_cdr(data, msgtype))


class LoopbackIO(RosIO):
    """One node's view of a LoopbackGraph. Topic and action names resolve as rclpy resolves them:
    `/x` as it is, `x` in the node's namespace, `~/x` under the node's own name."""

    def __init__(
        self, graph: LoopbackGraph, use_sim_time: bool = False, namespace: str = "/", node: str = "robot_rl"
    ):
        self.graph, self.use_sim_time = graph, use_sim_time
        self.namespace, self.node = "/" + namespace.strip("/"), node
        self.name = self.resolve("~/")[:-1]
        self.types = graph.types
        self.transforms: dict[
            tuple[str, str], tuple[list[float], float]
        ] = {}  # (pose, stamp), as TF keeps them
        self.gripper_servers: set[str] = set()  # action servers that answer
        self.gripper_goals: list[tuple[str, float, float]] = []

    def resolve(self, name: str) -> str:
        if name.startswith("/"):
            return name
        if name.startswith("~/"):
            return f"{self.namespace.rstrip('/')}/{self.node}/{name[2:]}"
        return f"{self.namespace.rstrip('/')}/{name}"

    def subscribe(self, topic, msgtype, callback, qos="sensor") -> None:
        self.graph.subscribe(self.resolve(topic), msgtype, callback, qos)

    def publisher(self, topic, msgtype, qos="command"):
        topic = self.resolve(topic)
        return lambda msg: self.graph.publish(topic, msgtype, msg, qos)

    def now(self) -> float:
        if self.use_sim_time:
            return self.graph.sim_time or 0.0
        return time.time()

    def lookup_transform(self, target_frame, source_frame):
        return self.transforms.get((target_frame, source_frame))

    def connect_gripper(self, action_name, timeout_s) -> None:
        deadline = time.monotonic() + timeout_s
        while self.resolve(action_name) not in self.gripper_servers:
            if time.monotonic() > deadline:
                raise DeviceError(f"the gripper action server {action_name} is not available")
            time.sleep(0.01)

    def send_gripper_goal(self, action_name, position, max_effort) -> None:
        self.gripper_goals.append((self.resolve(action_name), position, max_effort))
