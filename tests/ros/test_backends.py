"""RosArm, RosCar and RosCamera on an in-process ROS 2 graph (robot_rl.ros.loopback: every
message CDR-serialized with the real ROS 2 definitions), against a small simulated arm and car
(ros_sims): fast checks of each backend's behaviour, including faults (stalls, bad messages, QoS
mismatches, TF, gripper actions) that are hard to stage across processes. The backends on rclpy
and Fast DDS, in separate processes, are tests/ros/test_dds.py."""

import math
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rosbags")

from ros_sims import JOINTS, ArmSim, CarSim  # noqa: E402

from robot_rl.core import ControlLoop, SafetyConfig  # noqa: E402
from robot_rl.core.env import RobotEnv  # noqa: E402
from robot_rl.errors import ConfigError, DeviceError, StaleFrameError  # noqa: E402
from robot_rl.ros import messages as m  # noqa: E402
from robot_rl.ros.backends import RosArm, RosArmConfig, RosCamera, RosCameraConfig, RosCar, RosCarConfig  # noqa: E402
from robot_rl.ros.loopback import LoopbackGraph, LoopbackIO  # noqa: E402
from robot_rl.ros.streams import StaleMessageError  # noqa: E402
from robot_rl.tasks.operator import OperatorTask  # noqa: E402


def arm_config(**kw):
    base = dict(
        joint_names=JOINTS,
        joint_low=[-1.0] * 3,
        joint_high=[1.0] * 3,
        ee_pose_topic="/hand_pose",
        command_topic="/target_pose",
        gripper={"kind": "topic", "name": "/gripper", "open": 0.04, "closed": 0.0, "joint": "finger"},
        connect_timeout_s=2.0,
        watchdog_s=0.0,
    )
    return RosArmConfig(**{**base, **kw})


