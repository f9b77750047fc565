"""The robot's side of a ROS 2 graph, for tests: an arm and a car that publish their state at a
fixed rate and follow the commands they receive, as robot drivers and controllers do. They run
on any RosIO: a LoopbackGraph in-process (give the graph), or a real rclpy node over DDS in a
separate driver process (tests/ros/rclpy_driver.py). Topics are relative, so a driver in a
namespace publishes inside it.

Like a real driver, each stops on its own when commands stop for `command_timeout_s` (the car
brakes to speed 0, the arm's target becomes where the hand is); `on_event(kind, value)` hears
every command received and every such timeout.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time

import numpy as np

from robot_rl.hardware.gamepad_teleop import ABS_Y, BTN_START, EV_ABS, EV_KEY
from robot_rl.ros import messages as m
from robot_rl.ros.loopback import LoopbackGraph, LoopbackIO

JOINTS = ["j1", "j2", "j3"]


def push_forward_then_succeed(fd: int) -> None:
    """The operator on a gamepad, as evdev events into the device's FIFO: the stick pushed forward
    for 0.6 s, released, then START (success)."""
    os.write(fd, struct.pack("llHHi", 0, 0, EV_ABS, ABS_Y, -20000))
    time.sleep(0.6)
    os.write(
        fd, struct.pack("llHHi", 0, 0, EV_ABS, ABS_Y, 0) + struct.pack("llHHi", 0, 0, EV_KEY, BTN_START, 1)
    )


class _Publisher:
    def __init__(self, io, hz: float, command_timeout_s: float | None, on_event):
        self.io = LoopbackIO(io) if isinstance(io, LoopbackGraph) else io
        self.period = 1.0 / hz
        self.paused = threading.Event()
        self.command_timeout_s, self.on_event = command_timeout_s, on_event or (lambda kind, value: None)
        self.last_command: float | None = None  # host monotonic time
        self.timeouts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.publish()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def commanded(self, kind: str, value) -> None:
        self.last_command = time.monotonic()
        self.on_event(kind, value)

    def _run(self):
        while not self._stop.wait(self.period):
            last, limit = self.last_command, self.command_timeout_s
            if limit and last is not None and time.monotonic() - last > limit:
                self.last_command = None
                self.timeouts += 1
                self.halt()
                self.on_event("timeout", None)
            if not self.paused.is_set():
                self.step(self.period)
                self.publish()


class ArmSim(_Publisher):
    """JointState (3 joints + a gripper finger) and the hand's PoseStamped; follows PoseStamped
    targets at up to 0.5 m/s, joint commands at once, gripper positions on its topic."""

    def __init__(self, io, hz=100.0, frozen=False, command_timeout_s=None, on_event=None):
        super().__init__(io, hz, command_timeout_s, on_event)
        self.q = np.array([0.1, -0.2, 0.3])
        self.finger = 0.04
        self.pose = np.array([0.5, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0])  # hand pointing down, yaw 0
        self.target = None
        self.frozen = frozen  # a hand that does not move (a blocked arm)
        subscribe = self.io.subscribe
        subscribe("target_pose", "geometry_msgs/msg/PoseStamped", self._on_target, "command")
        subscribe("joint_commands", "std_msgs/msg/Float64MultiArray", self._on_joints, "command")
        subscribe("trajectory", "trajectory_msgs/msg/JointTrajectory", self._on_trajectory, "command")
        subscribe("gripper", "std_msgs/msg/Float64MultiArray", self._on_gripper, "command")
        self._joint_states = self.io.publisher("joint_states", "sensor_msgs/msg/JointState", "sensor")
        self._hand = self.io.publisher("hand_pose", "geometry_msgs/msg/PoseStamped", "sensor")

    def _on_target(self, msg):
        self.target = m.pose(msg)
        self.commanded("target_pose", self.target.tolist())

    def _on_joints(self, msg):
        self.q = np.array(msg.data)
        self.commanded("joint_commands", self.q.tolist())

    def _on_trajectory(self, msg):
        self.q = np.array(msg.points[0].positions)
        self.commanded("trajectory", self.q.tolist())

    def _on_gripper(self, msg):
        self.finger = float(msg.data[0])
        self.on_event("gripper", self.finger)

    def halt(self):
        self.target = None

    def corrupt(self):
        self.q[0] = float("nan")

    def step(self, dt):
        if self.target is not None and not self.frozen:
            gap = self.target[:3] - self.pose[:3]
            self.pose[:3] += gap * min(1.0, 0.5 * dt / max(np.linalg.norm(gap), 1e-9))
            self.pose[3:] = self.target[3:]  # the wrist turns at once

    def publish(self):
        t = self.io.now()
        self._joint_states(
            m.make_joint_state(self.io.types, t, [*JOINTS, "finger"], [*self.q, self.finger], [0.0] * 4)
        )
        self._hand(m.make_pose_stamped(self.io.types, t, "base", self.pose))


class CarSim(_Publisher):
    """A kinematic bicycle: Odometry and Imu at `hz`; follows AckermannDriveStamped on `drive`
    (command="ackermann") or Twist on `cmd_vel` (command="twist")."""

    def __init__(
        self, io, hz=100.0, wheelbase=0.33, command="ackermann", command_timeout_s=None, on_event=None
    ):
        super().__init__(io, hz, command_timeout_s, on_event)
        self.x = self.y = self.yaw = self.speed = self.steer = 0.0
        self.wheelbase = wheelbase
        self.commands: list[tuple[float, float]] = []
        if command == "ackermann":
            self.io.subscribe("drive", "ackermann_msgs/msg/AckermannDriveStamped", self._on_drive, "command")
        else:
            self.io.subscribe("cmd_vel", "geometry_msgs/msg/Twist", self._on_twist, "command")
        self._odom = self.io.publisher("odom", "nav_msgs/msg/Odometry", "sensor")
        self._imu = self.io.publisher("imu", "sensor_msgs/msg/Imu", "sensor")

    def _on_drive(self, msg):
        self._drive(float(msg.drive.steering_angle), float(msg.drive.speed))

    def _on_twist(self, msg):
        speed, yaw_rate = float(msg.linear.x), float(msg.angular.z)
        steer = math.atan(yaw_rate * self.wheelbase / speed) if abs(speed) > 1e-9 else self.steer
        self._drive(steer, speed)

    def _drive(self, steer: float, speed: float):
        self.steer, self.speed = steer, speed
        self.commands.append((steer, speed))
        self.commanded("drive", [steer, speed])

    def halt(self):
        self.speed = 0.0

    def corrupt(self):
        self.x = float("nan")

    def step(self, dt):
        self.x += self.speed * math.cos(self.yaw) * dt
        self.y += self.speed * math.sin(self.yaw) * dt
        self.yaw += self.speed * math.tan(self.steer) / self.wheelbase * dt

    def publish(self):
        t, types = self.io.now(), self.io.types
        yaw_rate = self.speed * math.tan(self.steer) / self.wheelbase
        self._odom(m.make_odometry(types, t, self.x, self.y, self.yaw, self.speed, yaw_rate))
        self._imu(m.make_imu(types, t, [0.0, 0.0, yaw_rate], [0.0, 0.0, 9.81]))
