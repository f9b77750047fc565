"""The arm's conventions shared by the sim arm and real arms: a downward-pointing gripper's tool
frame and its yaw."""

from __future__ import annotations

import numpy as np


def yaw_of(rotation: np.ndarray) -> float:
    """Yaw of a gripper that points down: the angle of its x axis in the table plane."""
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


def down_rotation(yaw: float) -> np.ndarray:
    """Rotation of a downward-pointing gripper turned by `yaw` about the world z axis."""
    c, s = np.cos(yaw), np.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rz @ np.diag([1.0, -1.0, -1.0])
