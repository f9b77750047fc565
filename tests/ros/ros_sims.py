"""The robot's side of a ROS 2 graph, for tests: an arm and a car that publish their state at a
fixed rate on a LoopbackGraph (messages CDR-serialized with the real ROS 2 definitions) and
follow the commands they receive. They stand in for the robot drivers and controllers, which
cannot run here (no ROS 2 on this machine)."""

from __future__ import annotations

import math
import threading

import numpy as np

from robot_rl.ros import messages as m
from robot_rl.ros.loopback import LoopbackIO

JOINTS = ["j1", "j2", "j3"]


class _Publisher:
    def __init__(self, graph, hz: float):
        self.io, self.period = LoopbackIO(graph), 1.0 / hz
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.publish()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(self.period):
            if not self.paused.is_set():
                self.step(self.period)
                self.publish()


class ArmSim(_Publisher):
    """JointState (3 joints + a gripper finger) and the hand's PoseStamped; follows PoseStamped
    targets at up to 0.5 m/s, joint commands at once, gripper positions on its topic."""

    def __init__(self, graph, hz: float = 100.0, frozen: bool = False):
        super().__init__(graph, hz)
        self.q = np.array([0.1, -0.2, 0.3])
        self.finger = 0.04
        self.pose = np.array([0.5, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0])  # hand pointing down, yaw 0
        self.target = None
        self.frozen = frozen  # a hand that does not move (a blocked arm)
        io = self.io
        io.subscribe(
            "/target_pose",
            "geometry_msgs/msg/PoseStamped",
            lambda msg: setattr(self, "target", m.pose(msg)),
            "command",
        )
        io.subscribe(
            "/joint_commands",
            "std_msgs/msg/Float64MultiArray",
            lambda msg: setattr(self, "q", np.array(msg.data)),
            "command",
        )
        io.subscribe(
            "/trajectory",
            "trajectory_msgs/msg/JointTrajectory",
            lambda msg: setattr(self, "q", np.array(msg.points[0].positions)),
            "command",
        )
        io.subscribe(
            "/gripper",
            "std_msgs/msg/Float64MultiArray",
            lambda msg: setattr(self, "finger", msg.data[0]),
            "command",
        )

    def step(self, dt):
        if self.target is not None and not self.frozen:
            gap = self.target[:3] - self.pose[:3]
            self.pose[:3] += gap * min(1.0, 0.5 * dt / max(np.linalg.norm(gap), 1e-9))
            self.pose[3:] = self.target[3:]  # the wrist turns at once

    def publish(self):
        t = self.io.now()
        self.io.publisher("/joint_states", "sensor_msgs/msg/JointState", "sensor")(
            m.make_joint_state(self.io.types, t, [*JOINTS, "finger"], [*self.q, self.finger], [0.0] * 4)
        )
        self.io.publisher("/hand_pose", "geometry_msgs/msg/PoseStamped", "sensor")(
            m.make_pose_stamped(self.io.types, t, "base", self.pose)
        )


class CarSim(_Publisher):
    """A kinematic bicycle: Odometry and Imu at `hz`; follows AckermannDriveStamped on /drive."""

    def __init__(self, graph, hz: float = 100.0, wheelbase: float = 0.33):
        super().__init__(graph, hz)
        self.x = self.y = self.yaw = self.speed = self.steer = 0.0
        self.wheelbase = wheelbase
        self.commands: list[tuple[float, float]] = []
        self.io.subscribe("/drive", "ackermann_msgs/msg/AckermannDriveStamped", self._on_drive, "command")

    def _on_drive(self, msg):
        self.steer, self.speed = float(msg.drive.steering_angle), float(msg.drive.speed)
        self.commands.append((self.steer, self.speed))

    def step(self, dt):
        self.x += self.speed * math.cos(self.yaw) * dt
        self.y += self.speed * math.sin(self.yaw) * dt
        self.yaw += self.speed * math.tan(self.steer) / self.wheelbase * dt

    def publish(self):
        t, types = self.io.now(), self.io.types
        yaw_rate = self.speed * math.tan(self.steer) / self.wheelbase
        self.io.publisher("/odom", "nav_msgs/msg/Odometry", "sensor")(
            m.make_odometry(types, t, self.x, self.y, self.yaw, self.speed, yaw_rate)
        )
        self.io.publisher("/imu", "sensor_msgs/msg/Imu", "sensor")(
            m.make_imu(types, t, [0.0, 0.0, yaw_rate], [0.0, 0.0, 9.81])
        )
