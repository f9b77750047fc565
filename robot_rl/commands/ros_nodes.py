"""The ROS 2 nodes: `robot-rl ros policy | collect | actor [--ros-args ...]`, started by the
launch files in robot_rl/ros/launch/ (`robot-rl ros launch-dir` prints the folder).

- policy: loads a checkpoint (SAC, IQL, diffusion BC) and runs the ControlLoop on the robot;
  an optional teleop device lets the operator end episodes and take over.
- collect: teleoperated demonstrations into an EpisodeStore (`robot-rl collect`'s code).
- actor: the HIL-SERL actor on the robot. It joins the Ray cluster at `ray_address`, connects to
  the learner named `learner_name` there (making it when none runs yet), streams transitions to
  it and acts with its newest weights; the operator's device intervenes.

Each node's parameters are declared below with their types, defaults and descriptions; the
runners take them as a plain dict and a RosIO, so everything under rclpy runs (and is tested)
without it. The robot comes from a robot config (`robot_config`: a name in conf/robot/ or a
YAML path) of kind ros_arm or ros_car, with `kind: ros` cameras.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf

from robot_rl.errors import ConfigError


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: object
    description: str


COMMON = (
    Param(
        "robot_config",
        str,
        "ros_arm",
        "robot config: a name in robot_rl/conf/robot/ (ros_arm, ros_car) or a YAML path",
    ),
    Param("task", str, "", "the task in words, stored with the data (the VLM labeler's goal)"),
    Param("dry_run", bool, False, "read the robot and run everything, publish no command"),
    Param(
        "teleop_device",
        str,
        "",
        "the teleop device's path: a gamepad's /dev/input/event*, a SpaceMouse's hidraw ('': its default)",
    ),
)
NODES: dict[str, tuple[Param, ...]] = {
    "policy": (
        *COMMON,
        Param("checkpoint", str, "", "a checkpoint folder: SAC (HIL-SERL, FastRLAP), IQL or diffusion BC"),
        Param("dataset", str, "", "an EpisodeStore to record the rollouts into ('': not recorded)"),
        Param(
            "episodes",
            int,
            1,
            "episodes to run; each ends at the robot config's max_steps or an operator key",
        ),
        Param(
            "teleop",
            str,
            "none",
            "none, or the operator's device to end episodes and take over: keyboard, gamepad, spacemouse",
        ),
        Param("ddim_steps", int, 0, "diffusion BC: denoising steps per chunk (0: the checkpoint's)"),
    ),
    "collect": (
        *COMMON,
        Param(
            "dataset",
            str,
            "datasets/ros_demos.zarr",
            "the EpisodeStore to record into (appended to if it exists)",
        ),
        Param(
            "checkpoint",
            str,
            "",
            "a policy that drives while the operator takes over at will ('': the operator drives)",
        ),
        Param("teleop", str, "keyboard", "the operator's device: keyboard, gamepad, spacemouse"),
        Param("episodes", int, 10, "episodes to record"),
        Param("reset_s", float, 5.0, "seconds to reset the scene between episodes"),
    ),
    "actor": (
        *COMMON,
        Param("ray_address", str, "", "the Ray cluster the learner runs on ('': a Ray started here)"),
        Param(
            "learner_name",
            str,
            "robot_rl_hil_serl",
            "the learner's name on the cluster (made here when none runs)",
        ),
        Param("learner_config", str, "", "a YAML of HIL-SERL settings over conf/learner/hil_serl.yaml"),
        Param(
            "checkpoint",
            str,
            "",
            "a previous HIL-SERL run folder to continue: its weights and buffers ('': fresh)",
        ),
        Param("demos", str, "", "an EpisodeStore of demonstrations for the learner's prior buffer"),
        Param(
            "reward_classifier",
            str,
            "",
            "a reward classifier checkpoint ('': the operator's success key is the reward)",
        ),
        Param("env_steps", int, 20000, "robot steps to run before the learner saves and the node ends"),
        Param("out", str, "runs/hil_serl_ros", "where the learner writes its checkpoint and buffers"),
        Param(
            "teleop", str, "gamepad", "the operator's device to intervene with: keyboard, gamepad, spacemouse"
        ),
    ),
}


def defaults(kind: str) -> dict:
    return {p.name: p.default for p in NODES[kind]}


def robot_config(name_or_path: str):
    """A robot config by name (robot_rl/conf/robot/<name>.yaml) or path."""
    from robot_rl.config import CONF_DIR

    path = Path(name_or_path)
    if not name_or_path.endswith((".yaml", ".yml")):
        path = CONF_DIR / "robot" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"no robot config {name_or_path} ({path} does not exist)")
    cfg = OmegaConf.load(path)
    if cfg.get("kind") not in ("ros_arm", "ros_car"):
        raise ConfigError(
            f"{path} is a {cfg.get('kind')!r} robot; the ROS nodes drive kind ros_arm or ros_car"
        )
    return cfg


def _robot_config(params: dict, io):
    """The node's robot config; under use_sim_time, once /clock runs (within the config's
    connect_timeout_s: the loop would wait for it forever, and every message age read 0)."""
    cfg = robot_config(params["robot_config"])
    io.wait_for_clock(float(cfg.get("connect_timeout_s", 5.0)))
    return cfg


def _env(params: dict, io):
    from robot_rl.factory import robot_env

    cfg = _robot_config(params, io)
    return cfg, robot_env(cfg, params["task"], bool(params["dry_run"] or cfg.get("dry_run", False)), io)


def _teleop_options(params: dict) -> dict:
    device = params["teleop_device"]
    return {"gamepad": device or "/dev/input/event0", "spacemouse": device or None}


def _teleop(params: dict, robot):
    from robot_rl.factory import make_teleop

    kind = params["teleop"]
    return None if kind in ("", "none") else make_teleop(kind, _teleop_options(params), robot)


def _ros_loop(io) -> dict:
    """What every node's ControlLoop takes from ROS: the ROS clock to tick on under
    use_sim_time, and an observer that publishes the node's status (robot_rl.ros.node_status)."""
    from robot_rl.ros.node_status import NodeStatus

    return {"time_source": io.now if io.use_sim_time else None, "observer": NodeStatus(io)}


