"""Builds what a config names: simulated envs and vector envs, real robots, cameras, teleop devices,
a real robot's env and safety settings. The one place where the device side (sim, hardware, ros)
and the learning side (learners, labeling) meet: learners receive what this module builds.

Driver modules are imported only when their kind is asked for, so a missing extra breaks nothing else.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from robot_rl.core import SafetyConfig
from robot_rl.core.env import EnvSource, RobotEnv
from robot_rl.core.protocols import Robot, Teleop
from robot_rl.errors import ConfigError
from robot_rl.sim.registry import make_sim_env
from robot_rl.tasks.operator import OperatorTask

__all__ = [
    "env_source",
    "make_sim_env",
    "make_robot",
    "make_camera",
    "make_teleop",
    "robot_env",
    "robot_safety",
    "safety_from_config",
]


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


# --- simulation --------------------------------------------------------------------------------


def env_source(env_cfg, dist: str = "none", workers: int = 1) -> EnvSource:
    """What a learner acts on, from an `env` config entry: single envs with their scripted expert,
    vector envs (local, or on `workers` Ray rollout workers with dist local / ray: Ray must be
    running, robot_rl.utils.dist.ray_session), the safety settings, and the sim car's helpers for
    FastRLAP."""
    from robot_rl.sim.ray_vector import vector_env_factory

    env_cfg = OmegaConf.create(_plain(env_cfg))

    def make(seed: int | None = None, expert_noise: float = 0.0, render: bool = False, **overrides):
        if render:  # render() shows the config's render_camera (rendered offscreen)
            overrides = {**overrides, "offscreen": True}
        cfg = OmegaConf.merge(env_cfg, overrides) if overrides else env_cfg
        env, expert = make_sim_env(cfg, expert_noise=expert_noise, seed=seed)
        if render:
            add_render_camera(env, cfg)
        return env, expert

    extras = {}
    if env_cfg.get("kind") == "rc_car":
        from types import SimpleNamespace

        from robot_rl.sim.course import generate_course
        from robot_rl.sim.rc_car import RCCarExpert, practice_hooks

        def driver(env, speed: float):
            """The scripted driver capped at `speed` m/s, on any task over the sim car's course."""
            # The lap task is what the driver was written for; any other task (FastRLAP's practice)
            # gets it the same car and course.
            lap_task = hasattr(env.task, "lateral_offset")
            task = env.task if lap_task else SimpleNamespace(car=env.robot, course=env.robot.world.course)
            return RCCarExpert(task, max_speed=speed)

        def walls():
            return generate_course(
                int(env_cfg.get("course_seed", 0)),
                width=float(env_cfg.get("track_width", 1.2)),
            ).walls()

        extras = {"driver": driver, "practice_hooks": practice_hooks, "walls": walls}
    return EnvSource(
        str(env_cfg.get("name")),
        make,
        vector_env_factory(env_cfg, dist, workers),
        safety_from_config(env_cfg.get("safety") or {}),
        _plain(env_cfg),
        extras,
    )


def make_gym_env(env: str, render_mode: str | None = None, **overrides) -> RobotEnv:
    """The entry point of `gym.make("robot_rl/<Task>-v0", render_mode=None | "rgb_array", **overrides)`:
    the env config `env` (robot_rl/conf/env/) with `overrides` (e.g. cameras=[] for state only);
    rgb_array renders the config's `render_camera` at 240x320."""
    from robot_rl.config import compose

    if render_mode not in (None, "rgb_array"):
        raise ConfigError(f"render_mode {render_mode!r}: robot_rl's envs render 'rgb_array' (or None)")
    cfg = compose(f"env/{env}", []).env
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ConfigError(f"env {env} has no setting {', '.join(unknown)} (it has {', '.join(cfg)})")
    OmegaConf.set_struct(cfg, False)
    cfg = OmegaConf.merge(cfg, overrides, {"offscreen": True} if render_mode else {})
    robot_env_, _ = make_sim_env(cfg)
    if render_mode:
        add_render_camera(robot_env_, cfg)
    robot_env_.metadata = {**RobotEnv.metadata, "render_fps": float(cfg.get("control_hz", 20))}
    return robot_env_


