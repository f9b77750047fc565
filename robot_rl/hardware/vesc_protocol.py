"""The VESC motor controller's UART packet protocol (vedderb/bldc: packet.c, commands.c).

A packet is  0x02 <len:u8> <payload> <crc:u16> 0x03  (payloads up to 255 bytes), or
             0x03 <len:u16> <payload> <crc:u16> 0x03 (longer ones); integers big-endian, the CRC
CRC-16/XMODEM (polynomial 0x1021, initial 0) over the payload. A payload's first byte is the
command id. Fixed-point fields are scaled integers (rpm x1, current x1000 in commands, x100 in
telemetry, servo position x1000, duty x1000 telemetry / x100000 command).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# COMM_PACKET_ID (bldc datatypes.h), the ones a car needs.
COMM_FW_VERSION = 0
COMM_GET_VALUES = 4
COMM_SET_DUTY = 5
COMM_SET_CURRENT = 6
COMM_SET_CURRENT_BRAKE = 7
COMM_SET_RPM = 8
COMM_SET_SERVO_POS = 12
COMM_ALIVE = 30
COMM_GET_IMU_DATA = 65

IMU_FIELDS = ("roll", "pitch", "yaw", "acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
IMU_MASK = (1 << len(IMU_FIELDS)) - 1  # the first nine fields of COMM_GET_IMU_DATA


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, as packet.c computes it (its check value: crc16(b"123456789") == 0x31C3)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode(payload: bytes) -> bytes:
    """One framed packet for `payload`."""
    if not 0 < len(payload) <= 0xFFFF:
        raise ValueError(f"a VESC payload is 1 to 65535 bytes, got {len(payload)}")
    head = bytes([0x02, len(payload)]) if len(payload) <= 0xFF else b"\x03" + struct.pack(">H", len(payload))
    return head + payload + struct.pack(">H", crc16(payload)) + b"\x03"


class PacketReader:
    """Turns a byte stream into payloads. Bytes that do not start a packet, packets with a wrong
    CRC or end byte are dropped (and counted) and the search goes on from the next byte, as the
    firmware's decoder does: a corrupted packet costs that packet, not the link. A start byte
    inside a corrupted packet can look like a packet still arriving; when a whole valid packet
    follows it, the false start is dropped instead of waited on."""

    MAX_PAYLOAD = 512  # the firmware's PACKET_MAX_PL_LEN

    def __init__(self):
        self.buffer = bytearray()
        self.crc_errors = 0
        self.framing_errors = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out = []
        while self.buffer:
            status, size = self._packet_at(0)
            if status == "ok":
                out.append(self._payload(0, size))
                del self.buffer[:size]
                continue
            if status == "incomplete":
                later = next((i for i in range(1, len(self.buffer)) if self._packet_at(i)[0] == "ok"), None)
                if later is None:
                    break
                del self.buffer[:later]
                self.framing_errors += 1
                continue
            if status == "crc":
                self.crc_errors += 1
            else:
                self.framing_errors += 1
            del self.buffer[0]
        return out

    def _packet_at(self, i: int) -> tuple[str, int]:
        """("ok" | "incomplete" | "crc" | "framing", packet size) for a packet starting at i."""
        buf = self.buffer
        start = buf[i]
        if start not in (0x02, 0x03):
            return "framing", 0
        head = 2 if start == 0x02 else 3
        if len(buf) - i < head:
            return "incomplete", 0
        length = buf[i + 1] if start == 0x02 else struct.unpack_from(">H", buf, i + 1)[0]
        if length == 0 or length > self.MAX_PAYLOAD:
            return "framing", 0
        total = head + length + 3
        if len(buf) - i < total:
            return "incomplete", 0
        if buf[i + total - 1] != 0x03:
            return "framing", 0
        crc = struct.unpack_from(">H", buf, i + head + length)[0]
        if crc != crc16(bytes(buf[i + head : i + head + length])):
            return "crc", 0
        return "ok", total

    def _payload(self, i: int, total: int) -> bytes:
        head = 2 if self.buffer[i] == 0x02 else 3
        return bytes(self.buffer[i + head : i + total - 3])


# --- commands ----------------------------------------------------------------------------------
def set_rpm(erpm: float) -> bytes:
    return bytes([COMM_SET_RPM]) + struct.pack(">i", int(round(erpm)))


def set_current_brake(amps: float) -> bytes:
    return bytes([COMM_SET_CURRENT_BRAKE]) + struct.pack(">i", int(round(amps * 1000)))


def set_current(amps: float) -> bytes:
    return bytes([COMM_SET_CURRENT]) + struct.pack(">i", int(round(amps * 1000)))


def set_duty(duty: float) -> bytes:
    return bytes([COMM_SET_DUTY]) + struct.pack(">i", int(round(duty * 100_000)))


def set_servo_pos(position: float) -> bytes:
    """Servo position in [0, 1] (0.5 centred)."""
    return bytes([COMM_SET_SERVO_POS]) + struct.pack(">h", int(round(position * 1000)))


def get_values() -> bytes:
    return bytes([COMM_GET_VALUES])


def get_imu_data(mask: int = IMU_MASK) -> bytes:
    return bytes([COMM_GET_IMU_DATA]) + struct.pack(">H", mask)


# --- telemetry ---------------------------------------------------------------------------------
_VALUES = struct.Struct(">hhiiiihihiiiiiiB")  # up to the fault code; later firmware appends more


@dataclass
class Values:
    """COMM_GET_VALUES telemetry (the fields every firmware since 3.x sends first)."""

    temp_fet: float
    temp_motor: float
    current_motor: float
    current_in: float
    duty: float
    erpm: float
    v_in: float
    tachometer: int
    tachometer_abs: int
    fault: int


def encode_values(v: Values) -> bytes:
    """The reply payload for `v` (the simulator's side)."""
    return bytes([COMM_GET_VALUES]) + _VALUES.pack(
        round(v.temp_fet * 10),
        round(v.temp_motor * 10),
        round(v.current_motor * 100),
        round(v.current_in * 100),
        0,
        0,
        round(v.duty * 1000),
        round(v.erpm),
        round(v.v_in * 10),
        0,
        0,
        0,
        0,
        v.tachometer,
        v.tachometer_abs,
        v.fault,
    )


def decode_values(payload: bytes) -> Values:
    if payload[:1] != bytes([COMM_GET_VALUES]) or len(payload) < 1 + _VALUES.size:
        raise ValueError(f"not a COMM_GET_VALUES reply ({len(payload)} bytes, id {payload[:1].hex()})")
    f = _VALUES.unpack_from(payload, 1)
    return Values(
        temp_fet=f[0] / 10,
        temp_motor=f[1] / 10,
        current_motor=f[2] / 100,
        current_in=f[3] / 100,
        duty=f[6] / 1000,
        erpm=float(f[7]),
        v_in=f[8] / 10,
        tachometer=f[13],
        tachometer_abs=f[14],
        fault=f[15],
    )


def encode_imu(values: dict[str, float], mask: int = IMU_MASK) -> bytes:
    """COMM_GET_IMU_DATA reply: the mask, then each selected field as a float32 (the firmware's
    float32_auto is IEEE-754 single precision for every normal number)."""
    fields = [values[name] for i, name in enumerate(IMU_FIELDS) if mask & (1 << i)]
    return bytes([COMM_GET_IMU_DATA]) + struct.pack(">H", mask) + struct.pack(f">{len(fields)}f", *fields)


def decode_imu(payload: bytes) -> dict[str, float]:
    """Roll, pitch, yaw [rad], acceleration [g] and angular rate [deg/s], as the firmware reports."""
    if payload[:1] != bytes([COMM_GET_IMU_DATA]) or len(payload) < 3:
        raise ValueError("not a COMM_GET_IMU_DATA reply")
    (mask,) = struct.unpack_from(">H", payload, 1)
    names = [name for i, name in enumerate(IMU_FIELDS) if mask & (1 << i)]
    if len(payload) < 3 + 4 * len(names):
        raise ValueError("truncated COMM_GET_IMU_DATA reply")
    return dict(zip(names, struct.unpack_from(f">{len(names)}f", payload, 3)))