def run_policy(params: dict, io) -> dict:
    from robot_rl.commands.collect_robot import StatusLine
    from robot_rl.core import ControlLoop
    from robot_rl.core.loop import each_step, transition_schema
    from robot_rl.datasets import EpisodeRecorder
    from robot_rl.datasets.store import with_camera_codec
    from robot_rl.factory import robot_safety

    if not params["checkpoint"]:
        raise ConfigError("the policy node needs a checkpoint (checkpoint:=PATH)")
    cfg, env = _env(params, io)
    policy, execute_k = _policy(params, env)
    teleop = _teleop(params, env.robot)
    rate = float(cfg.get("control_hz", 10))
    ros = _ros_loop(io)
    recorder = None
    if params["dataset"]:
        Path(params["dataset"]).parent.mkdir(parents=True, exist_ok=True)
        recorder = EpisodeRecorder(
            params["dataset"],
            fps=rate,
            schema=with_camera_codec(transition_schema(env), "video"),  # real cameras: as collect stores them
            attrs={
                "robot": cfg.name,
                "task": params["task"],
                "source": "robot-rl ros policy",
                "policy": params["checkpoint"],
                "state_names": env.state_names(),
            },
        )
    loop = ControlLoop(
        env,
        policy,
        teleop,
        rate_hz=rate,
        execute_k=execute_k,
        safety=robot_safety(cfg),
        recorder=recorder,
        on_step=each_step(StatusLine(), ros["observer"]),
        time_source=ros["time_source"],
    )
    if teleop is not None:
        teleop.connect()
    try:
        with env:
            results = loop.run(int(params["episodes"]))
    finally:
        if teleop is not None:
            teleop.disconnect()
        if recorder is not None:
            recorder.close()
    sys.stderr.write("\n")
    return {
        "episodes": len(results),
        "successes": sum(r.success for r in results),
        "steps": [r.steps for r in results],
        "report": loop.report(),
    }


def _policy(params: dict, env):
    """(the checkpoint's ControlLoop policy, how many actions of a chunk to execute), once the
    checkpoint is known to fit this robot's observations and actions."""
    from robot_rl.policies.loading import load_policy

    policy, kind, needs = load_policy(params["checkpoint"], params.get("ddim_steps") or None)
    have = {"state_dim": env.observation_space["state"].shape[0], "action_dim": env.action_space.shape[0]}
    wrong = [f"{k} {needs[k]} (the robot gives {have[k]})" for k in have if needs[k] != have[k]]
    missing = [k for k in needs["image_keys"] if k not in env.observation_space.spaces]
    if wrong or missing:
        raise ConfigError(
            f"{params['checkpoint']} does not fit robot {params['robot_config']}: "
            + "; ".join(wrong + ([f"cameras {', '.join(missing)} are not in its config"] if missing else []))
        )
    return policy, policy.policy.config.action_horizon if kind == "diffusion_policy" else 1


