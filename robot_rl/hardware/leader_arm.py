"""Leader-follower teleoperation: a second, identical Dynamixel arm, limp (torque off, read only),
moved by the operator's hand; the follower (`control: joint`) goes where the leader is. Episode
events (success, failure, re-record, stop) come from another teleop device, a keyboard say."""

from __future__ import annotations

import numpy as np

from robot_rl.core.protocols import Teleop
from robot_rl.core.specs import ArraySpec, TeleopCommand
from robot_rl.errors import ConfigError


class LeaderArmTeleop(Teleop):
    def __init__(self, leader, follower_action: ArraySpec, events: Teleop | None = None):
        if not getattr(leader.cfg, "dry_run", False):
            raise ConfigError("the leader arm must be read only (dry_run: true), so its torque stays off")
        if follower_action.names[-1:] != ("gripper",) or follower_action.shape != (len(leader.joints) + 1,):
            raise ConfigError("leader-follower needs a follower with the leader's joints in `control: joint`")
        self.leader, self.events = leader, events
        self._low, self._high = (b[:-1] for b in follower_action.bounds())

    def connect(self) -> None:
        self.leader.connect()
        if self.events is not None:
            self.events.connect()

    def disconnect(self) -> None:
        try:
            if self.events is not None:
                self.events.disconnect()
        finally:
            self.leader.disconnect()

    def reset(self) -> None:
        if self.events is not None:
            self.events.reset()

    def read(self) -> TeleopCommand:
        obs = self.leader.observe()
        joints = 2.0 * (obs["joint_pos"] - self._low) / (self._high - self._low) - 1.0
        gripper = 1.0 - 2.0 * float(obs["gripper"][0])  # leader open (1) -> -1: open
        action = np.clip(np.concatenate([joints, [gripper]]), -1.0, 1.0).astype(np.float32)
        events = self.events.read().events if self.events is not None else frozenset()
        return TeleopCommand(action, True, events)
