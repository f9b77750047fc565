"""VESC packets against the firmware's byte layout, written out by hand.

The VESC simulator decodes with the same `vesc_protocol` module the driver encodes with, so a bug
made the same way on both sides (little-endian integers, a wrong scale, another CRC) would pass
every simulator test. These frames are the outside anchor: each one written byte by byte from the
VESC firmware (vedderb/bldc): comm/packet.c frames a payload as 0x02 <len> <payload> <crc hi> <crc lo>
0x03 (0x03 <len:u16> ... for payloads over 255 bytes); util/crc.c's CRC-16 is XMODEM (0x1021, init
0); datatypes.h numbers the commands; comm/commands.c gives the scalings (duty x100000, current
x1000, rpm x1 as int32; servo x1000 as int16) and the COMM_GET_VALUES / COMM_GET_IMU_DATA reply
layouts; util/buffer.c writes integers big-endian and float32_auto as IEEE-754 single precision.
Every literal's CRC is also checked with binascii.crc_hqx, a CRC implementation independent of ours.

(pyvesc 1.0.5 from PyPI cannot serve as the reference: it imports PyCRC, a name PyPI now gives to
an unrelated package, and its GetValues has the pre-3.x firmware layout.)
"""

import binascii
import time

import pytest

from robot_rl.hardware import vesc_protocol as vp


def hexframe(text: str) -> bytes:
    return bytes.fromhex(text)


# What robot_rl sends: each builder's payload framed, as the firmware expects it on the wire.
COMMANDS = {
    # COMM_FW_VERSION (0): the driver's hello. This frame and GET_VALUES' are the ones VESC
    # tutorials print verbatim.
    "fw_version": (lambda: bytes([vp.COMM_FW_VERSION]), "02 01 00 0000 03"),
    "get_values": (vp.get_values, "02 01 04 4084 03"),  # COMM_GET_VALUES (4)
    # COMM_GET_IMU_DATA (65 = 0x41) with the uint16 mask of the first nine fields (roll..gyro_z).
    "get_imu_data": (vp.get_imu_data, "02 03 41 01ff 075c 03"),
    # COMM_SET_RPM (8), 4614 erpm (1 m/s on F1TENTH's gearing) = 0x1206, int32 big-endian.
    "set_rpm": (lambda: vp.set_rpm(4614), "02 05 08 00001206 07fa 03"),
    # Reverse: -13842 erpm, two's complement 0xffffc9ee.
    "set_rpm_reverse": (lambda: vp.set_rpm(-13842), "02 05 08 ffffc9ee 36c1 03"),
    # COMM_SET_CURRENT_BRAKE (7), 20 A x 1000 = 20000 = 0x4e20.
    "set_current_brake": (lambda: vp.set_current_brake(20.0), "02 05 07 00004e20 6d75 03"),
    # COMM_SET_CURRENT (6), -3.5 A x 1000 = -3500 = 0xfffff254.
    "set_current": (lambda: vp.set_current(-3.5), "02 05 06 fffff254 2697 03"),
    # COMM_SET_DUTY (5), 0.25 x 100000 = 25000 = 0x61a8.
    "set_duty": (lambda: vp.set_duty(0.25), "02 05 05 000061a8 2fae 03"),
    # COMM_SET_SERVO_POS (12), 0.5304 (the centred steering) x 1000 = 530 = 0x0212, int16.
    "set_servo_pos": (lambda: vp.set_servo_pos(0.5304), "02 03 0c 0212 2170 03"),
    # Steered: 0.5304 - 1.2135 * 0.1 rad = 0.40905 -> 409 = 0x0199 (what VescCar sends for 0.1 rad).
    "set_servo_pos_steered": (lambda: vp.set_servo_pos(0.40905), "02 03 0c 0199 54c0 03"),
}

# COMM_GET_VALUES as firmware 6.x answers it: the fields robot_rl reads, then the ones later
# firmware appends (which the decoder must skip). 74 = 0x4a bytes of payload.
VALUES_REPLY = hexframe(
    "02 4a"
    " 04"  # COMM_GET_VALUES
    " 013b"  # temp_fet        31.5 C   x10, int16
    " 0192"  # temp_motor      40.2 C   x10, int16
    " fffffebf"  # current_motor  -3.21 A   x100, int32
    " 00000096"  # current_in      1.50 A   x100
    " ffffff9c"  # avg_id         -1.00 A   x100 (not read)
    " 000000c8"  # avg_iq          2.00 A   x100 (not read)
    " 007d"  # duty            0.125    x1000, int16
    " ffffcfc7"  # erpm          -12345     x1, int32
    " 0077"  # v_in            11.9 V   x10, int16
    " 000004d2"  # amp_hours       0.1234   x10000 (not read)
    " 00000001"  # amp_hours_charged 0.0001 (not read)
    " 00003a98"  # watt_hours      1.5      x10000 (not read)
    " 00000000"  # watt_hours_charged       (not read)
    " fffffcf7"  # tachometer     -777      int32
    " 000003e7"  # tachometer_abs  999      int32
    " 02"  # fault           FAULT_CODE_UNDER_VOLTAGE, uint8
    " 0aba9500"  # pid_pos         180 deg  x1e6 (appended by later firmware, not read)
    " 00"  # controller_id
    " 012c 0131 0136"  # temp_mos1..3  30.0, 30.5, 31.0 C
    " 000004b0"  # avg_vd          1.2 V    x1000
    " fffffb50"  # avg_vq         -1.2 V    x1000
    " 00"  # status (timeout, kill switch)
    " 85c5 03"
)
VALUES = vp.Values(
    temp_fet=31.5,
    temp_motor=40.2,
    current_motor=-3.21,
    current_in=1.5,
    duty=0.125,
    erpm=-12345.0,
    v_in=11.9,
    tachometer=-777,
    tachometer_abs=999,
    fault=2,
)

