"""The spine: device protocols, RobotEnv, ControlLoop and the safety layer."""

from robot_rl.core.env import RobotEnv
from robot_rl.core.loop import ActionChunkQueue, ControlLoop, EpisodeResult
from robot_rl.core.protocols import Camera, Robot, Task, Teleop
from robot_rl.core.safety import SafetyConfig, SafetyFilter, Watchdog
from robot_rl.core.specs import ArraySpec, Frame, TeleopCommand

__all__ = [
    "ActionChunkQueue",
    "ArraySpec",
    "Camera",
    "ControlLoop",
    "EpisodeResult",
    "Frame",
    "Robot",
    "RobotEnv",
    "SafetyConfig",
    "SafetyFilter",
    "Task",
    "Teleop",
    "TeleopCommand",
    "Watchdog",
]
