"""Teleop devices from recorded input: evdev gamepad events, SpaceMouse HID reports, and key
presses through a real pseudo-terminal."""

import os
import struct
import time

import numpy as np
import pytest

from robot_rl.hardware.gamepad_teleop import (
    ABS_RY,
    ABS_X,
    ABS_Y,
    BTN_EAST,
    BTN_SOUTH,
    BTN_START,
    EV_ABS,
    EV_KEY,
    GamepadTeleop,
)
from robot_rl.hardware.keyboard_teleop import KeyboardTeleop
from robot_rl.hardware.spacemouse_teleop import SpaceMouseTeleop, parse_report
from robot_rl.hardware.teleop_input import TeleopMapper


def event(kind, code, value):
    return struct.pack("llHHi", 1700000000, 0, kind, code, value)


def test_gamepad_events_map_to_arm_deltas_and_events():
    pad = GamepadTeleop(TeleopMapper("arm", deadzone=0.1))
    stream = (
        event(EV_ABS, ABS_Y, -32768)
        + event(EV_ABS, ABS_X, 16384)
        + event(EV_ABS, ABS_RY, 0)
        + event(EV_KEY, BTN_SOUTH, 1)
        + event(EV_KEY, BTN_SOUTH, 0)
        + event(EV_KEY, BTN_EAST, 1)
    )
    pad.feed(stream[:30])  # split mid-record, as reads from a device may be
    pad.feed(stream[30:])
    cmd = pad.read()
    # Stick fully up = forward (+x); right = -y; the gripper toggled closed; intervening on.
    np.testing.assert_allclose(cmd.action, [1.0, -(0.5 - 0.1) / 0.9, 0.0, 0.0, 1.0], atol=1e-3)
    assert cmd.intervening and not cmd.events
    pad.feed(event(EV_KEY, BTN_START, 1))
    assert pad.read().events == {"success"}
    assert pad.read().events == frozenset()  # a press is reported once


def test_gamepad_drives_a_car_from_a_device_stream(tmp_path):
    fifo = tmp_path / "event0"
    os.mkfifo(fifo)
    pad = GamepadTeleop(TeleopMapper("car", deadzone=0.0), device=str(fifo))
    writer = os.open(fifo, os.O_RDWR)  # keep the fifo open so the reader does not see an end
    try:
        pad.connect()
        os.write(writer, event(EV_ABS, ABS_Y, -32768) + event(EV_ABS, ABS_X, -32768))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and pad.read().action[1] < 0.99:
            time.sleep(0.01)
        steer, speed = pad.read().action
        assert speed > 0.99 and steer > 0.99  # full forward, stick left = steer left (+)
    finally:
        pad.disconnect()
        os.close(writer)


def test_spacemouse_reports():
    axes = np.zeros(6)
    # Newer devices: one report with all six axes.
    parse_report(bytes([1]) + struct.pack("<6h", 350, -175, 0, 0, 0, 350), axes)
    np.testing.assert_allclose(axes, [1.0, -0.5, 0.0, 0.0, 0.0, 1.0])
    # Older ones: translation and rotation apart.
    axes[:] = 0
    parse_report(bytes([1]) + struct.pack("<3h", 0, 0, -350), axes)
    parse_report(bytes([2]) + struct.pack("<3h", 0, 0, -700), axes)
    np.testing.assert_allclose(axes, [0, 0, -1.0, 0, 0, -1.0])
    assert parse_report(bytes([3, 0b10, 0]), axes) == [1]
    mouse = SpaceMouseTeleop(TeleopMapper("arm", deadzone=0.0))
    mouse.feed(bytes([1]) + struct.pack("<6h", 0, -350, -350, 0, 0, 175))  # push away, lift, twist
    mouse.feed(bytes([3, 0b01]))  # left button: gripper
    mouse.feed(bytes([3, 0b01]))  # still held: no second toggle
    cmd = mouse.read()
    np.testing.assert_allclose(cmd.action, [1.0, 0.0, 1.0, -0.5, 1.0], atol=1e-6)


def test_keyboard_through_a_terminal():
    leader, follower = os.openpty()  # a real terminal: the teleop puts it in cbreak mode
    keys = KeyboardTeleop(TeleopMapper("arm", deadzone=0.0), fd=follower, hold_s=0.2)
    keys.connect()
    try:
        os.write(leader, b"we ")  # forward, yaw right, (space) gripper
        time.sleep(0.1)
        cmd = keys.read()
        np.testing.assert_allclose(cmd.action, [1.0, 0, 0, -1.0, 1.0])
        time.sleep(0.3)
        assert np.all(keys.read().action[:4] == 0)  # a press moves for hold_s, then stops
        os.write(leader, b"\r")
        time.sleep(0.1)
        assert keys.read().events == {"success"}
        os.write(leader, b"\x1b")
        time.sleep(0.1)
        assert keys.read().events == {"stop"}
    finally:
        keys.disconnect()
        os.close(leader)
        os.close(follower)


def test_mapper_rejects_bad_settings():
    from robot_rl.errors import ConfigError

    with pytest.raises(ConfigError):
        TeleopMapper("boat")
    with pytest.raises(ConfigError):
        TeleopMapper("arm", deadzone=1.5)


def test_a_lost_gamepad_stops_motion_and_raises(tmp_path):
    from robot_rl.errors import DeviceError

    fifo = tmp_path / "event0"
    os.mkfifo(fifo)
    pad = GamepadTeleop(TeleopMapper("arm", deadzone=0.0), device=str(fifo))
    writer = os.open(fifo, os.O_RDWR)
    pad.connect()
    try:
        os.write(writer, event(EV_ABS, ABS_Y, -32768) + event(EV_KEY, BTN_START, 1))
        time.sleep(0.1)
        pad.reset()  # a press during the reset period does not end the next episode
        assert pad.read().action[0] == 1.0 and pad.read().events == frozenset()
        os.close(writer)  # unplugged
        writer = None
        time.sleep(0.1)
        with pytest.raises(DeviceError, match="gamepad"):
            pad.read()
        assert np.all(pad._state.axes == 0)  # no motion left behind
    finally:
        pad.disconnect()
        if writer is not None:
            os.close(writer)
