"""The only module that imports rclpy: `RclpyIO` (a RosIO on one rclpy node, spun by a
single-threaded executor in a background thread) and `run_node`, which starts a node, declares
its parameters (types and descriptions from robot_rl.commands.ros_nodes) and runs it.

Ctrl-C and SIGTERM: rclpy's own signal handler is not installed; the first signal reaches the
control loop in the main thread as KeyboardInterrupt, which stops the robot — the stop is
published while the node is still up — and only then is rclpy shut down.
"""

from __future__ import annotations

import sys
import threading

from robot_rl.errors import ConfigError, DeviceError
from robot_rl.ros.messages import MissingRosPackage, rclpy_types
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
    """A RosIO on one rclpy node, whose callbacks a single-threaded executor runs in its one
    background thread (`run_node`).

    Not rclpy's MultiThreadedExecutor: on 2 cores it used 1.6 s of CPU in 3 s to serve a 100 Hz
    JointState and PoseStamped pair (the single-threaded one 0.17 s), and its callbacks fell up to
    0.5 s behind (10 ms), enough for the staleness check to stop the robot. A camera's decoding
    (a few ms a frame) delays the other streams by that much at worst."""

    def __init__(self, node):
        self.node = node
        self.types = rclpy_types
        self.use_sim_time = bool(node.get_parameter("use_sim_time").value)
        self.name = node.get_fully_qualified_name()
        self._subscriptions, self._grippers = [], {}
        self._tf_buffer = None  # TF is listened to only when a config asks for a TF frame

    def listen_to_tf(self) -> None:
        """Start the TF listener (tf2_ros is imported only here: a robot without TF frames does
        not need it)."""
        if self._tf_buffer is None:
            try:
                import tf2_ros
            except ImportError:
                raise MissingRosPackage("tf2_ros", "TF lookups") from None
            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self.node, spin_thread=False)

    def resolve(self, name: str) -> str:
        return self.node.resolve_topic_name(name)

    def subscribe(self, topic, msgtype, callback, qos="sensor") -> None:
        self._subscriptions.append(
            self.node.create_subscription(rclpy_types(msgtype), topic, callback, qos_profile(qos))
        )

    def publisher(self, topic, msgtype, qos="command"):
        return self.node.create_publisher(rclpy_types(msgtype), topic, qos_profile(qos)).publish

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9  # simulation time under use_sim_time

    def lookup_transform(self, target_frame, source_frame):
        import rclpy.time

        self.listen_to_tf()
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
        from rclpy.action import ActionClient

        GripperCommand = _gripper_action()

        client = self._grippers.get(action_name)
        if client is None:
            client = self._grippers[action_name] = ActionClient(self.node, GripperCommand, action_name)
        if not client.wait_for_server(timeout_sec=timeout_s):
            raise DeviceError(
                f"the gripper action server {action_name} did not answer within {timeout_s:.1f} s"
            )

    def send_gripper_goal(self, action_name, position, max_effort) -> None:
        GripperCommand = _gripper_action()
        client = self._grippers.get(action_name)
        if client is None:
            raise DeviceError(f"the gripper action {action_name} was not connected")
        goal = GripperCommand.Goal()
        goal.command.position, goal.command.max_effort = float(position), float(max_effort)
        client.send_goal_async(goal)  # never waited on: the loop keeps its rate


def _gripper_action():
    try:
        from control_msgs.action import GripperCommand
    except ImportError:
        raise MissingRosPackage("control_msgs", "control_msgs/action/GripperCommand") from None
    return GripperCommand


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


_TYPE_WORDS = {int: "an integer (5, not 5.0)", float: "a number", str: "a string", bool: "true or false"}


def _flush(node, timeout_s: float = 0.5) -> None:
    """Wait until the reliable subscribers have received what was published (the stop command
    last of all) before the node goes: destroying it could drop samples still in flight."""
    from rclpy.duration import Duration

    for publisher in list(node.publishers):
        try:
            publisher.wait_for_all_acked(Duration(seconds=timeout_s))
        except Exception:  # best effort publishers and a context that is going away: nothing to wait for
            pass


def run_node(kind: str, argv: list[str], params_spec, runner) -> dict:
    """Start the rclpy node `robot_rl_<kind>`, declare and read `params_spec`
    (robot_rl.commands.ros_nodes.NODES[kind]), and run `runner(params, io)`."""
    try:
        import rclpy
    except ImportError:
        raise ConfigError(
            "rclpy is not importable: source your ROS 2 installation (e.g. /opt/ros/jazzy/setup.bash) and "
            "install robot_rl into that Python (pip install -e '.[ros]'); on a machine without ROS 2, "
            "install the wheels: pip install -e '.[ros,ros-wheels]'"
        ) from None
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.executors import SingleThreadedExecutor

    try:
        from rclpy.signals import SignalHandlerOptions

        options = {"signal_handler_options": SignalHandlerOptions.NO}
    except ImportError:  # before Humble
        options = {}
    try:
        rclpy.init(args=argv, **options)
        node = rclpy.create_node(f"robot_rl_{kind}")
    except Exception as exc:  # rcl's RCLError: unparsable --ros-args, an unreadable params file, a bad domain
        rclpy.try_shutdown()
        why = str(exc).split(", at /")[0]  # without rcl's C source locations
        raise ConfigError(
            f"ROS 2 could not start the node with {' '.join(argv[1:]) or 'no arguments'}: {why}"
        ) from None
    _interrupt_once()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    done = threading.Event()

    def spin() -> None:  # until `done`: the executor is shut down only once this thread has left it
        while not done.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, name="rclpy-executor", daemon=True)
    try:
        params = {}
        for p in params_spec:
            try:  # the default's type is the parameter's type; a launch file's value must match it
                node.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
            except Exception as exc:  # rclpy's InvalidParameterTypeException and kin
                raise ConfigError(
                    f"node {kind}: parameter {p.name} must be {_TYPE_WORDS[p.type]}: {exc}"
                ) from None
            params[p.name] = node.get_parameter(p.name).value
        spinner.start()
        print(
            f"{node.get_fully_qualified_name()}: " + ", ".join(f"{k}={v!r}" for k, v in params.items()),
            file=sys.stderr,
        )
        return runner(params, RclpyIO(node))
    finally:
        _flush(node)
        done.set()
        if spinner.is_alive():  # a spinning thread left behind at exit aborts the process (SIGABRT),
            spinner.join(5.0)  # and one inside the executor as it shuts down raises InvalidHandle
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
