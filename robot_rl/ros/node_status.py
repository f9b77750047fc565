"""What a robot_rl node publishes about itself, in standard message types, so that a rosbag of a
run holds it and Foxglove, RViz or rqt_robot_monitor show it:

- `~/action` (sensor_msgs/JointState, every tick): the action the loop commanded, one named entry
  per action dimension (the action spec's names); zeros while the safety layer held the robot
  (in a dry run nothing reaches the robot).
- `~/status` (diagnostic_msgs/DiagnosticArray, every tick, for recordings): one status named after
  the node, with the episode, the step, `intervention` (the operator's device took over from the
  policy this tick), `safety_hold`, the loop's recent rate, its target and its overruns. Level OK;
  WARN while the recent rate is more than 10 % below the target or the safety layer holds.
- `/diagnostics`: the same status, once a second of host time and at once when its level changes,
  as ROS 2's diagnostics tools expect (diagnostic_updater publishes at 1 Hz).

It is an `on_step` observer of the ControlLoop.
"""

from __future__ import annotations

import time

from robot_rl.ros import messages as m
from robot_rl.ros.streams import RosIO

OK, WARN = 0, 1  # diagnostic_msgs/DiagnosticStatus levels


class NodeStatus:
    def __init__(self, io: RosIO, diagnostics_period_s: float = 1.0):
        self.io, self.period = io, diagnostics_period_s
        self._names: list[str] | None = None
        self._action = io.publisher("~/action", "sensor_msgs/msg/JointState", "reliable")
        self._status = io.publisher("~/status", "diagnostic_msgs/msg/DiagnosticArray", "reliable")
        self._diagnostics = io.publisher("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "reliable")
        self._last_level, self._last_diagnostics = None, -float("inf")

    def __call__(self, loop, result) -> None:
        t, target = self.io.now(), loop.clock.rate_hz
        if loop.executed is not None:
            if self._names is None:  # the robot's, known once the loop runs it: read once, not every tick
                self._names = [str(n) for n in loop.env.robot.action_spec.names or ()]
            self._action(m.make_joint_state(self.io.types, t, self._names, loop.executed))
        rate = loop.clock.recent_hz()
        slow = target is not None and loop.clock.ticks > 10 and rate < 0.9 * target
        if slow:
            level, message = WARN, "below its rate"
        elif loop.held:
            level, message = WARN, "safety hold"
        else:
            level, message = OK, "running"
        values = {
            "episode": loop.episode + 1,
            "step": result.steps,
            "intervention": loop.intervened,
            "safety_hold": loop.held,
            "rate_hz": f"{rate:.2f}",
            "target_hz": "" if target is None else f"{target:g}",
            "overruns": loop.clock.overruns,
        }
        status = self._array(t, level, message, values)
        self._status(status)
        now = time.monotonic()
        if level != self._last_level or now - self._last_diagnostics >= self.period:
            self._diagnostics(status)
            self._last_level, self._last_diagnostics = level, now

    def _array(self, t: float, level: int, message: str, values: dict):
        types = self.io.types
        status = types("diagnostic_msgs/msg/DiagnosticStatus")(
            level=_level(types, level),
            name=self.io.name,
            message=message,
            hardware_id="",
            values=[
                types("diagnostic_msgs/msg/KeyValue")(
                    key=k, value=str(v).lower() if isinstance(v, bool) else str(v)
                )
                for k, v in values.items()
            ],
        )
        return types("diagnostic_msgs/msg/DiagnosticArray")(header=m.header(types, t), status=[status])


def _level(types, level: int):
    """DiagnosticStatus.level is a ROS byte: an int in the rosbags store (whose classes carry
    `__msgtype__`), bytes in rclpy's."""
    return level if hasattr(types("diagnostic_msgs/msg/DiagnosticStatus"), "__msgtype__") else bytes([level])
