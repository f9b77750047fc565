"""The Dynamixel X-series control table (XM430, XL430, XM540, ... : the servos of WidowX-class
arms) as far as robot_rl uses it, and its units. From the ROBOTIS e-Manual's control tables."""

from __future__ import annotations

import math

# address, size in bytes
MODEL_NUMBER = (0, 2)
FIRMWARE_VERSION = (6, 1)
ID = (7, 1)
OPERATING_MODE = (11, 1)
MAX_POSITION_LIMIT = (48, 4)
MIN_POSITION_LIMIT = (52, 4)
TORQUE_ENABLE = (64, 1)
HARDWARE_ERROR_STATUS = (70, 1)
PROFILE_ACCELERATION = (108, 4)
PROFILE_VELOCITY = (112, 4)
GOAL_POSITION = (116, 4)
MOVING = (122, 1)
PRESENT_CURRENT = (126, 2)
PRESENT_VELOCITY = (128, 4)
PRESENT_POSITION = (132, 4)
PRESENT_TEMPERATURE = (146, 1)
TABLE_SIZE = 227

POSITION_MODE = 3  # operating mode: position control (one turn)
TICKS_PER_REV = 4096
CENTER_TICK = 2048  # 0 rad at the horn's centre
VELOCITY_UNIT_RPM = 0.229  # one PRESENT_VELOCITY / PROFILE_VELOCITY unit
MODEL_XM430_W350 = 1020


def ticks_to_rad(ticks):
    return (ticks - CENTER_TICK) * (2 * math.pi / TICKS_PER_REV)


def rad_to_ticks(rad):
    return rad * (TICKS_PER_REV / (2 * math.pi)) + CENTER_TICK


def velocity_to_rad_s(units):
    return units * VELOCITY_UNIT_RPM * 2 * math.pi / 60


def signed32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value
