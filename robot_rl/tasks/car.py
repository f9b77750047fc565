"""The RC car as one robot kind: the observation and action layout that the simulated car
(robot_rl.sim.rc_car), the VESC car (robot_rl.hardware.vesc_car) and the ROS 2 car
(robot_rl.ros.backends.RosCar) all report, so a state policy trained on one runs on the others.

Action (robot units; RobotEnv normalizes it to [-1, 1] by these bounds, 0 = straight, stand still):
  steer  rad, [-MAX_STEER, MAX_STEER], positive turns left: the bicycle-model angle at the front axle
  speed  m/s, [-MAX_SPEED, MAX_SPEED]: the speed controller's target
The bounds belong to the robot kind, not to a config: a normalized action must mean the same angle
and speed on every car. A real car's configured max_steer / max_speed clip below them (for a
gentle first run); they never rescale the action.

Observation, in this order (SI units; body frame: x forward, y left, z up):
  pose (3)         x, y [m], yaw [rad]: odometry (the sim's is in the course frame)
  velocity (3)     body-frame linear velocity [m/s] ([0] is forward speed)
  gyro (3)         body-frame angular velocity [rad/s] ([2] is the yaw rate)
  accel (3)        body-frame specific force [m/s^2] (an IMU at rest reads +9.81 on z)
  wheel_speed (1)  the driven wheels' angular speed [rad/s], positive rolling forward
  steer (1)        steering angle [rad] (the real cars report the commanded angle: a hobby servo
                   has no feedback)
  collision (1)    1.0 if the car hit something during the last command, else 0.0
  timestamp ()     float64 seconds (sim time, or the host's monotonic clock)

wheel_speed is one number, not one per wheel: a real car has one motor whose speed (the VESC's
ERPM, through the gearing) is the only wheel speed it measures, and through an open differential
that is the mean of the driven wheels. Per-wheel speeds would exist only in the sim, so they are
not part of the spec (a policy that learned to use them could not run on a real car).
"""

from __future__ import annotations

from robot_rl.core.specs import ArraySpec

MAX_STEER = 0.35  # rad: the bicycle angle; the inner front wheel then turns ~0.40 rad
MAX_SPEED = 3.0  # m/s, forward and reverse

ACTION_NAMES = ("steer", "speed")
ACTION_UNITS = ("rad", "m/s")

# (entry, element names, unit of each element), in observation order.
_OBSERVATION = (
    ("pose", ("x", "y", "yaw"), ("m", "m", "rad")),
    ("velocity", ("vx", "vy", "vz"), ("m/s",) * 3),
    ("gyro", ("wx", "wy", "wz"), ("rad/s",) * 3),
    ("accel", ("ax", "ay", "az"), ("m/s^2",) * 3),
    ("wheel_speed", ("drive",), ("rad/s",)),
    ("steer", ("steer",), ("rad",)),
    ("collision", ("collision",), ("1",)),
)
OBSERVATION_UNITS = {name: units for name, _, units in _OBSERVATION} | {"timestamp": ("s",)}


def observation_spec() -> dict[str, ArraySpec]:
    """The car's observation entries, in order (a fresh dict: a robot may own it)."""
    spec = {name: ArraySpec((len(names),), names=names) for name, names, _ in _OBSERVATION}
    spec["timestamp"] = ArraySpec((), "float64")
    return spec


def action_spec() -> ArraySpec:
    """[steer rad, speed m/s] within the car kind's bounds."""
    return ArraySpec((2,), low=(-MAX_STEER, -MAX_SPEED), high=(MAX_STEER, MAX_SPEED), names=ACTION_NAMES)


def check_limits(max_steer: float, max_speed: float) -> str | None:
    """What is wrong with a real car's configured clip limits (None: nothing): they must lie within
    the spec's bounds, or they would allow what no normalized action can ask for."""
    if not (0 < max_steer <= MAX_STEER and 0 < max_speed <= MAX_SPEED):
        return (
            f"max_steer {max_steer} rad and max_speed {max_speed} m/s must be positive and at most the car's "
            f"action bounds ({MAX_STEER} rad, {MAX_SPEED} m/s; robot_rl/tasks/car.py)"
        )
    return None