# COMM_GET_IMU_DATA (0x41): the echoed mask, nine float32_auto fields, then the controller id. 40 bytes.
IMU_REPLY = hexframe(
    "02 28 41 01ff"
    " 00000000 3f000000 bf800000"  # roll 0.0, pitch 0.5, yaw -1.0 rad
    " 3e800000 c0000000 3f800000"  # acc_x 0.25, acc_y -2.0, acc_z 1.0 g
    " 00000000 00000000 42b40000"  # gyro_x 0, gyro_y 0, gyro_z 90.0 deg/s
    " 00"  # controller_id
    " fe86 03"
)
IMU = {
    "roll": 0.0,
    "pitch": 0.5,
    "yaw": -1.0,
    "acc_x": 0.25,
    "acc_y": -2.0,
    "acc_z": 1.0,
    "gyro_x": 0.0,
    "gyro_y": 0.0,
    "gyro_z": 90.0,
}

LITERALS = [hexframe(text) for _, text in COMMANDS.values()] + [VALUES_REPLY, IMU_REPLY]


@pytest.mark.parametrize("frame", LITERALS, ids=[*COMMANDS, "values_reply", "imu_reply"])
def test_each_literal_is_a_well_formed_frame_by_an_independent_crc(frame):
    """Guards the hand-written literals themselves: a typo in one would make the tests below
    compare against nonsense."""
    assert binascii.crc_hqx(b"123456789", 0) == 0x31C3  # crc_hqx with init 0 is CRC-16/XMODEM
    payload = frame[2:-3]
    assert frame[0] == 0x02 and frame[1] == len(payload) and frame[-1] == 0x03
    assert int.from_bytes(frame[-3:-1], "big") == binascii.crc_hqx(payload, 0)


@pytest.mark.parametrize("name", COMMANDS)
def test_commands_encode_to_the_firmware_frames(name):
    build, text = COMMANDS[name]
    assert vp.encode(build()) == hexframe(text)


def test_a_long_payload_takes_the_three_byte_header():
    payload = bytes([vp.COMM_GET_VALUES]) + bytes(range(256)) + bytes(43)  # 300 = 0x012c bytes
    frame = vp.encode(payload)
    assert frame[:3] == hexframe("03 01 2c") and frame[3:-3] == payload and frame[-1] == 0x03
    assert int.from_bytes(frame[-3:-1], "big") == binascii.crc_hqx(payload, 0)


def test_firmware_replies_decode_field_by_field():
    reader = vp.PacketReader()
    values, imu = reader.feed(VALUES_REPLY + IMU_REPLY)
    assert reader.crc_errors == 0 and reader.framing_errors == 0
    assert vp.decode_values(values) == VALUES
    assert vp.decode_imu(imu) == IMU


def test_the_car_writes_exactly_these_frames():
    """The driver end to end: every byte VescCar writes for connect, one command, one observation
    and the brake on disconnect is one of the frames above, in order."""
    pytest.importorskip("serial", reason="pyserial (robot_rl[hardware]) is not installed")
    from robot_rl.hardware.fakes.vesc_sim import VescSimulator
    from robot_rl.hardware.vesc_car import VescCar, VescCarConfig

    class Tapped(VescSimulator):  # the simulator, keeping the raw bytes it was sent
        wire = b""

        def on_bytes(self, data, now):
            self.wire += data
            return super().on_bytes(data, now)

    expected = b"".join(
        hexframe(COMMANDS[name][1])
        for name in (
            "fw_version",
            "set_servo_pos_steered",
            "set_rpm",
            "get_values",
            "get_imu_data",
            "set_current_brake",
        )
    )
    with Tapped() as sim:
        car = VescCar(VescCarConfig(port=sim.port, watchdog_s=60.0))  # no watchdog brake mid-transcript
        car.connect()
        car.command([0.1, 1.0])  # 0.1 rad, 1 m/s
        car.observe()
        car.disconnect()  # brakes
        end = time.monotonic() + 2.0
        while sim.wire != expected and time.monotonic() < end:  # the pty thread reads asynchronously
            time.sleep(0.005)
        assert sim.wire == expected
