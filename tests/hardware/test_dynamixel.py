"""The Dynamixel arm through dynamixel-sdk, unmodified, against the Protocol 2.0 servo simulator
on a pty (no arm is attached to this machine: the simulator stands in for the servos)."""

import time

import numpy as np
import pytest
from omegaconf import OmegaConf

from robot_rl.errors import ConfigError, DeviceError
from robot_rl.factory import make_robot
from robot_rl.hardware.fakes import dynamixel_sim as sim
from robot_rl.hardware.fakes.dynamixel_sim import (
    DynamixelSimulator,
    PacketParser,
    crc16,
    packet,
    stuff,
    unstuff,
)

pytest.importorskip("dynamixel_sdk")
CONF = "robot_rl/conf/robot/widowx250.yaml"
IDS = [1, 2, 4, 6, 7, 8]
HOME = [0.0, -0.3, 0.3, 1.57, 0.0]


def arm_on(bus, **overrides):
    return make_robot(OmegaConf.load(CONF), port=bus.port, **overrides)


def test_crc_and_stuffing_as_the_spec_and_the_sdk():
    assert crc16(b"123456789") == 0xFEE8  # CRC-16/UMTS check value (poly 0x8005, init 0)
    from dynamixel_sdk import PacketHandler

    raw = bytes([0xFF, 0xFF, 0xFD, 0x00, 0x01, 0x07, 0x00, 0x55, 0x00, 0x06, 0x04, 0x26])
    assert crc16(raw) == PacketHandler(2.0).updateCRC(0, list(raw), len(raw))
    body = bytes([0x03, 0xFF, 0xFF, 0xFD, 0x10])
    assert stuff(body) == bytes([0x03, 0xFF, 0xFF, 0xFD, 0xFD, 0x10]) and unstuff(stuff(body)) == body
    # A packet whose parameters contain a header survives framing, split anywhere, with noise before it.
    wire = b"\x00\xff\x12" + packet(3, sim.WRITE, bytes([116, 0, 0xFF, 0xFF, 0xFD, 0x00]))
    parser = PacketParser()
    got = [p for i in range(0, len(wire), 3) for p in parser.feed(wire[i : i + 3])]
    assert got == [(3, sim.WRITE, bytes([116, 0, 0xFF, 0xFF, 0xFD, 0x00]))]
    corrupt = bytearray(packet(3, sim.PING))
    corrupt[-1] ^= 1
    assert parser.feed(bytes(corrupt)) == [] and parser.bad_crc == 1


def test_commands_reach_the_servos_with_bulk_read_and_write():
    with DynamixelSimulator(IDS, positions_rad=HOME + [0.6]) as bus, arm_on(bus) as arm:
        obs = arm.observe()
        np.testing.assert_allclose(obs["joint_pos"], HOME, atol=2e-3)
        assert all(bus.torque(i) for i in IDS)
        start = obs["ee_pos"].copy()
        for _ in range(20):
            arm.command(np.array([0.005, 0.0, 0.0, 0.0, 1.0]))  # 5 mm forward per step, close the gripper
            time.sleep(0.02)
        time.sleep(0.3)
        obs = arm.observe()
        moved = obs["ee_pos"] - start
        assert (
            0.07 < moved[0] < 0.13 and abs(moved[1]) < 0.005 and abs(moved[2]) < 0.01
        )  # ~10 cm along x only
        assert obs["gripper"][0] < 0.05  # closed
        assert obs["ee_yaw"][0] > 0.999  # still pointing down, unrotated
        assert bus.count(sim.BULK_READ) >= 3 and bus.count(sim.BULK_WRITE) >= 20
    assert not any(bus.torque(i) for i in IDS)  # torque off on the way out


def test_joint_limits_and_the_per_step_motion_limit():
    with DynamixelSimulator(IDS, positions_rad=HOME + [0.6]) as bus, arm_on(bus, control="joint") as arm:
        low, high = arm.action_spec.bounds()
        before = arm.observe()["joint_pos"].copy()
        target = high.copy()
        arm.command(target)  # far away: only max_joint_step (0.05 rad) of it per command
        goals = np.array([bus.goal_rad(i) for i in IDS[:-1]])
        assert np.all(np.abs(goals - before) <= 0.05 + 2e-3)
        for _ in range(200):
            arm.command(target)
        goals = np.array([bus.goal_rad(i) for i in IDS[:-1]])
        assert np.all(goals <= high[:-1] + 2e-3)  # never past the config's limits
        # ...which are also the servos' own limits in their EEPROM.
        assert bus.servos[2].read(sim.x.MAX_POSITION_LIMIT) == int(np.ceil(sim.x.rad_to_ticks(1.95)))
        with pytest.raises(ValueError):
            arm.command(np.array([np.nan] * 6))


