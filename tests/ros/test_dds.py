"""The ROS 2 nodes on real rclpy and Fast DDS, in separate processes: a driver process plays the
robot (tests/ros/rclpy_driver.py: the arm or the car of ros_sims, a camera, a /clock) and the
real `robot-rl ros policy|collect --ros-args ...` process runs against it. Each test has its own
ROS_DOMAIN_ID, with discovery limited to this host.

rclpy comes from the `ros-wheels` extra (ROS 2 Jazzy wheels), which `make test` installs."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ros_sims import push_forward_then_succeed

from robot_rl.policies.iql import IQLAgent, IQLConfig

HERE = Path(__file__).parent
ROBOT_RL = str(Path(sys.executable).with_name("robot-rl"))

ARM = {
    "name": "dds_arm",
    "kind": "ros_arm",
    "joint_names": ["j1", "j2", "j3"],
    "joint_states_topic": "joint_states",
    "ee_pose_topic": "hand_pose",
    "command_topic": "target_pose",
    "gripper": {"kind": "topic", "name": "gripper", "open": 0.04, "closed": 0.0, "joint": "finger"},
    "workspace_low": [0.2, -0.3, 0.0],
    "workspace_high": [0.8, 0.3, 0.5],
    "control_hz": 20,
    "max_steps": 30,
    "connect_timeout_s": 10.0,
}
CAR = {
    "name": "dds_car",
    "kind": "ros_car",
    "command": "twist",
    "command_topic": "cmd_vel",
    "odom_topic": "odom",
    "imu_topic": "imu",
    "control_hz": 20,
    "max_steps": 30,
    "connect_timeout_s": 10.0,
}


@pytest.fixture
def ros_env(ros_domain):
    """The environment of the test's ROS processes: its own domain, this host only."""
    return {
        **os.environ,
        "ROS_DOMAIN_ID": str(ros_domain),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }


