"""One car spec (robot_rl/tasks/car.py) for every car backend. The sim car (from the rc_car env
config), the VESC car (from conf/robot/vesc_car.yaml, against the VESC firmware simulator on a pty)
and the ROS 2 car (from conf/robot/ros_car.yaml, on the in-process loopback graph with a simulated
car on the robot's side) report the same observation and action spaces, observe what those spaces
say, and in the same units, so a state policy trained in the sim runs on the real cars."""

import math
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from robot_rl.core.env import RobotEnv
from robot_rl.core.specs import ArraySpec
from robot_rl.errors import ConfigError
from robot_rl.tasks import car as spec
from robot_rl.tasks.operator import OperatorTask

ROOT = Path(__file__).parents[2]
CONF = ROOT / "robot_rl" / "conf"
sys.path.insert(0, str(ROOT / "tests" / "ros"))  # ros_sims: the robot's side of the loopback graph

# The spec, written out: changing the car's layout must be a deliberate change here too.
LAYOUT = [
    ("pose", 3),
    ("velocity", 3),
    ("gyro", 3),
    ("accel", 3),
    ("wheel_speed", 1),
    ("steer", 1),
    ("collision", 1),
]


# --- the checks --------------------------------------------------------------------------------
def check_spaces(robot) -> None:
    """The robot's spaces are the spec's: entries in order with their shapes, dtypes and element
    names; the action's shape, names and bounds."""
    want = spec.observation_spec()
    assert list(robot.observation_spec) == list(want)
    for key, s in want.items():
        got = robot.observation_spec[key]
        assert (got.shape, got.dtype, got.names) == (s.shape, s.dtype, s.names), key
    a = robot.action_spec
    assert a.shape == (2,) and a.names == spec.ACTION_NAMES
    low, high = a.bounds()
    assert low.tolist() == [-spec.MAX_STEER, -spec.MAX_SPEED] and high.tolist() == [
        spec.MAX_STEER,
        spec.MAX_SPEED,
    ]


def check_observation(obs: dict) -> None:
    """An observation has the spec's entries, each of its shape and dtype, all finite."""
    want = spec.observation_spec()
    assert set(obs) == set(want)
    for key, s in want.items():
        value = obs[key]
        assert isinstance(value, (np.ndarray, np.generic)), (key, type(value))
        assert value.shape == s.shape and value.dtype == np.dtype(s.dtype), (key, value.shape, value.dtype)
        assert np.all(np.isfinite(value)), (key, value)


# --- the backends ------------------------------------------------------------------------------
class SimBackend:
    def __init__(self, stack):
        from robot_rl.sim.rc_car import WHEEL_RADIUS, from_config

        cfg = OmegaConf.load(CONF / "env" / "rc_car.yaml")
        cfg.cameras, cfg.start_noise = [], False
        env, _ = from_config(cfg)
        stack.callback(env.close)
        env.reset(seed=0)
        self.robot, self.wheel_radius, self.measures_yaw = env.robot, WHEEL_RADIUS, True

    def drive(self, action, seconds: float) -> dict:
        for _ in range(round(seconds * 20)):  # 20 Hz: each command steps 50 ms of physics
            self.robot.command(np.asarray(action))
        return self.robot.observe()


class RealBackend:
    """Commands every 10 ms for `seconds` of wall time (the driver's watchdog stays fed)."""

    def drive(self, action, seconds: float) -> dict:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.robot.command(np.asarray(action))
            self.robot.observe()
            time.sleep(0.01)
        return self.robot.observe()


class VescBackend(RealBackend):
    def __init__(self, stack):
        pytest.importorskip("serial", reason="pyserial (robot_rl[hardware]) is not installed")
        from robot_rl.factory import make_robot
        from robot_rl.hardware.fakes.vesc_sim import VescSimulator

        vesc = stack.enter_context(VescSimulator(timeout_s=0.5))
        self.robot = stack.enter_context(
            make_robot(OmegaConf.load(CONF / "robot" / "vesc_car.yaml"), port=vesc.port)
        )
        # The simulated firmware's IMU reads no rotation: its yaw rate says nothing about units.
        self.wheel_radius, self.measures_yaw = self.robot.cfg.wheel_radius, False


class RosBackend(RealBackend):
    def __init__(self, stack):
        pytest.importorskip("rosbags")
        from ros_sims import CarSim

        from robot_rl.factory import make_robot
        from robot_rl.ros.loopback import LoopbackGraph, LoopbackIO

        graph = LoopbackGraph()
        stack.enter_context(CarSim(graph))  # a kinematic bicycle publishing /odom and /imu
        cfg = OmegaConf.load(CONF / "robot" / "ros_car.yaml")
        self.robot = stack.enter_context(
            make_robot(cfg, LoopbackIO(graph), imu_topic="/imu", watchdog_s=0.0, connect_timeout_s=2.0)
        )
        self.wheel_radius, self.measures_yaw = self.robot.cfg.wheel_radius, True


BACKENDS = {"sim": SimBackend, "vesc": VescBackend, "ros": RosBackend}


@pytest.fixture
def cars():
    with ExitStack() as stack:
        yield {name: make(stack) for name, make in BACKENDS.items()}


