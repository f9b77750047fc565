"""The only module that imports rclpy: `RclpyIO` (a RosIO on one rclpy node, spun by a
multi-threaded executor in a background thread) and `run_node`, which starts a node, declares
its parameters (types and descriptions from robot_rl.commands.ros_nodes) and runs it.

Ctrl-C and SIGTERM: rclpy's own signal handler is not installed; the first signal reaches the
control loop in the main thread as KeyboardInterrupt, which stops the robot — the stop is
published while the node is still up — and only then is rclpy shut down.
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
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        durability=DurabilityPolicy.VOLATILE,
        reliability=ReliabilityPolicy.RELIABLE
        if reliability == "reliable"
        else ReliabilityPolicy.BEST_EFFORT,
    )


class RclpyIO(RosIO):
    """A RosIO on one rclpy node. Subscriptions share a reentrant callback group, so the
    multi-threaded executor serves a slow stream (a camera's decoding) beside the joint states."""

    def __init__(self, node):
        import tf2_ros
        from rclpy.callback_groups import ReentrantCallbackGroup

        self.node = node
        self.types = rclpy_types
        self._group = ReentrantCallbackGroup()
        self._subscriptions, self._grippers = [], {}
        # TF is listened to from the start: a lookup right after connecting finds what arrived.
        self._tf_buffer = tf2_ros.Buffer()
        self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, node, spin_thread=False)

    def subscribe(self, topic, msgtype, callback, qos="sensor") -> None:
        self._subscriptions.append(
            self.node.create_subscription(
                rclpy_types(msgtype), topic, callback, qos_profile(qos), callback_group=self._group
            )
        )

    def publisher(self, topic, msgtype, qos="command"):
        return self.node.create_publisher(rclpy_types(msgtype), topic, qos_profile(qos)).publish

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9  # simulation time under use_sim_time

    def lookup_transform(self, target_frame, source_frame):
        import rclpy.time
        import tf2_ros

        try:
            found = self._tf_buffer.lookup_transform(target_frame, source_frame, rclpy.time.Time())
        except (tf2_ros.LookupException, tf2_ros.ConnectivityException, tf2_ros.ExtrapolationException):
            return None
        t, stamp = found.transform, found.header.stamp
        pose = [
            t.translation.x,
            t.translation.y,
            t.translation.z,
            t.rotation.x,
            t.rotation.y,
            t.rotation.z,
            t.rotation.w,
        ]
        # A static chain (all static transforms) carries stamp 0: it is as fresh as TF is.
        return pose, (stamp.sec + stamp.nanosec * 1e-9) or self.now()

    def connect_gripper(self, action_name, timeout_s) -> None:
        from control_msgs.action import GripperCommand
        from rclpy.action import ActionClient

        client = self._grippers.get(action_name)
        if client is None:
            client = self._grippers[action_name] = ActionClient(
                self.node, GripperCommand, action_name, callback_group=self._group
            )
        if not client.wait_for_server(timeout_sec=timeout_s):
            raise DeviceError(
                f"the gripper action server {action_name} did not answer within {timeout_s:.1f} s"
            )

    def send_gripper_goal(self, action_name, position, max_effort) -> None:
        from control_msgs.action import GripperCommand

        client = self._grippers.get(action_name)
        if client is None:
            raise DeviceError(f"the gripper action {action_name} was not connected")
        goal = GripperCommand.Goal()
        goal.command.position, goal.command.max_effort = float(position), float(max_effort)
        client.send_goal_async(goal)  # never waited on: the loop keeps its rate


def _interrupt_once():
    """SIGINT and SIGTERM (what `ros2 launch` sends on shutdown) become one KeyboardInterrupt in
    the main thread, where the control loop stops the robot; repeats are ignored so the stop and
    the saving that follow it are not cut short."""
    import signal

    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def run_node(kind: str, argv: list[str], params_spec, runner) -> dict:
    """Start the rclpy node `robot_rl_<kind>`, declare and read `params_spec`
    (robot_rl.commands.ros_nodes.NODES[kind]), and run `runner(params, io)`."""
    try:
        import rclpy
    except ImportError:
        raise ConfigError(
            "rclpy is not importable: source your ROS 2 installation (e.g. /opt/ros/humble/setup.bash) "
            "and install robot_rl into that Python (pip install -e '.[ros]')"
        ) from None
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.executors import MultiThreadedExecutor

    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except ImportError:  # before Humble
        rclpy.init(args=argv)
    _interrupt_once()
    node = rclpy.create_node(f"robot_rl_{kind}")
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="rclpy-executor", daemon=True)
    try:
        params = {}
        for p in params_spec:
            try:  # the default's type is the parameter's type; a launch file's value must match it
                node.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
            except Exception as exc:  # rclpy's InvalidParameterTypeException and kin
                raise ConfigError(
                    f"node {kind}: parameter {p.name} must be a {p.type.__name__}: {exc}"
                ) from None
            params[p.name] = node.get_parameter(p.name).value
        spinner.start()
        print(
            f"{node.get_fully_qualified_name()}: " + ", ".join(f"{k}={v!r}" for k, v in params.items()),
            file=sys.stderr,
        )
        return runner(params, RclpyIO(node))
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
