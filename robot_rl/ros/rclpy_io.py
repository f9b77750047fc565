"""The only module that imports rclpy: `RclpyIO` (a RosIO on one rclpy node, spun by a
multi-threaded executor in a background thread) and `run_node`, which starts a node, declares
its parameters (types and descriptions from robot_rl.ros.nodes) and runs it.

Ctrl-C: rclpy's own signal handler is not installed, so the interrupt reaches the control loop in
the main thread, which stops the robot — the stop is published while the node is still up —
and only then is rclpy shut down.
"""

from __future__ import annotations

import sys
import threading

from robot_rl.errors import ConfigError, DeviceError
from robot_rl.ros.messages import rclpy_types
from robot_rl.ros.streams import QOS_PROFILES, RosIO


def qos_profile(name: str):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliability, depth = QOS_PROFILES[name]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT)


class RclpyIO(RosIO):
    def __init__(self, node):
        self.node = node
        self.types = rclpy_types
        self._subscriptions, self._tf, self._grippers = [], None, {}

    def subscribe(self, topic, msgtype, callback, qos="sensor") -> None:
        self._subscriptions.append(self.node.create_subscription(rclpy_types(msgtype), topic, callback, qos_profile(qos)))

    def publisher(self, topic, msgtype, qos="command"):
        return self.node.create_publisher(rclpy_types(msgtype), topic, qos_profile(qos)).publish

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9  # simulation time under use_sim_time

    def lookup_transform(self, target_frame, source_frame):
        import rclpy.time
        import tf2_ros

        if self._tf is None:
            buffer = tf2_ros.Buffer()
            self._tf = (buffer, tf2_ros.TransformListener(buffer, self.node, spin_thread=False))
        try:
            t = self._tf[0].lookup_transform(target_frame, source_frame, rclpy.time.Time()).transform
        except (tf2_ros.LookupException, tf2_ros.ConnectivityException, tf2_ros.ExtrapolationException):
            return None
        return [t.translation.x, t.translation.y, t.translation.z, t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w]

    def send_gripper_goal(self, action_name, position, max_effort) -> None:
        from control_msgs.action import GripperCommand
        from rclpy.action import ActionClient

        client = self._grippers.get(action_name)
        if client is None:
            client = self._grippers[action_name] = ActionClient(self.node, GripperCommand, action_name)
        if not client.server_is_ready():
            raise DeviceError(f"the gripper action server {action_name} is not available")
        goal = GripperCommand.Goal()
        goal.command.position, goal.command.max_effort = float(position), float(max_effort)
        client.send_goal_async(goal)  # never waited on: the loop keeps its rate


def run_node(kind: str, argv: list[str]) -> dict:
    """Start the rclpy node for `kind` (robot_rl.ros.nodes.NODES), read its parameters, run it."""
    try:
        import rclpy
    except ImportError:
        raise ConfigError("rclpy is not importable: source your ROS 2 installation (e.g. /opt/ros/humble/setup.bash) "
                          "and install robot_rl into that Python (pip install -e '.[ros]')") from None
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.executors import MultiThreadedExecutor

    from robot_rl.ros import nodes

    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except ImportError:  # before Humble
        rclpy.init(args=argv)
    node = rclpy.create_node(f"robot_rl_{kind}")
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="rclpy-executor", daemon=True)
    try:
        params = {}
        for p in nodes.NODES[kind]:
            try:  # the default's type is the parameter's type; a launch file's value must match it
                node.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
            except Exception as exc:  # rclpy's InvalidParameterTypeException and kin
                raise ConfigError(f"node {kind}: parameter {p.name} must be a {p.type.__name__}: {exc}") from None
            params[p.name] = node.get_parameter(p.name).value
        spinner.start()
        print(f"{node.get_fully_qualified_name()}: " + ", ".join(f"{k}={v!r}" for k, v in params.items()), file=sys.stderr)
        return nodes.RUNNERS[kind](params, RclpyIO(node))
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
