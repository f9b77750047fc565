"""The ROS nodes' runners (policy, collect, HIL-SERL actor) in-process on the loopback graph,
with the robot's side simulated (ros_sims): fast checks of what the nodes do. The same nodes on
rclpy and DDS, in separate processes, are tests/ros/test_dds.py."""

import os
import sys
import threading
import time

import numpy as np
import pytest
import yaml

pytest.importorskip("rosbags")

from ros_sims import JOINTS, ArmSim, CarSim, push_forward_then_succeed  # noqa: E402

from robot_rl.cli import main  # noqa: E402
from robot_rl.commands import ros_nodes as nodes  # noqa: E402
from robot_rl.config import CONF_DIR  # noqa: E402
from robot_rl.datasets import EpisodeStore  # noqa: E402
from robot_rl.errors import ConfigError  # noqa: E402
from robot_rl.policies.iql import IQLAgent, IQLConfig  # noqa: E402
from robot_rl.policies.sac import SACAgent, SACConfig  # noqa: E402
from robot_rl.ros.loopback import LoopbackGraph, LoopbackIO  # noqa: E402

CAR = {
    "name": "test_car",
    "kind": "ros_car",
    "imu_topic": "/imu",
    "control_hz": 50,
    "max_steps": 20,
    "loop_watchdog_s": 0.5,
    "connect_timeout_s": 2.0,
}
ARM = {
    "name": "test_arm",
    "kind": "ros_arm",
    "joint_names": JOINTS,
    "ee_pose_topic": "/hand_pose",
    "command_topic": "/target_pose",
    "gripper": {"kind": "topic", "name": "/gripper", "open": 0.04, "closed": 0.0, "joint": "finger"},
    "control_hz": 20,
    "max_steps": 200,
    "connect_timeout_s": 2.0,
    "workspace_low": [0.2, -0.3, 0.0],
    "workspace_high": [0.8, 0.3, 0.5],
}


def write(tmp_path, name, cfg):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def params(kind, **kw):
    return {**nodes.defaults(kind), **kw}


def test_policy_node_drives_the_car_from_a_checkpoint(tmp_path):
    agent = IQLAgent(IQLConfig(state_dim=15, action_dim=2, hidden=(16,)))
    checkpoint = agent.save(tmp_path / "iql")
    graph = LoopbackGraph()
    with CarSim(graph) as sim:
        result = nodes.run_policy(
            params(
                "policy",
                robot_config=write(tmp_path, "car", CAR),
                checkpoint=str(checkpoint),
                episodes=2,
                dataset=str(tmp_path / "rollouts.zarr"),
            ),
            LoopbackIO(graph),
        )
    assert result["episodes"] == 2 and result["steps"] == [20, 20]
    with EpisodeStore.open(tmp_path / "rollouts.zarr") as store:  # the rollouts, recorded
        assert store.n_episodes == 2 and store.n_steps == 40 and store.attrs["policy"] == str(checkpoint)
    sent = np.array(sim.commands)
    assert len(sent) >= 40 and np.all(np.isfinite(sent))
    assert np.all(np.abs(sent[:, 0]) <= 0.35) and np.all(np.abs(sent[:, 1]) <= 3.0)
    assert sent[-1][1] == 0.0  # stopped at the end
    with pytest.raises(ConfigError, match="checkpoint"):
        nodes.run_policy(params("policy", robot_config=write(tmp_path, "car", CAR)), LoopbackIO(graph))
    arm_policy = IQLAgent(IQLConfig(state_dim=12, action_dim=5, hidden=(16,))).save(tmp_path / "arm_iql")
    with (
        CarSim(graph),
        pytest.raises(ConfigError, match="does not fit.*state_dim 12 .the robot gives 15.*action_dim 5"),
    ):
        nodes.run_policy(
            params("policy", robot_config=write(tmp_path, "car", CAR), checkpoint=str(arm_policy)),
            LoopbackIO(graph),
        )
    sac = SACAgent(SACConfig(state_dim=15, action_dim=2, hidden=(16, 16)), seed=0).save(tmp_path / "sac")
    graph = LoopbackGraph()
    with CarSim(graph) as sim:  # a FastRLAP / HIL-SERL checkpoint drives the same way
        result = nodes.run_policy(
            params("policy", robot_config=write(tmp_path, "car", CAR), checkpoint=str(sac)), LoopbackIO(graph)
        )
    assert result["steps"] == [20] and np.all(np.isfinite(sim.commands))


