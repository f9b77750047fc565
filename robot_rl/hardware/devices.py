"""Cameras and teleop devices from config (the `cameras` of a robot config; `collect`'s teleop)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from robot_rl.core.protocols import Teleop
from robot_rl.errors import ConfigError

HUMAN_TELEOPS = ("keyboard", "gamepad", "spacemouse", "leader")


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


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
        raise ConfigError(f"teleop={kind} moves the end effector: use the arm's `control: ee` (or teleop=leader for joint control)")
    mapper = TeleopMapper(target, scale=float(opts.get("scale", 1.0)), deadzone=float(opts.get("deadzone", 0.05)))
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
        from robot_rl.hardware.registry import make_robot

        leader_cfg = opts.get("leader")
        if not leader_cfg:
            raise ConfigError("teleop=leader needs teleop_options.leader: the leader arm's robot config (a dict, or a name in conf/robot)")
        if isinstance(leader_cfg, str):
            leader_cfg = compose("collect", [f"robot={leader_cfg}"]).robot
        port = opts.get("leader_port") or leader_cfg.get("port")
        if port == getattr(getattr(robot, "cfg", None), "port", None):
            raise ConfigError(f"the leader arm needs its own bus: teleop_options.leader_port (both are on {port})")
        leader = make_robot(leader_cfg, dry_run=True, control="joint", port=port)
        events = KeyboardTeleop(mapper) if opts.get("events", "keyboard") == "keyboard" else None
        return LeaderArmTeleop(leader, robot.action_spec, events)
    raise ConfigError(f"unknown teleop {kind!r} for a real robot ({', '.join(HUMAN_TELEOPS)})")
