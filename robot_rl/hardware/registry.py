"""Real robots from their `robot` config (robot_rl/conf/robot/<name>.yaml): `kind` picks the driver."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from robot_rl.core.protocols import Robot
from robot_rl.errors import ConfigError

# Keys of a robot config that belong to the loop around the driver, not to the driver.
LOOP_KEYS = ("name", "kind", "workspace_low", "workspace_high", "cameras", "control_hz", "max_steps",
             "max_frame_age_s", "loop_watchdog_s")


def driver_settings(cfg) -> dict:
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {k: v for k, v in values.items() if k not in LOOP_KEYS}


def make_robot(cfg, io=None, **overrides) -> Robot:
    """The driver a robot config names; `io` is the ROS connection (robot_rl.ros.streams.RosIO)
    that ROS robots (kind ros_arm, ros_car) talk through."""
    kind = cfg.get("kind")
    settings = {**driver_settings(cfg), **overrides}
    try:
        if kind in ("ros_arm", "ros_car"):
            from robot_rl.ros.backends import RosArm, RosArmConfig, RosCar, RosCarConfig

            if io is None:
                raise ConfigError(f"robot {cfg.get('name')} is a ROS 2 robot: run it through a ROS node (robot-rl ros ..., or the launch files)")
            if kind == "ros_car":
                return RosCar(RosCarConfig(**settings), io)
            # The arm keeps its pose targets in the robot's workspace box, as the loop's safety layer does.
            return RosArm(RosArmConfig(**settings, workspace_low=cfg.get("workspace_low"), workspace_high=cfg.get("workspace_high")), io)
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