def test_policy_node_drives_the_ros_car_from_a_sim_car_checkpoint(tmp_path):
    """Sim to real through the one car spec (robot_rl/tasks/car.py): a FastRLAP-style state SAC
    agent trained on the SIM car loads into the ROS policy node with the shipped ros_car config and
    drives the ROS car within its bounds."""
    from robot_rl.core import ControlLoop
    from robot_rl.core.env import RobotEnv
    from robot_rl.core.protocols import Task
    from robot_rl.learners.fastrlap import STATE_SCALE
    from robot_rl.learners.replay import ReplayBuffer, TransitionSink, replay_schema
    from robot_rl.policies.sac import torch_batch
    from robot_rl.sim.rc_car import RCCarExpert, make_rc_car_env

    lap = make_rc_car_env(course_seed=0, cameras=())

    class Drive(Task):
        """The lap task's resets, rewarded by forward speed. No task observation: the lap task's
        checkpoint_rel is the sim course's privileged state, which no real car has."""

        max_steps = 60

        def reset(self, rng):
            lap.task.reset(rng)

        def evaluate(self, obs):
            return float(obs["velocity"][0]), False, False

    env = RobotEnv(lap.robot, Drive())
    state_dim = env.observation_space["state"].shape[0]
    per_key = {
        **STATE_SCALE,
        "pose": (10.0, 10.0, np.pi),
    }  # as FastRLAP scales them (pose: the course's extent)
    scale = [s for key, n in env.state_layout.items() for s in np.broadcast_to(per_key[key], (n,))]
    agent = SACAgent(
        SACConfig(
            state_dim=state_dim,
            action_dim=2,
            hidden=(32, 32),
            critic_ensemble=4,
            critic_subsample=2,
            action_rate_limit=0.2,
            state_scale=tuple(scale),
            angle_indices=(2,),
        ),
        seed=0,
    )
    buffer = ReplayBuffer(1000, replay_schema(env.observation_space.spaces, 2))
    expert = RCCarExpert(lap.task, noise=0.3, seed=0, max_speed=2.0)
    loop = ControlLoop(
        env, lambda obs: expert(), rate_hz=None, recorder=TransitionSink(buffer.add, keep_prev=True)
    )
    loop.run(1)
    loop.close()
    lap.close()
    rng = np.random.default_rng(0)
    for _ in range(20):
        agent.update([torch_batch(buffer.sample(32, rng), ()) for _ in range(agent.cfg.cta_ratio)])
    checkpoint = agent.save(tmp_path / "sim_sac")
    car = yaml.safe_load((CONF_DIR / "robot" / "ros_car.yaml").read_text())
    car.update(
        imu_topic="/imu", control_hz=50, max_steps=20, connect_timeout_s=2.0
    )  # CarSim's IMU; a short, fast run
    graph = LoopbackGraph()
    with CarSim(graph) as sim:
        result = nodes.run_policy(
            params(
                "policy",
                robot_config=write(tmp_path, "ros_car", car),
                checkpoint=str(checkpoint),
                dataset=str(tmp_path / "rollouts.zarr"),
            ),
            LoopbackIO(graph),
        )
    assert result["steps"] == [20]
    with EpisodeStore.open(tmp_path / "rollouts.zarr") as store:
        assert (
            store.attrs["state_names"] == env.state_names()
        )  # the ROS car's state is the sim car's, entry for entry
    sent = np.array(sim.commands)
    assert len(sent) >= 20 and np.all(np.isfinite(sent))
    assert np.all(np.abs(sent[:, 0]) <= car["max_steer"]) and np.all(np.abs(sent[:, 1]) <= car["max_speed"])
    assert (
        np.any(sent[:-1, 1] != 0.0) and sent[-1][1] == 0.0
    )  # the agent drove; the node stopped the car at the end


def test_collect_node_records_a_gamepad_episode_on_the_arm(tmp_path):
    fifo, out = tmp_path / "pad", tmp_path / "demos.zarr"
    os.mkfifo(fifo)
    graph = LoopbackGraph()

    def operator():  # waits for the arm to be live, pushes the stick, then marks success
        fd = os.open(fifo, os.O_WRONLY)
        try:
            while "/target_pose" not in graph.published:
                time.sleep(0.01)
            push_forward_then_succeed(fd)
            time.sleep(1.0)  # the device stays plugged in until the session is over
        finally:
            os.close(fd)

    threading.Thread(target=operator, daemon=True).start()
    with ArmSim(graph) as sim:
        result = nodes.run_collect(
            params(
                "collect",
                robot_config=write(tmp_path, "arm", ARM),
                dataset=str(out),
                teleop="gamepad",
                teleop_device=str(fifo),
                episodes=1,
                reset_s=0.0,
                task="push forward",
            ),
            LoopbackIO(graph),
        )
        assert result["episodes"] == 1 and result["successes"] == 1
        with EpisodeStore.open(out) as store:
            info = store.info()
            assert info["episodes"] == 1 and store.attrs["task"] == "push forward"
            actions = np.asarray(store.array("action")[:])
        assert np.abs(actions[:, :3]).max() > 0.1  # the stick moved the hand
        assert sim.pose[0] != pytest.approx(0.5, abs=1e-3) or sim.pose[1] != pytest.approx(0.0, abs=1e-3)


def test_actor_node_streams_to_a_named_learner_on_ray(tmp_path):
    pytest.importorskip("ray")
    learner_cfg = write(
        tmp_path,
        "hil",
        {"training_starts": 10, "batch_size": 16, "weights_every": 5, "sac": {"hidden": [16, 16]}},
    )
    graph = LoopbackGraph()
    with CarSim(graph) as sim:
        result = nodes.run_actor(
            params(
                "actor",
                robot_config=write(tmp_path, "car", {**CAR, "max_steps": 10}),
                learner_config=learner_cfg,
                env_steps=30,
                teleop="none",
                out=str(tmp_path / "run"),
                learner_name="test_learner",
            ),
            LoopbackIO(graph),
        )
    assert result["actor"]["env_steps"] == 30 and result["actor"]["episodes"] == 3
    assert result["learner"]["received"] == 30  # every transition reached the learner
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").exists()
    assert (tmp_path / "run" / "buffers" / "online.zarr").exists()
    assert len(sim.commands) >= 30 and np.all(np.isfinite(sim.commands))


def test_cli_ros_without_rclpy_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rclpy", None)  # as on a machine without ROS 2: import rclpy fails
    assert main(["ros", "policy", "--ros-args", "-p", "checkpoint:=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "source your ROS 2 installation" in err