def wait_until(cond, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_arm_pose_commands_are_clipped_steps_with_a_leash():
    graph = LoopbackGraph()
    with ArmSim(graph) as sim:
        arm = RosArm(arm_config(), LoopbackIO(graph))
        with arm:
            obs = arm.observe()
            assert set(obs) == {
                "joint_pos",
                "joint_vel",
                "ee_pos",
                "ee_yaw",
                "gripper",
                "timestamp",
            }  # DynamixelArm's
            np.testing.assert_allclose(obs["joint_pos"], sim.q, atol=1e-6)
            np.testing.assert_allclose(obs["ee_pos"], [0.5, 0.0, 0.3], atol=1e-6)
            assert obs["gripper"][0] == pytest.approx(1.0)  # finger at `open`
            arm.command(np.array([1.0, 0.0, -0.004, 0.05, 1.0]))  # dx far over the limit; close the gripper
            target = m.pose(graph.published["/target_pose"][-1])
            np.testing.assert_allclose(target[:3], [0.51, 0.0, 0.296], atol=1e-9)  # dx clipped to max_step_m
            assert m.yaw_of_quaternion(*target[3:]) == pytest.approx(0.05)
            assert graph.published["/gripper"][-1].data[0] == pytest.approx(0.0)  # closed
            wait_until(lambda: sim.finger == 0.0)
            wait_until(lambda: arm.observe()["gripper"][0] == pytest.approx(0.0))
            with pytest.raises(ValueError, match="finite"):
                arm.command(np.array([np.nan, 0, 0, 0, 0]))
            assert m.pose(graph.published["/target_pose"][-1])[0] == pytest.approx(0.51)  # nothing new sent
            sim.frozen = True  # the hand is blocked: the target may not run away from it, nor turn away
            hand = arm.observe()
            for _ in range(20):
                arm.command(np.array([0.01, 0.0, 0.0, 0.05, 1.0]))
            target = m.pose(graph.published["/target_pose"][-1])
            assert target[0] == pytest.approx(hand["ee_pos"][0] + 0.05)
            yaw = math.atan2(hand["ee_yaw"][1], hand["ee_yaw"][0])
            assert m.yaw_of_quaternion(*target[3:]) == pytest.approx(yaw + 0.3)
    graph = LoopbackGraph()
    with ArmSim(graph):  # the workspace box holds for targets too
        with RosArm(
            arm_config(workspace_low=[0.0, -0.5, 0.29], workspace_high=[1.0, 0.5, 1.0]), LoopbackIO(graph)
        ) as arm:
            arm.command(np.array([0.0, 0.0, -0.01, 0.0, 1.0]))
            assert m.pose(graph.published["/target_pose"][-1])[2] == pytest.approx(0.29)


def test_arm_joint_commands_trajectory_forward_and_gripper_action():
    graph = LoopbackGraph()
    with ArmSim(graph) as sim:
        io = LoopbackIO(graph)
        arm = RosArm(
            arm_config(
                command="joint_trajectory",
                command_topic="/trajectory",
                trajectory_time_s=0.2,
                gripper={"kind": "action", "name": "/gripper_action", "open": 0.08, "closed": 0.0},
                connect_timeout_s=0.2,
            ),
            io,
        )
        with pytest.raises(DeviceError, match="gripper action server /gripper_action"):
            arm.connect()  # no server answers
        io.gripper_servers.add("/gripper_action")
        with arm:
            assert arm.action_spec.names == (*JOINTS, "gripper")
            arm.command(
                np.array([1.0, -0.2, 5.0, -1.0])
            )  # j1 and j3 far: per-step limit 0.05, then the joint limits
            traj = graph.published["/trajectory"][-1]
            assert list(traj.joint_names) == JOINTS and traj.points[0].time_from_start.nanosec == 200_000_000
            np.testing.assert_allclose(traj.points[0].positions, [0.15, -0.2, 0.35])
            wait_until(lambda: np.allclose(sim.q, [0.15, -0.2, 0.35]))  # the robot got it and went there
            assert io.gripper_goals == [("/gripper_action", 0.08, 20.0)]  # -1: open
            arm.command(np.array([0.1, -0.2, 0.3, -1.0]))
            arm.command(np.array([0.1, -0.2, 0.3, 1.0]))
            assert io.gripper_goals[1:] == [("/gripper_action", 0.0, 20.0)]  # a goal only when it changes
        graph2 = LoopbackGraph()
        with ArmSim(graph2) as sim2:
            arm = RosArm(
                arm_config(
                    command="joint_forward", command_topic="/joint_commands", joint_high=[1.0, 1.0, 0.32]
                ),
                LoopbackIO(graph2),
            )
            with arm:
                arm.command(np.array([0.1, -0.2, 0.9, 0.0]))
                np.testing.assert_allclose(
                    graph2.published["/joint_commands"][-1].data, [0.1, -0.2, 0.32]
                )  # joint limit
                wait_until(lambda: abs(sim2.q[2] - 0.32) < 1e-9)


def test_arm_pose_from_tf_and_config_errors():
    graph = LoopbackGraph()
    with ArmSim(graph):
        io = LoopbackIO(graph)
        threading.Timer(
            0.2,
            lambda: io.transforms.update({("base", "tcp"): ([0.4, 0.1, 0.2, 1.0, 0.0, 0.0, 0.0], io.now())}),
        ).start()
        with RosArm(
            arm_config(ee_pose_topic=None, base_frame="base", ee_frame="tcp"), io
        ) as arm:  # waits for TF
            np.testing.assert_allclose(arm.observe()["ee_pos"], [0.4, 0.1, 0.2])
            arm.command(np.array([0.0, 0.01, 0.0, 0.0, -1.0]))
            np.testing.assert_allclose(m.pose(graph.published["/target_pose"][-1])[:3], [0.4, 0.11, 0.2])
            time.sleep(0.3)  # robot_state_publisher stalls: the transform ages
            with pytest.raises(StaleMessageError, match="TF base -> tcp is .* ms old"):
                arm.observe()
        with pytest.raises(StaleMessageError, match="no transform from base to nowhere"):
            RosArm(
                arm_config(ee_pose_topic=None, base_frame="base", ee_frame="nowhere", connect_timeout_s=0.1),
                io,
            ).connect()
    with pytest.raises(ConfigError, match="ee_pose_topic or ee_frame"):
        arm_config(ee_pose_topic=None)
    with pytest.raises(ConfigError, match="joint_low"):
        arm_config(command="joint_forward", joint_low=None)
    with pytest.raises(ConfigError, match="QoS"):
        arm_config(state_qos="fast")


def test_arm_stale_state_stops_the_reading_and_a_reliable_subscription_gets_nothing_from_best_effort():
    graph = LoopbackGraph()
    with ArmSim(graph) as sim:
        with RosArm(arm_config(max_age_s=0.1), LoopbackIO(graph)) as arm:
            arm.observe()
            sim.paused.set()  # the driver stalls
            time.sleep(0.2)
            with pytest.raises(StaleMessageError, match="/joint_states.*ms old"):
                arm.observe()
    graph = LoopbackGraph()
    with ArmSim(graph):  # publishes best effort, as sensor drivers do
        arm = RosArm(arm_config(state_qos="reliable", connect_timeout_s=0.3), LoopbackIO(graph))
        with pytest.raises(StaleMessageError, match="no message on /joint_states.*QoS"):
            arm.connect()


def test_a_non_finite_state_is_never_turned_into_a_target():
    graph = LoopbackGraph()
    with ArmSim(graph) as sim:
        with RosArm(arm_config(max_age_s=0.1), LoopbackIO(graph)) as arm:
            arm.command(np.array([0.01, 0.0, 0.0, 0.0, 1.0]))
            sent = len(graph.published["/target_pose"])
            sim.pose[0] = np.nan  # a driver publishes a broken pose
            time.sleep(0.2)
            with pytest.raises(StaleMessageError, match="could not be read.*not finite"):
                arm.observe()
            with pytest.raises(StaleMessageError):
                arm.command(np.array([0.01, 0.0, 0.0, 0.0, 1.0]))
            assert len(graph.published["/target_pose"]) == sent
            arm.stop()  # holds at the last pose that could be read
            np.testing.assert_allclose(
                m.pose(graph.published["/target_pose"][-1])[:3], [0.5, 0.0, 0.3], atol=0.011
            )
            assert all(np.all(np.isfinite(m.pose(p))) for p in graph.published["/target_pose"])


def test_arm_watchdog_holds_where_the_hand_is_and_dry_run_publishes_nothing():
    graph = LoopbackGraph()
    with ArmSim(graph, frozen=True) as sim:  # a blocked hand: the old target is far from it
        with RosArm(arm_config(watchdog_s=0.1), LoopbackIO(graph)) as arm:
            for _ in range(5):
                arm.command(np.array([0.01, 0.0, 0.0, 0.0, -1.0]))
            sent = len(graph.published["/target_pose"])
            time.sleep(0.4)  # the commands stop
            assert arm._watchdog.trips == 1
            hold = m.pose(graph.published["/target_pose"][sent])
            assert m.pose(graph.published["/target_pose"][sent - 1])[0] == pytest.approx(0.55)
            np.testing.assert_allclose(
                hold[:3], sim.pose[:3], atol=1e-9
            )  # where the hand is, not the old target
    graph = LoopbackGraph()
    with ArmSim(graph):
        with RosArm(arm_config(dry_run=True), LoopbackIO(graph)) as arm:
            arm.command(np.array([0.01, 0.0, 0.0, 0.0, 1.0]))
            arm.stop()
        assert "/target_pose" not in graph.published and "/gripper" not in graph.published


def test_car_commands_observations_and_sim_time():
    graph = LoopbackGraph()
    with CarSim(graph) as sim:
        car = RosCar(RosCarConfig(imu_topic="/imu", watchdog_s=0.0, connect_timeout_s=2.0), LoopbackIO(graph))
        with car:
            car.command(np.array([1.0, 10.0]))  # both over the limits
            assert sim.commands[-1] == pytest.approx((0.35, 3.0))
            wait_until(lambda: car.observe()["pose"][0] > 0.05)
            obs = car.observe()
            assert set(obs) == {
                "pose",
                "velocity",
                "gyro",
                "accel",
                "wheel_speed",
                "steer",
                "collision",
                "timestamp",
            }  # VescCar's
            assert obs["velocity"][0] == pytest.approx(3.0) and obs["steer"][0] == pytest.approx(0.35)
            assert (
                obs["gyro"][2] == pytest.approx(3.0 * math.tan(0.35) / 0.33, rel=1e-5)
                and obs["collision"][0] == 0.0
            )
            np.testing.assert_allclose(car.pose(), obs["pose"])
            with pytest.raises(ValueError, match="finite"):
                car.command(np.array([0.0, np.inf]))
        assert sim.commands[-1] == (pytest.approx(0.35), 0.0)  # leaving the block stopped the car
    graph = LoopbackGraph()
    twist = RosCar(
        RosCarConfig(command="twist", command_topic="/cmd_vel", odom_topic="/odom", watchdog_s=0.0),
        LoopbackIO(graph),
    )
    with CarSim(graph), twist:
        twist.command(np.array([0.2, 1.0]))
        msg = graph.published["/cmd_vel"][-1]
        assert msg.linear.x == 1.0 and msg.angular.z == pytest.approx(math.tan(0.2) / 0.33)
    # use_sim_time: ages are measured on /clock, not the wall clock
    graph = LoopbackGraph()
    graph.sim_time = 100.0
    with CarSim(graph) as sim:
        sim.io.use_sim_time = True
        with RosCar(RosCarConfig(max_age_s=0.5, watchdog_s=0.0), LoopbackIO(graph, use_sim_time=True)) as car:
            sim.paused.set()
            time.sleep(0.1)
            car.observe()  # 0.1 s of wall time, no simulated time: fresh
            graph.sim_time = 101.0
            with pytest.raises(StaleMessageError, match="/odom"):
                car.observe()


def test_car_watchdog_stops_the_car_when_the_loop_stalls():
    graph = LoopbackGraph()
    with CarSim(graph) as sim:
        car = RosCar(
            RosCarConfig(watchdog_s=10.0, connect_timeout_s=2.0), LoopbackIO(graph)
        )  # the backend's own: late
        env = RobotEnv(car, OperatorTask("drive", max_steps=8))
        stalled = {}

        def policy(obs):
            if env.steps == 5:  # the policy hangs (a stuck model, a lost GPU)
                stalled["at"] = len(sim.commands)
                time.sleep(0.5)
            return np.array([0.0, 1.0])

        loop = ControlLoop(env, policy, rate_hz=50, execute_k=1, safety=SafetyConfig(watchdog_s=0.1))
        with env:
            loop.run(1)
        assert sim.commands[stalled["at"] - 1][1] > 0
        assert (
            sim.commands[stalled["at"]][1] == 0.0
        )  # the loop's watchdog published speed 0 while the policy hung
        assert loop.report()["watchdog_trips"] == 1
    # The backend's own watchdog, for a caller that is not a ControlLoop.
    graph = LoopbackGraph()
    with CarSim(graph) as sim, RosCar(RosCarConfig(watchdog_s=0.1), LoopbackIO(graph)) as car:
        car.command(np.array([0.1, 2.0]))
        wait_until(lambda: sim.commands[-1][1] == 0.0)
        assert car._watchdog.trips == 1


class Streamer:
    """A camera driver: publishes `make(t)` every 10 ms until stopped."""

    def __init__(self, io, topic, msgtype, make):
        self.stop = threading.Event()
        publish = io.publisher(topic, msgtype, "sensor")

        def run():
            while not self.stop.wait(0.01):
                publish(make(io.now()))

        threading.Thread(target=run, daemon=True).start()


def test_camera_image_and_compressed_with_stamps_and_resizing():
    graph = LoopbackGraph()
    io = LoopbackIO(graph)
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    cam = RosCamera(
        RosCameraConfig(name="front", topic="/cam/image", width=64, height=48, connect_timeout_s=0.3), io
    )
    with pytest.raises(StaleMessageError, match="/cam/image"):
        cam.connect()  # nobody publishes
    bgr = pixels[..., ::-1].copy()
    driver = Streamer(
        io, "/cam/image", "sensor_msgs/msg/Image", lambda t: m.make_image(io.types, t - 0.05, bgr, "bgr8")
    )
    cam.connect()  # frames captured 50 ms before they are published
    frame = cam.read()
    np.testing.assert_array_equal(frame.image, pixels)
    assert time.monotonic() - frame.timestamp == pytest.approx(0.05, abs=0.03)
    small = RosCamera(
        RosCameraConfig(name="wrist", topic="/cam/compressed", compressed=True, width=32, height=24), io
    )
    compressed = Streamer(
        io,
        "/cam/compressed",
        "sensor_msgs/msg/CompressedImage",
        lambda t: m.make_compressed_image(io.types, t, pixels),
    )
    small.connect()
    assert small.read().image.shape == (24, 32, 3)
    compressed.stop.set()
    # A camera that stops publishing stops the env through its frame-age check.
    with CarSim(graph):
        env = RobotEnv(
            RosCar(RosCarConfig(watchdog_s=0.0), io), OperatorTask("drive", 10), [cam], max_frame_age_s=0.1
        )
        with env:
            env.observe()
            driver.stop.set()
            time.sleep(0.2)
            with pytest.raises(StaleFrameError, match="front"):
                env.observe()