def add_render_camera(env: RobotEnv, env_cfg, height: int = 240, width: int = 320) -> RobotEnv:
    """Make a sim env render its config's `render_camera` (render_mode rgb_array) at the config's
    control rate. A robosuite env must have been made with `offscreen: true`."""
    from robot_rl.sim.registry import render_camera

    if not env_cfg.get("render_camera"):
        raise ConfigError(f"env {env_cfg.get('name')} names no render_camera to render")
    env.set_render_camera(render_camera(env, str(env_cfg.render_camera), height, width))
    env.metadata = {**RobotEnv.metadata, "render_fps": float(env_cfg.get("control_hz", 20))}
    return env


make_gym_env.metadata = RobotEnv.metadata  # what gym.make reads of an entry point: its render modes


def safety_from_config(cfg) -> SafetyConfig:
    """The loop's SafetyConfig from a config mapping."""
    return SafetyConfig.from_dict(_plain(cfg))


# --- real robots -------------------------------------------------------------------------------

# Keys of a robot config that belong to the loop around the driver, not to the driver.
LOOP_KEYS = (
    "name",
    "kind",
    "workspace_low",
    "workspace_high",
    "cameras",
    "control_hz",
    "max_steps",
    "max_frame_age_s",
    "loop_watchdog_s",
)


def driver_settings(cfg) -> dict:
    return {k: v for k, v in _plain(cfg).items() if k not in LOOP_KEYS}


def make_robot(cfg, io=None, **overrides) -> Robot:
    """The driver a robot config names; `io` is the ROS connection (robot_rl.ros.streams.RosIO)
    that ROS robots (kind ros_arm, ros_car) talk through."""
    kind = cfg.get("kind")
    settings = {**driver_settings(cfg), **overrides}
    try:
        if kind in ("ros_arm", "ros_car"):
            from robot_rl.ros.backends import RosArm, RosArmConfig, RosCar, RosCarConfig

            if io is None:
                raise ConfigError(
                    f"robot {cfg.get('name')} is a ROS 2 robot: run it through a ROS node "
                    "(robot-rl ros ..., or the launch files)"
                )
            if kind == "ros_car":
                return RosCar(RosCarConfig(**settings), io)
            # The arm keeps its pose targets in the robot's workspace box, as the loop's safety layer does.
            return RosArm(
                RosArmConfig(
                    **settings,
                    workspace_low=cfg.get("workspace_low"),
                    workspace_high=cfg.get("workspace_high"),
                ),
                io,
            )
        if kind == "dynamixel_arm":
            from robot_rl.hardware.dynamixel_arm import DynamixelArm, DynamixelArmConfig

            return DynamixelArm(DynamixelArmConfig(**settings))
        if kind == "vesc_car":
            from robot_rl.hardware.vesc_car import VescCar, VescCarConfig

            settings.pop("dry_run", None)
            return VescCar(VescCarConfig(**settings))
    except TypeError as exc:
        raise ConfigError(f"robot {cfg.get('name')}: {exc}") from None
    raise ConfigError(f"unknown robot kind {kind!r} (dynamixel_arm, vesc_car, ros_arm, ros_car)")


HUMAN_TELEOPS = ("keyboard", "gamepad", "spacemouse", "leader")


def make_camera(cfg, io=None):
    """A camera from its config; `io` is the ROS connection that `kind: ros` cameras read through."""
    values = _plain(cfg)
    kind = values.pop("kind", None)
    try:
        if kind == "ros":
            from robot_rl.ros.backends import RosCamera, RosCameraConfig

            if io is None:
                raise ConfigError(f"camera {values.get('name')} is a ROS 2 topic: run it through a ROS node")
            return RosCamera(RosCameraConfig(**values), io)
        if kind == "opencv":
            from robot_rl.hardware.opencv_camera import OpenCVCamera, OpenCVCameraConfig

            return OpenCVCamera(OpenCVCameraConfig(**values))
        if kind == "realsense":
            from robot_rl.hardware.realsense_camera import RealSenseCamera, RealSenseCameraConfig

            return RealSenseCamera(RealSenseCameraConfig(**values))
    except TypeError as exc:
        raise ConfigError(f"camera {values.get('name')}: {exc}") from None
    raise ConfigError(f"unknown camera kind {kind!r} (opencv, realsense, ros)")


