"""The VESC car driver against a VESC simulator on a pty: real pyserial, real packets and CRCs.
(No motor controller is attached to this machine; the simulator plays the firmware's side.)"""

import os
import time

import numpy as np
import pytest

pytest.importorskip("serial", reason="pyserial (robot_rl[hardware]) is not installed")

from robot_rl.errors import DeviceError  # noqa: E402
from robot_rl.hardware import vesc_protocol as vp  # noqa: E402
from robot_rl.hardware.fakes.vesc_sim import VescSimulator  # noqa: E402
from robot_rl.hardware.vesc_car import VescCar, VescCarConfig  # noqa: E402


def wait_for(condition, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def sim():
    with VescSimulator(timeout_s=0.5) as vesc:
        yield vesc


@pytest.fixture
def car(sim):
    car = VescCar(VescCarConfig(port=sim.port, watchdog_s=0.2))
    car.connect()
    yield car
    car.disconnect()


def test_crc_is_xmodem():
    assert vp.crc16(b"123456789") == 0x31C3  # the CRC-16/XMODEM check value
    assert vp.crc16(b"") == 0


def test_packets_decode_from_a_noisy_split_stream():
    short, long = (
        vp.set_rpm(4614),
        bytes([vp.COMM_GET_VALUES]) + bytes(range(256)) + bytes(44),
    )  # 301 bytes: long framing
    stream = b"\x00\xff" + vp.encode(short) + vp.encode(long) + vp.encode(vp.set_servo_pos(0.4))
    assert vp.encode(long)[0] == 0x03 and vp.encode(short)[0] == 0x02  # long and short framing
    reader = vp.PacketReader()
    got = reader.feed(stream[:7]) + reader.feed(stream[7:300]) + reader.feed(stream[300:])
    assert got == [short, long, vp.set_servo_pos(0.4)] and reader.framing_errors == 2
    bad = bytearray(vp.encode(vp.set_rpm(100)))
    bad[3] ^= 0x01  # one flipped payload bit
    assert reader.feed(bytes(bad) + vp.encode(vp.set_rpm(200))) == [vp.set_rpm(200)]
    assert reader.crc_errors == 1


def test_telemetry_round_trips():
    values = vp.Values(
        temp_fet=31.5,
        temp_motor=40.2,
        current_motor=-3.21,
        current_in=1.5,
        duty=0.125,
        erpm=-12345,
        v_in=11.9,
        tachometer=-777,
        tachometer_abs=999,
        fault=0,
    )
    assert vp.decode_values(vp.encode_values(values)) == values
    imu = {name: float(i) - 3.5 for i, name in enumerate(vp.IMU_FIELDS)}
    assert vp.decode_imu(vp.encode_imu(imu)) == imu


def test_commands_reach_the_vesc_and_odometry_follows(car, sim):
    for _ in range(40):
        car.command(np.array([0.1, 1.0]))
        obs = car.observe()
        time.sleep(0.01)
    assert sim.commands(vp.COMM_SET_RPM)[-1] == pytest.approx(4614, abs=1)
    assert sim.commands(vp.COMM_SET_SERVO_POS)[-1] == pytest.approx(0.5304 - 1.2135 * 0.1, abs=1e-3)
    assert obs["velocity"][0] == pytest.approx(1.0, abs=0.05)  # the motor model has spun up
    assert (
        obs["pose"][0] > 0.2 and abs(obs["pose"][1]) < 1e-6
    )  # straight ahead (the simulated IMU reads no yaw)
    assert obs["accel"][2] == pytest.approx(9.81, abs=1e-3) and set(obs) == set(car.observation_spec)
    assert sim.reader.crc_errors == 0


def test_out_of_range_commands_are_clipped_and_nan_is_refused(car, sim):
    car.command(np.array([1.0, 10.0]))
    assert wait_for(lambda: sim.commands(vp.COMM_SET_RPM))
    assert sim.commands(vp.COMM_SET_RPM)[-1] == pytest.approx(3.0 * 4614, abs=1)  # max_speed
    assert sim.commands(vp.COMM_SET_SERVO_POS)[-1] == pytest.approx(0.15)  # servo_min
    sent = len(sim.log)
    with pytest.raises(ValueError, match="refusing"):
        car.command(np.array([np.nan, 1.0]))
    time.sleep(0.05)
    assert len(sim.log) == sent  # nothing went out


def test_watchdog_brakes_when_commands_stop(car, sim):
    car.command(np.array([0.0, 2.0]))
    assert wait_for(lambda: sim.mode == "rpm")
    start = time.monotonic()
    assert wait_for(lambda: sim.braking, timeout=1.0)  # no further command: the driver's watchdog brakes
    assert time.monotonic() - start < 0.45 and car.watchdog_trips == 1
    assert sim.commands(vp.COMM_SET_CURRENT_BRAKE)[-1] == pytest.approx(20.0)
    assert sim.timeouts == 0  # the host braked before the firmware's own timeout had to


def test_a_dropped_link_brakes_the_car_and_raises(car, sim):
    car.command(np.array([0.0, 2.0]))
    assert wait_for(lambda: sim.mode == "rpm")
    sim.unplug()  # the cable is pulled: nothing the host sends arrives
    with pytest.raises(DeviceError, match="did not answer"):
        car.observe()
    assert wait_for(lambda: sim.timeouts == 1, timeout=2.0)  # the firmware's timeout brakes on its own
    assert sim.braking and sim.target == pytest.approx(sim.timeout_brake_current)


def test_missing_or_silent_device_is_a_clear_error(tmp_path):
    with pytest.raises(DeviceError, match="cannot open"):
        VescCar(VescCarConfig(port=str(tmp_path / "ttyACM9"))).connect()
    master, slave = os.openpty()  # a serial port with nothing behind it
    try:
        with pytest.raises(DeviceError, match="nothing answers"):
            VescCar(VescCarConfig(port=os.ttyname(slave))).connect()
    finally:
        os.close(master)
        os.close(slave)


def test_practice_drives_the_vesc_car_through_the_control_loop(sim):
    """FastRLAP's practice task is the same on the real car: odometry in, progress reward out."""
    from robot_rl.core import ControlLoop, RobotEnv
    from robot_rl.tasks.practice import PracticeTask, RecoveryTeleop

    car = VescCar(VescCarConfig(port=sim.port))
    square = np.array([[2.0, 0.0], [2.0, 2.0], [0.0, 2.0], [0.0, 0.0]])
    task = PracticeTask(car, square, radius=0.5, max_steps=25)
    env = RobotEnv(car, task)
    rewards = []
    loop = ControlLoop(
        env,
        lambda obs: np.array([0.0, 0.3], np.float32),
        RecoveryTeleop(task),
        rate_hz=50,
        execute_k=1,
        on_step=lambda loop, result: rewards.append(result.reward),
    )
    with env:
        result = loop.run_episode(seed=0)
    loop.close()
    assert result.steps == 25 and not result.intervened_steps
    assert sim.commands(vp.COMM_SET_RPM)[-1] == pytest.approx(0.3 * 3.0 * 4614, abs=1)  # 0.9 m/s
    assert rewards[-1] > rewards[5] > 0  # driving toward the first checkpoint: positive, growing
    assert 0 < car.pose()[0] < 2.0
    # the loop braked the car at the episode's end (the simulator reads the command in its own thread)
    assert wait_for(lambda: sim.braking)