def run_collect(params: dict, io) -> dict:
    from robot_rl.commands.collect_robot import collect_robot
    from robot_rl.config import compose

    cfg = compose("collect", [])
    OmegaConf.set_struct(cfg, False)
    cfg.robot = _robot_config(params, io)
    cfg.merge_with(
        {
            "out": params["dataset"],
            "teleop": params["teleop"],
            "episodes": int(params["episodes"]),
            "task": params["task"],
            "reset_s": float(params["reset_s"]),
            "dry_run": bool(params["dry_run"]),
            "teleop_options": _teleop_options(params),
            "checkpoint": params["checkpoint"] or None,
        }
    )
    return collect_robot(
        cfg,
        io=io,
        policy=(lambda env: _policy(params, env)) if params["checkpoint"] else None,
        **_ros_loop(io),
    )


def run_actor(params: dict, io) -> dict:
    from robot_rl.commands.train import RAY_KEYS, _dataclass_from
    from robot_rl.config import compose
    from robot_rl.errors import require
    from robot_rl.factory import robot_safety
    from robot_rl.learners.hil_serl import HILSERLConfig
    from robot_rl.learners.hil_serl_ray import ActorServer, named_learner

    ray = require("ray", "dist", "the HIL-SERL actor node")
    settings = compose(
        "train", ["learner=hil_serl"]
    ).learner  # the learner's defaults under conf/learner/hil_serl.yaml
    if params["learner_config"]:
        settings = OmegaConf.merge(settings, OmegaConf.load(params["learner_config"]))
    values = OmegaConf.to_container(settings, resolve=True)
    weights_every = int(values.get("weights_every") or 100)
    for key in RAY_KEYS:  # this node is the actor: where it and the learner run is its own business
        values.pop(key, None)
    cfg, env = _env(params, io)
    # Paths go to the learner, which may run on another machine: absolute, as seen from here.
    values.update(
        env_steps=int(params["env_steps"]),
        human="none",
        rate_hz=float(cfg.get("control_hz", 10)),
        init_from=_absolute(params["checkpoint"] or values.get("init_from")),
        resume=_absolute(values.get("resume")),
        demos=_absolute(params["demos"] or values.get("demos")),
        reward_classifier=params["reward_classifier"] or values.get("reward_classifier"),
    )
    hil = _dataclass_from(HILSERLConfig, values)  # human none: the operator is real, no scripted stand-in
    if hil.reward_classifier:
        from robot_rl.learners.reward_classifier import ClassifierRewardEnv, RewardClassifier

        env = ClassifierRewardEnv(env, RewardClassifier.load(hil.reward_classifier))
    teleop = _teleop(params, env.robot)
    # learner_config's checkpoint_every: checkpoints in `out`; its resume=RUN: RUN goes on, in place
    out = hil.resume or _absolute(params["out"])
    resumed = None
    if hil.resume:
        from robot_rl.learners.hil_serl_ray import KIND
        from robot_rl.utils.checkpoints import LearnerCheckpoints

        resumed = LearnerCheckpoints(out, KIND, hil).state["actor"]
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=params["ray_address"] or None,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            **({} if params["ray_address"] else {"num_cpus": 2}),
        )
    learner, made_here, acted, learned = None, False, None, None
    try:
        learner, made_here = named_learner(
            env.observation_space.spaces,
            int(env.action_space.shape[0]),
            hil,
            params["learner_name"],
            weights_every,
            out,
        )
        actor = ActorServer(
            None,
            asdict(hil),
            env=env,
            teleop=teleop,
            safety=robot_safety(cfg),
            resumed=resumed,
            **_ros_loop(io),
        )
        actor.connect_learner(learner)
        if teleop is not None:
            teleop.connect()
        try:
            acted = actor.run(hil.env_steps)
        finally:
            if teleop is not None:
                teleop.disconnect()
    finally:
        # The node that made the learner saves it and ends it, whatever ended the run (the steps,
        # Ctrl-C, a lost device): its weights and buffers are never lost with the Ray session.
        # A node that joined a running learner leaves it to its maker.
        if made_here:
            learned = ray.get(learner.finish.remote(out))
            ray.kill(learner)
        if started_here:
            ray.shutdown()
    return {"actor": acted, "learner": learned}


def _absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


RUNNERS = {"policy": run_policy, "collect": run_collect, "actor": run_actor}


def main(kind: str, ros_args: list[str]) -> dict:
    """`robot-rl ros <kind> [--ros-args ...]`: the node under rclpy."""
    from robot_rl.ros.rclpy_io import run_node

    if kind not in NODES:
        raise ConfigError(f"unknown node {kind!r} ({', '.join(NODES)})")
    return run_node(kind, ["robot-rl", *ros_args], NODES[kind], RUNNERS[kind])