# --- the tests ---------------------------------------------------------------------------------
def test_the_spec_is_the_car_layout():
    obs = spec.observation_spec()
    assert [(k, s.shape[0]) for k, s in obs.items() if k != "timestamp"] == LAYOUT
    assert list(obs)[-1] == "timestamp" and obs["timestamp"] == ArraySpec((), "float64")
    assert all(len(spec.OBSERVATION_UNITS[k]) == n for k, n in LAYOUT)
    assert (
        spec.OBSERVATION_UNITS["wheel_speed"] == ("rad/s",)
        and spec.OBSERVATION_UNITS["accel"] == ("m/s^2",) * 3
    )
    assert spec.ACTION_UNITS == ("rad", "m/s") and spec.action_spec().bounds()[1].tolist() == [0.35, 3.0]
    # FastRLAP divides each state entry by a typical magnitude: it has one for every entry.
    from robot_rl.learners.fastrlap import STATE_SCALE

    assert set(STATE_SCALE) | {"pose"} == {k for k, _ in LAYOUT}


def test_every_car_reports_the_same_spaces(cars):
    described = {}
    for name, car in cars.items():
        check_spaces(car.robot)
        r = car.robot
        described[name] = (
            [(k, s.shape, s.dtype, s.names) for k, s in r.observation_spec.items()],
            (r.action_spec.shape, r.action_spec.names, [b.tolist() for b in r.action_spec.bounds()]),
            RobotEnv(r, OperatorTask("drive", 10)).state_names(),
        )  # what a state policy reads
    assert described["sim"] == described["vesc"] == described["ros"]
    assert len(described["sim"][2]) == sum(n for _, n in LAYOUT)


def test_observations_fit_the_spec(cars):
    for _, car in cars.items():
        check_observation(car.robot.observe())  # at rest
        check_observation(car.drive([0.1, 0.5], 0.3))  # and on the move


def test_units_agree_when_driving(cars):
    """Straight at 1 m/s, then a left turn at 0.2 rad: every car reads m/s, rad/s and m/s^2."""
    for name, car in cars.items():
        obs = car.drive([0.0, 1.0], 1.5)
        assert obs["velocity"][0] == pytest.approx(1.0, abs=0.1), name
        assert np.abs(obs["velocity"][1:]).max() < 0.05, name
        assert obs["wheel_speed"][0] == pytest.approx(obs["velocity"][0] / car.wheel_radius, rel=0.05), (
            name
        )  # rad/s
        assert obs["accel"][2] == pytest.approx(9.81, abs=0.3), name  # m/s^2, not g
        assert obs["steer"][0] == pytest.approx(0.0, abs=1e-3) and obs["collision"][0] == 0.0, name
        obs = car.drive([0.2, 1.0], 1.0)
        assert obs["steer"][0] == pytest.approx(0.2, abs=0.01), name  # rad
        assert abs(obs["velocity"][2]) < 0.05, name  # vertical speed: no yaw rate or anything else in it
        if car.measures_yaw:
            yaw_rate = obs["velocity"][0] * math.tan(0.2) / 0.33
            assert obs["gyro"][2] == pytest.approx(yaw_rate, rel=0.1), name  # rad/s, positive to the left


def test_the_checks_catch_a_mismatch():
    class Robot:
        observation_spec, action_spec = spec.observation_spec(), spec.action_spec()

    check_spaces(Robot())
    old_sim = Robot()
    old_sim.observation_spec = {
        **spec.observation_spec(),
        "wheel_speed": ArraySpec((4,), names=("fl", "fr", "rl", "rr")),
    }
    old_real = Robot()
    old_real.observation_spec = {k: s for k, s in spec.observation_spec().items() if k != "wheel_speed"}
    reordered = Robot()
    reordered.observation_spec = dict(reversed(spec.observation_spec().items()))
    narrow = Robot()
    narrow.action_spec = ArraySpec((2,), low=(-0.3, -3.0), high=(0.3, 3.0), names=spec.ACTION_NAMES)
    for robot in (old_sim, old_real, reordered, narrow):
        with pytest.raises(AssertionError):
            check_spaces(robot)
    good = {k: np.zeros(s.shape, s.dtype) for k, s in spec.observation_spec().items()}
    check_observation(good)
    bad = [
        {**good, "wheel_speed": np.zeros(4, np.float32)},
        {**good, "pose": np.zeros(3)},  # float64
        {**good, "gyro": np.array([0.0, np.nan, 0.0], np.float32)},
        {**good, "timestamp": 1.0},
        {k: v for k, v in good.items() if k != "steer"},
        {**good, "extra": np.zeros(1, np.float32)},
    ]
    for obs in bad:
        with pytest.raises(AssertionError):
            check_observation(obs)


def test_configured_limits_clip_within_the_spec(tmp_path):
    """A real car's max_steer / max_speed clip commands; they never change what an action means."""
    pytest.importorskip("rosbags")
    from ros_sims import CarSim

    from robot_rl.hardware.vesc_car import VescCarConfig
    from robot_rl.ros.backends import RosCar, RosCarConfig
    from robot_rl.ros.loopback import LoopbackGraph, LoopbackIO

    for make in (VescCarConfig, RosCarConfig):
        with pytest.raises(ConfigError, match="action bounds"):
            make(max_steer=0.5)
        with pytest.raises(ConfigError, match="action bounds"):
            make(max_speed=4.0)
    graph = LoopbackGraph()
    with (
        CarSim(graph) as sim,
        RosCar(
            RosCarConfig(max_speed=1.0, max_steer=0.2, watchdog_s=0.0, connect_timeout_s=2.0),
            LoopbackIO(graph),
        ) as car,
    ):
        check_spaces(car)  # the spec's bounds still
        car.command(np.array([0.35, 3.0]))
        assert sim.commands[-1] == pytest.approx((0.2, 1.0))