def make_teleop(kind: str, options, robot) -> Teleop:
    """A human teleop device for `robot` (its action decides arm or car mapping)."""
    from robot_rl.hardware.teleop_input import TeleopMapper

    opts = _plain(options)
    target = "car" if robot.action_spec.shape == (2,) else "arm"
    if kind != "leader" and target == "arm" and robot.action_spec.names[:3] != ("dx", "dy", "dz"):
        raise ConfigError(
            f"teleop={kind} moves the end effector: use the arm's `control: ee` "
            "(or teleop=leader for joint control)"
        )
    mapper = TeleopMapper(
        target, scale=float(opts.get("scale", 1.0)), deadzone=float(opts.get("deadzone", 0.05))
    )
    if kind == "keyboard":
        from robot_rl.hardware.keyboard_teleop import KeyboardTeleop

        return KeyboardTeleop(mapper)
    if kind == "gamepad":
        from robot_rl.hardware.gamepad_teleop import GamepadTeleop

        return GamepadTeleop(mapper, opts.get("gamepad") or "/dev/input/event0")
    if kind == "spacemouse":
        from robot_rl.hardware.spacemouse_teleop import SpaceMouseTeleop

        path = opts.get("spacemouse")
        return SpaceMouseTeleop(mapper, path.encode() if isinstance(path, str) else path)
    if kind == "leader":
        from robot_rl.config import compose
        from robot_rl.hardware.keyboard_teleop import KeyboardTeleop
        from robot_rl.hardware.leader_arm import LeaderArmTeleop

        leader_cfg = opts.get("leader")
        if not leader_cfg:
            raise ConfigError(
                "teleop=leader needs teleop_options.leader: the leader arm's robot config "
                "(a dict, or a name in conf/robot)"
            )
        if isinstance(leader_cfg, str):
            leader_cfg = compose("collect", [f"robot={leader_cfg}"]).robot
        port = opts.get("leader_port") or leader_cfg.get("port")
        if port == getattr(getattr(robot, "cfg", None), "port", None):
            raise ConfigError(
                f"the leader arm needs its own bus: teleop_options.leader_port (both are on {port})"
            )
        leader = make_robot(leader_cfg, dry_run=True, control="joint", port=port)
        events = KeyboardTeleop(mapper) if opts.get("events", "keyboard") == "keyboard" else None
        return LeaderArmTeleop(leader, robot.action_spec, events)
    raise ConfigError(f"unknown teleop {kind!r} for a real robot ({', '.join(HUMAN_TELEOPS)})")


def robot_env(robot_cfg, task_text: str, dry_run: bool, io=None) -> RobotEnv:
    """A real robot's env from its config: the driver, its cameras, an operator-ended task. `io`:
    the ROS connection, for ROS robots and cameras (robot_rl.ros)."""
    robot = make_robot(robot_cfg, io=io, dry_run=dry_run)
    cameras = [make_camera(c, io=io) for c in robot_cfg.get("cameras") or []]
    task = OperatorTask(str(task_text), int(robot_cfg.get("max_steps", 300)))
    return RobotEnv(robot, task, cameras, max_frame_age_s=robot_cfg.get("max_frame_age_s", 0.2))


def robot_safety(robot_cfg) -> SafetyConfig:
    """The loop's safety settings for a real robot: its watchdog, and the workspace box, which
    reads action dims 0-2 as end-effector steps, so only for end-effector control."""
    box = robot_cfg.get("workspace_low") is not None and robot_cfg.get(
        "control", robot_cfg.get("command", "ee")
    ) in ("ee", "pose")
    return SafetyConfig(
        workspace_low=tuple(robot_cfg.workspace_low) if box else None,
        workspace_high=tuple(robot_cfg.workspace_high) if box else None,
        watchdog_s=float(robot_cfg.get("loop_watchdog_s", 0.5)),
    )