class Driver:
    """The driver process; `events` are its JSON lines as they arrive. It starts alongside the
    node, as a launch file starts both (the node waits for its messages up to connect_timeout_s);
    whatever reads its events waits for it to be ready first."""

    def __init__(self, env, *args):
        self.events: list[dict] = []
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "rclpy_driver.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._ready = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def ready(self) -> None:
        if not self._ready:
            self._poll(lambda: self.of("ready"), 30, "the driver to start")
            self._ready = True

    def stage(self, fault: str) -> None:
        """pause | resume | corrupt: see rclpy_driver.py."""
        self.ready()
        self.process.stdin.write(fault + "\n")
        self.process.stdin.flush()

    def of(self, kind: str) -> list[dict]:
        return [e for e in list(self.events) if e["kind"] == kind]

    def wait_for(self, condition, timeout_s: float, what: str):
        self.ready()
        self._poll(condition, timeout_s, what)

    def _poll(self, condition, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the driver exited: {self.process.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def close(self):
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def driver(ros_env):
    started = []

    def start(*args):
        started.append(Driver(ros_env, *args))
        return started[-1]

    yield start
    for d in started:
        d.close()


@pytest.fixture
def node(ros_env):
    """`node(kind, *ros_args, **params)` starts `robot-rl ros <kind> --ros-args [ros_args] -p
    key:=value ...` in the test's domain; whatever still runs at the end of the test is killed."""
    started = []

    def start(kind: str, *ros_args: str, **params) -> subprocess.Popen:
        args = [ROBOT_RL, "ros", kind, "--ros-args", *ros_args]
        for key, value in params.items():
            args += ["-p", f"{key}:={str(value).lower() if isinstance(value, bool) else value}"]
        started.append(
            subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ros_env)
        )
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def finish(process: subprocess.Popen, timeout_s: float = 90, code: int = 0) -> tuple[str, str]:
    """The process's stdout and stderr once it has exited with `code` (killed after `timeout_s`)."""
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the node ran past {timeout_s} s: {err[-3000:]}") from None
    assert process.returncode == code and "Traceback" not in err, err[-3000:]
    return out, err


def result_of(process: subprocess.Popen, timeout_s: float = 90) -> dict:
    """What a node that ended normally printed: its result."""
    return json.loads(finish(process, timeout_s)[0])


def one_error(err: str) -> str:
    """The one `robot-rl: error:` of a failed node (after its parameters and its status line)."""
    errors = [
        line[line.index("robot-rl: error: ") :] for line in err.splitlines() if "robot-rl: error: " in line
    ]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def write(tmp_path, name, cfg) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def checkpoint(tmp_path, state_dim: int, action_dim: int) -> str:
    return str(
        IQLAgent(IQLConfig(state_dim=state_dim, action_dim=action_dim, hidden=(16,))).save(tmp_path / "iql")
    )


def stored(path) -> dict:
    """`robot-rl dataset info --json` of a store, from another process."""
    info = subprocess.run([ROBOT_RL, "dataset", "info", "--json", str(path)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    return json.loads(info.stdout)


@pytest.mark.parametrize("command", ["pose", "joint_trajectory"])
def test_policy_node_drives_a_driver_process_arm_over_dds(tmp_path, driver, node, command):
    arm = driver("arm")
    cfg = {**ARM, "command": command}
    if command == "joint_trajectory":
        cfg.update(command_topic="trajectory", joint_low=[-0.5] * 3, joint_high=[0.5] * 3)
    action_dim = 5 if command == "pose" else 4
    process = node(
        "policy", robot_config=write(tmp_path, "arm", cfg), checkpoint=checkpoint(tmp_path, 12, action_dim)
    )
    result = result_of(process)
    assert result["episodes"] == 1 and result["steps"] == [30]
    # The node's own state: the action sent each tick, named; a status each tick on ~/status, and on
    # /diagnostics at 1 Hz. (Waited for: the driver may still be reading the last messages.)
    arm.wait_for(lambda: len(arm.of("status")) == 30 and len(arm.of("action")) == 30, 5, "30 status messages")
    if command == "pose":
        targets = np.array([e["value"] for e in arm.of("target_pose")])
        assert len(targets) >= 30 and np.all(np.isfinite(targets))
        assert np.all(targets[:, :3] >= np.array(ARM["workspace_low"]) - 1e-9)
        assert np.all(targets[:, :3] <= np.array(ARM["workspace_high"]) + 1e-9)
        names = ["dx", "dy", "dz", "dyaw", "gripper"]
    else:
        goals = np.array([e["value"] for e in arm.of("trajectory")])
        assert len(goals) >= 30 and np.all(np.isfinite(goals)) and np.all(np.abs(goals) <= 0.5 + 1e-9)
        assert np.abs(np.diff(goals, axis=0)).max() <= 0.05 + 1e-9  # max_joint_step per command
        names = ["j1", "j2", "j3", "gripper"]
    assert len(arm.of("gripper")) >= 30
    assert arm.of("action")[0]["value"]["names"] == names
    status = [s["value"] for s in arm.of("status")]
    assert [s["step"] for s in status] == [str(i) for i in range(1, 31)]
    assert {s["name"] for s in status} == {"/robot_rl_policy"} and {s["intervention"] for s in status} == {
        "false"
    }
    assert 1 <= len(arm.of("diagnostics")) < 30  # the monitor's copy: once a second, and on a change of level


def test_policy_node_in_a_namespace_with_a_params_file_drives_a_car_and_records(tmp_path, driver, node):
    """Relative topic names follow the node's namespace; a standard ros__parameters file sets the
    node's parameters; Twist output (no ackermann_msgs needed) and a CompressedImage camera."""
    car = driver("car", "--namespace", "/car1", "--camera", "compressed")
    cfg = {**CAR, "cameras": [{"kind": "ros", "name": "front", "topic": "camera/image_raw/compressed",
                               "compressed": True, "width": 32, "height": 24}]}  # fmt: skip
    params = tmp_path / "params.yaml"
    settings = {
        "robot_config": write(tmp_path, "car", cfg),
        "checkpoint": checkpoint(tmp_path, 15, 2),
        "dataset": str(tmp_path / "rollouts.zarr"),
        "episodes": 1,
        "teleop": "none",
    }
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": settings}}))
    result = result_of(node("policy", "-r", "__ns:=/car1", "--params-file", str(params)))
    assert result["steps"] == [30]
    car.wait_for(lambda: car.of("drive")[-1]["value"][1] == 0.0, 5, "the car stopped at the end")
    drives = np.array([e["value"] for e in car.of("drive")])
    assert len(drives) >= 30 and np.all(np.isfinite(drives))
    assert np.all(np.abs(drives[:, 0]) <= 0.35 + 1e-6) and np.all(np.abs(drives[:, 1]) <= 3.0 + 1e-6)
    assert car.of("diagnostics")[-1]["value"]["name"] == "/car1/robot_rl_policy"
    info = stored(tmp_path / "rollouts.zarr")
    assert info["episodes"] == 1 and info["steps"] == 30
    assert info["keys"]["obs/image/front"]["shape"] == [24, 32, 3]


def test_collect_node_records_an_episode_from_a_driver_process(tmp_path, driver, node):
    arm = driver("arm", "--camera", "image")
    fifo, out = tmp_path / "pad", tmp_path / "demos.zarr"
    os.mkfifo(fifo)
    cfg = {**ARM, "max_steps": 200, "cameras": [{"kind": "ros", "name": "wrist", "topic": "camera/image_raw",
                                                 "width": 32, "height": 24}]}  # fmt: skip
    process = node(
        "collect",
        robot_config=write(tmp_path, "arm", cfg),
        dataset=str(out),
        teleop="gamepad",
        teleop_device=str(fifo),
        episodes=1,
        reset_s=0.0,
        task="push forward",
    )
    fd = os.open(fifo, os.O_WRONLY)  # the operator's gamepad: blocks until the node opens it
    try:
        arm.wait_for(lambda: arm.of("target_pose"), 60, "the collect node to drive the arm")
        push_forward_then_succeed(fd)
        result = result_of(process)
    finally:
        os.close(fd)
    assert result["episodes"] == 1 and result["successes"] == 1
    info = stored(out)
    assert info["episodes"] == 1 and info["task"] == "push forward"
    assert info["keys"]["obs/image/wrist"]["shape"] == [24, 32, 3]
    # The operator drove alone: no tick is an intervention (a takeover from a policy).
    assert {s["value"]["intervention"] for s in arm.of("status")} == {"false"}
    targets = np.array([e["value"] for e in arm.of("target_pose")])
    assert np.abs(targets[:, :2] - targets[0, :2]).max() > 0.02  # the stick moved the hand


def test_a_killed_policy_node_sends_nothing_more_and_the_driver_times_out(tmp_path, driver, node):
    """SIGKILL mid-episode: no robot_rl code runs after it, so no stop is sent; the driver sees no
    further command within one control period (two here: DDS delivery on a loaded machine), and its
    own command timeout (0.3 s here; a real driver's, see docs/ros2.md) brings the car to speed 0."""
    car = driver("car", "--command-timeout", "0.3")
    process = node(
        "policy",
        robot_config=write(tmp_path, "car", {**CAR, "max_steps": 2000}),
        checkpoint=checkpoint(tmp_path, 15, 2),
    )
    car.wait_for(lambda: len(car.of("drive")) >= 20, 60, "the policy node to drive")
    process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    process.wait(10)
    car.wait_for(lambda: [t for t in car.of("timeout") if t["t"] > killed], 5, "the driver's command timeout")
    drives = car.of("drive")
    period = 1.0 / CAR["control_hz"]
    assert drives[-1]["t"] <= killed + 2 * period
    assert np.median(np.diff([d["t"] for d in drives])) == pytest.approx(
        period, rel=0.2
    )  # at its rate until then
    timeout = [t for t in car.of("timeout") if t["t"] > killed][0]
    assert 0.3 <= timeout["t"] - drives[-1]["t"] <= 0.3 + 0.25


@pytest.mark.parametrize("fault", ["pause", "corrupt"])
def test_a_stalled_or_corrupt_driver_stops_the_node_and_the_car(tmp_path, driver, node, fault):
    """State messages that stop, or turn NaN (unreadable: they count as none), go stale within
    max_age_s: the node stops the car (speed 0) and exits with one line; no NaN is ever sent."""
    car = driver("car")
    process = node(
        "policy",
        robot_config=write(tmp_path, "car", {**CAR, "max_steps": 2000}),
        checkpoint=checkpoint(tmp_path, 15, 2),
    )
    car.wait_for(lambda: len(car.of("drive")) >= 10, 60, "the policy node to drive")
    car.stage(fault)
    error = one_error(finish(process, 30, code=2)[1])
    assert "/odom: the newest message is" in error
    if fault == "corrupt":
        assert "could not be read: non-finite odometry pose" in error
    car.wait_for(lambda: car.of("drive")[-1]["value"][1] == 0.0, 5, "the stop")
    assert np.all(np.isfinite([e["value"] for e in car.of("drive")]))


def test_dry_run_sends_nothing_and_a_reliable_subscription_hears_no_best_effort_publisher(
    tmp_path, driver, node
):
    car = driver("car")
    cfg = {**CAR, "max_steps": 10}
    result = result_of(
        node(
            "policy",
            robot_config=write(tmp_path, "car", cfg),
            checkpoint=checkpoint(tmp_path, 15, 2),
            dry_run=True,
        )
    )
    assert result["steps"] == [10]
    car.wait_for(lambda: len(car.of("status")) == 10, 5, "10 status messages")
    assert car.of("drive") == []
    # The driver publishes its state best effort, as sensor drivers do: DDS gives a reliable
    # subscription nothing from it.
    cfg = {**CAR, "state_qos": "reliable", "connect_timeout_s": 2.0}
    process = node("policy", robot_config=write(tmp_path, "car", cfg), checkpoint=checkpoint(tmp_path, 15, 2))
    error = one_error(finish(process, 60, code=2)[1])
    assert "no message on /odom within 2.0 s" in error and "compatible QoS" in error


def test_use_sim_time_paces_the_loop_on_the_ros_clock(tmp_path, driver, node):
    """The driver publishes /clock at half real time: a 20 Hz loop on the ROS clock runs at 10 Hz
    of wall-clock time. Without a /clock, a node under use_sim_time stops with one line."""
    car = driver("car", "--clock-rate", "0.5")
    cfg = write(tmp_path, "car", {**CAR, "max_steps": 25})
    result = result_of(
        node("policy", robot_config=cfg, checkpoint=checkpoint(tmp_path, 15, 2), use_sim_time=True)
    )
    assert result["steps"] == [25]
    car.wait_for(lambda: len(car.of("status")) == 25, 5, "25 status messages")
    times = [d["t"] for d in car.of("drive")][:25]
    wall_hz = 1.0 / np.median(np.diff(times))
    assert 8.5 <= wall_hz <= 11.5, wall_hz
    assert float(car.of("status")[-1]["value"]["rate_hz"]) == pytest.approx(20.0, rel=0.15)  # on ROS time


def test_missing_ros_packages_name_the_config_key(tmp_path, node, ros_domain, monkeypatch):
    """ackermann_msgs, control_msgs and tf2_ros have no wheels: where they are missing, a config
    that needs one gets one line naming the package and the key."""
    import rclpy

    from robot_rl.errors import ConfigError
    from robot_rl.ros.backends import RosArm, RosArmConfig
    from robot_rl.ros.rclpy_io import RclpyIO

    missing = [
        p for p in ("ackermann_msgs", "control_msgs", "tf2_ros") if importlib.util.find_spec(p) is None
    ]
    if not missing:
        pytest.skip("ackermann_msgs, control_msgs and tf2_ros are all installed here")
    if "ackermann_msgs" in missing:
        cfg = write(tmp_path, "car", {**CAR, "command": "ackermann"})
        error = one_error(
            finish(node("policy", robot_config=cfg, checkpoint=checkpoint(tmp_path, 15, 2)), 60, code=2)[1]
        )
        assert "ackermann_msgs is not installed" in error and "command: ackermann" in error
        assert "command: twist" in error
    monkeypatch.setenv("ROS_DOMAIN_ID", str(ros_domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    rclpy.init()
    try:
        io = RclpyIO(rclpy.create_node("robot_rl_test"))
        arm = {"joint_names": ["j1"], "connect_timeout_s": 0.2}
        if "tf2_ros" in missing:
            with pytest.raises(ConfigError, match=r"tf2_ros is not installed.*ee_frame.*ee_pose_topic"):
                RosArm(RosArmConfig(**arm, ee_frame="hand"), io).connect()
        if "control_msgs" in missing:
            with pytest.raises(ConfigError, match=r"control_msgs is not installed.*gripper.kind: action"):
                RosArm(
                    RosArmConfig(**arm, ee_pose_topic="hand_pose", gripper={"kind": "action"}), io
                ).connect()
    finally:
        rclpy.try_shutdown()


def test_actor_node_streams_a_driver_process_car_to_a_learner(tmp_path, driver, node):
    """The HIL-SERL actor node over DDS: it starts Ray here, makes the learner, drives the car with
    the learner's policy and streams every transition to it; the learner saves at the end."""
    pytest.importorskip("ray")
    car = driver("car")
    learner = {"training_starts": 10, "batch_size": 16, "weights_every": 5, "sac": {"hidden": [16, 16]}}
    process = node(
        "actor",
        robot_config=write(tmp_path, "car", {**CAR, "max_steps": 10}),
        learner_config=write(tmp_path, "hil", learner),
        env_steps=30,
        teleop="none",
        out=str(tmp_path / "run"),
    )
    result = result_of(process, timeout_s=180)
    assert result["actor"]["env_steps"] == 30 and result["actor"]["episodes"] == 3
    assert result["learner"]["received"] == 30
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").exists()
    car.wait_for(lambda: len(car.of("action")) == 30, 5, "30 actions")
    assert np.all(np.isfinite([e["value"] for e in car.of("drive")])) and len(car.of("drive")) >= 30
    assert car.of("status")[-1]["value"]["name"] == "/robot_rl_actor"


@pytest.mark.parametrize(
    "args, says",
    [
        (["-p", "episodes:=1.5", "-p", "checkpoint:=x"], "parameter episodes must be an integer"),
        (
            ["--params-file", "/nonexistent/params.yaml"],
            "could not start the node with --ros-args --params-file",
        ),
        (
            ["-p", "use_sim_time:=true", "-p", "checkpoint:=x", "-p", "robot_config:=CAR"],
            "nothing published /clock",
        ),
    ],
)
def test_bad_ros_arguments_are_one_line_errors(tmp_path, ros_env, args, says):
    car = write(tmp_path, "car", {**CAR, "connect_timeout_s": 1.0})  # no /clock anywhere: wait 1 s for it
    args = [a.replace("CAR", car) for a in args]
    process = subprocess.run(
        [ROBOT_RL, "ros", "policy", "--ros-args", *args],
        capture_output=True,
        text=True,
        env=ros_env,
        timeout=60,
    )
    assert process.returncode == 2 and says in one_error(process.stderr), process.stderr