def test_stop_holds_and_dry_run_sends_nothing():
    with DynamixelSimulator(IDS, positions_rad=HOME + [0.6]) as bus:
        with arm_on(bus) as arm:
            for _ in range(5):
                arm.command(np.array([0.01, 0.0, 0.0, 0.0, -1.0]))
            arm.stop()
            measured = arm.observe()["joint_pos"]
            time.sleep(0.1)  # the simulator parses the write in its own thread
            held = [bus.goal_rad(i) for i in IDS[:-1]]
            np.testing.assert_allclose(held, measured, atol=0.02)  # the goals are where the arm is
        writes = bus.count(sim.BULK_WRITE) + bus.count(sim.WRITE)
        with arm_on(bus, dry_run=True) as arm:
            for _ in range(5):
                arm.command(np.array([0.01, 0.0, 0.0, 0.0, 1.0]))
                arm.observe()
            assert not any(bus.torque(i) for i in IDS)
        assert bus.count(sim.BULK_WRITE) + bus.count(sim.WRITE) == writes  # read only


def test_missing_servo_unplugged_bus_and_bad_config_are_clear_errors():
    with DynamixelSimulator([1, 2, 4, 6, 7]) as bus:  # no gripper servo
        with pytest.raises(DeviceError, match="id 8"):
            arm_on(bus).connect()
    with DynamixelSimulator(IDS, positions_rad=HOME + [0.6]) as bus:
        arm = arm_on(bus)
        arm.connect()
        bus.unplug()
        wall, cpu = time.monotonic(), time.process_time()
        with pytest.raises(DeviceError, match="read positions failed"):
            arm.observe()
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        assert cpu < 0.5 * wall  # waiting for a reply leaves the CPU (and the GIL) to other threads
        arm.disconnect()
    with DynamixelSimulator(IDS, positions_rad=HOME + [0.6]) as bus:
        arm = arm_on(bus)
        arm.connect()
        bus.close()  # the USB adapter itself is gone: the port's own calls fail
        with pytest.raises(DeviceError, match="read positions failed"):
            arm.observe()
        arm.disconnect()
    with pytest.raises(DeviceError, match="cannot open"):
        make_robot(OmegaConf.load(CONF), port="/dev/does-not-exist").connect()
    with pytest.raises(ConfigError, match="distinct"):
        make_robot(OmegaConf.merge(OmegaConf.load(CONF), {"gripper": {"id": 1, "open": 0.5, "closed": 0.0}}))
    with DynamixelSimulator(
        IDS, positions_rad=[0.0, 2.5, 0.3, 1.57, 0.0, 0.6]
    ) as bus:  # shoulder past its limit
        with pytest.raises(DeviceError, match="shoulder"):
            arm_on(bus).connect()


def test_leader_arm_drives_the_follower():
    from robot_rl.hardware.leader_arm import LeaderArmTeleop

    with (
        DynamixelSimulator(IDS, positions_rad=HOME + [0.6]) as follower_bus,
        DynamixelSimulator(IDS, positions_rad=HOME + [0.6]) as leader_bus,
    ):
        follower = arm_on(follower_bus, control="joint")
        leader = arm_on(leader_bus, control="joint", dry_run=True)
        teleop = LeaderArmTeleop(leader, follower.action_spec)
        teleop.connect()
        try:
            with follower:
                leader_bus.back_drive(1, 0.3)  # the operator turns the leader's waist
                leader_bus.back_drive(8, -0.3)  # and closes its gripper
                low, high = follower.action_spec.bounds()
                for _ in range(15):
                    cmd = teleop.read()
                    assert cmd.intervening
                    follower.command(low + (cmd.action + 1) / 2 * (high - low))
                    time.sleep(0.02)
                time.sleep(0.3)
                obs = follower.observe()
                assert abs(obs["joint_pos"][0] - 0.3) < 0.01 and obs["gripper"][0] < 0.05
                assert not any(leader_bus.torque(i) for i in IDS)  # the leader stays limp
        finally:
            teleop.disconnect()
