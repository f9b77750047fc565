"""What a robot_rl node publishes about itself, in standard message types, so that a rosbag of a
run holds it and Foxglove, RViz or rqt_robot_monitor show it:

- `~/action` (sensor_msgs/JointState, every tick): the action sent to the robot, one named entry
  per action dimension (the action spec's names); zeros while the safety layer held the robot.
- `/diagnostics` (diagnostic_msgs/DiagnosticArray, every tick): one status named after the node,
  with the episode, the step, who drove the tick (`intervention`: the operator's device),
  whether the safety layer held, the loop's recent rate, its target and its overruns. Level OK;
  WARN while the recent rate is more than 10 % below the target or the safety layer holds.

It is an `on_step` observer of the ControlLoop.
"""

from __future__ import annotations

from robot_rl.ros import messages as m
from robot_rl.ros.streams import RosIO

OK, WARN = b"\x00", b"\x01"  # diagnostic_msgs/DiagnosticStatus levels (a byte)


class NodeStatus:
    def __init__(self, io: RosIO, action_names, rate_hz: float | None):
        self.io, self.rate_hz = io, rate_hz
        self.action_names = [str(n) for n in action_names]
        self._action = io.publisher("~/action", "sensor_msgs/msg/JointState", "reliable")
        self._diagnostics = io.publisher("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "reliable")

    def __call__(self, loop, result) -> None:
        t = self.io.now()
        if loop.executed is not None:
            self._action(m.make_joint_state(self.io.types, t, self.action_names, loop.executed))
        rate = loop.clock.recent_hz()
        slow = self.rate_hz is not None and loop.clock.ticks > 10 and rate < 0.9 * self.rate_hz
        values = {
            "episode": loop.episode + 1,
            "step": result.steps,
            "intervention": loop.intervened,
            "safety_hold": loop.held,
            "rate_hz": f"{rate:.2f}",
            "target_hz": "" if self.rate_hz is None else f"{self.rate_hz:g}",
            "overruns": loop.clock.overruns,
        }
        level, message = (
            (WARN, "below its rate" if slow else "safety hold") if slow or loop.held else (OK, "")
        )
        self._diagnostics(self._array(t, level, message or "running", values))

    def _array(self, t: float, level: bytes, message: str, values: dict):
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


def _level(types, level: bytes):
    """rclpy's DiagnosticStatus takes its byte field as bytes; the rosbags store as an int."""
    cls = types("diagnostic_msgs/msg/DiagnosticStatus")
    return level if getattr(cls, "__module__", "").startswith("diagnostic_msgs") else level[0]
