"""A Dynamixel bus on a pseudo-terminal: X-series servos speaking Protocol 2.0, for tests and
dry runs without an arm.

`with DynamixelSimulator(ids=[1, 2, 3]) as bus:` opens a pty; `bus.port` is its device path, which
`dynamixel_sdk`'s PortHandler opens unmodified (it is pyserial underneath). The servos answer
PING, READ, WRITE, SYNC READ/WRITE, BULK READ/WRITE and REBOOT with status packets — header,
byte stuffing and CRC-16 as the Protocol 2.0 spec (and the SDK) have them — each over its own
control table (`dynamixel_xseries`). With torque enabled a servo's present position tracks its
goal at the profile velocity (or `max_speed_rad_s`), clamped to its position limits; with torque
off it stays where it is unless `back_drive(id, rad)` moves it by hand, as a person moves a
limp arm (a leader arm). `unplug()` makes the whole bus vanish as a pulled USB cable does.
"""

from __future__ import annotations

import math
import struct
import threading

from robot_rl.hardware import dynamixel_xseries as x
from robot_rl.hardware.fakes.pty_device import PtyDevice

HEADER = b"\xff\xff\xfd\x00"
BROADCAST = 0xFE
PING, READ, WRITE, REBOOT, STATUS = 0x01, 0x02, 0x03, 0x08, 0x55
SYNC_READ, SYNC_WRITE, BULK_READ, BULK_WRITE = 0x82, 0x83, 0x92, 0x93
ERR_INSTRUCTION, ERR_CRC, ERR_DATA_RANGE, ERR_DATA_LENGTH, ERR_ACCESS = 0x02, 0x03, 0x04, 0x05, 0x07


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16 of Protocol 2.0 (polynomial 0x8005, initial 0, not reflected)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Insert 0xFD after every FF FF FD inside a packet body, so it never reads as a header."""
    out = bytearray()
    for byte in body:
        out.append(byte)
        if byte == 0xFD and out[-3:-1] == b"\xff\xff" and len(out) >= 3:
            out.append(0xFD)
    return bytes(out)


def unstuff(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        out.append(body[i])
        if (
            body[i] == 0xFD
            and out[-3:-1] == b"\xff\xff"
            and len(out) >= 3
            and i + 1 < len(body)
            and body[i + 1] == 0xFD
        ):
            i += 1  # drop the stuffed byte
        i += 1
    return bytes(out)


def packet(dxl_id: int, instruction: int, params: bytes = b"") -> bytes:
    """A whole packet (instruction or status): header, id, length, stuffed body, CRC."""
    body = stuff(bytes([instruction]) + params)
    head = HEADER + bytes([dxl_id]) + struct.pack("<H", len(body) + 2)
    return head + body + struct.pack("<H", crc16(head + body))


class PacketParser:
    """Bytes in, (id, instruction, params) out: resynchronizes on the header, drops bad CRCs."""

    def __init__(self):
        self.buffer = bytearray()
        self.bad_crc = 0

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self.buffer += data
        packets = []
        while True:
            start = self.buffer.find(HEADER)
            if start < 0:
                del self.buffer[: max(0, len(self.buffer) - 3)]
                return packets
            del self.buffer[:start]
            if len(self.buffer) < 7:
                return packets
            length = struct.unpack_from("<H", self.buffer, 5)[0]
            end = 7 + length
            if len(self.buffer) < end:
                return packets
            raw = bytes(self.buffer[:end])
            if struct.unpack_from("<H", raw, end - 2)[0] != crc16(raw[:-2]):
                self.bad_crc += 1
                del self.buffer[:4]  # skip this header; a real one may follow inside it
                continue
            del self.buffer[:end]
            body = unstuff(raw[7:-2])
            packets.append((raw[4], body[0], body[1:]))


class Servo:
    """One X-series servo's control table and motor."""

    def __init__(self, dxl_id: int, position_rad: float = 0.0, max_speed_rad_s: float = 4.0):
        self.table = bytearray(x.TABLE_SIZE)
        self.write(x.MODEL_NUMBER, x.MODEL_XM430_W350)
        self.write(x.FIRMWARE_VERSION, 48)
        self.write(x.ID, dxl_id)
        self.write(x.OPERATING_MODE, x.POSITION_MODE)
        self.write(x.MAX_POSITION_LIMIT, x.TICKS_PER_REV - 1)
        self.write(x.MIN_POSITION_LIMIT, 0)
        self.position = float(x.rad_to_ticks(position_rad))  # ticks, continuous
        self.velocity = 0.0  # ticks/s
        self.max_speed = max_speed_rad_s * x.TICKS_PER_REV / (2 * math.pi)
        self.write(x.GOAL_POSITION, int(round(self.position)))
        self._sync_present()

    def read(self, field: tuple[int, int]) -> int:
        address, size = field
        return int.from_bytes(self.table[address : address + size], "little")

    def write(self, field: tuple[int, int], value: int) -> None:
        address, size = field
        self.table[address : address + size] = (int(value) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def read_bytes(self, address: int, length: int) -> bytes | None:
        if address + length > x.TABLE_SIZE:
            return None
        self._sync_present()
        return bytes(self.table[address : address + length])

    def write_bytes(self, address: int, data: bytes) -> int:
        """Returns a status error (0: accepted). As the firmware does, the EEPROM area (below
        TORQUE_ENABLE) cannot be written while torque is on."""
        if address + len(data) > x.TABLE_SIZE:
            return ERR_DATA_RANGE
        if address < x.TORQUE_ENABLE[0] and self.read(x.TORQUE_ENABLE):
            return ERR_ACCESS
        self.table[address : address + len(data)] = data
        return 0

    def step(self, dt: float) -> None:
        if not self.read(x.TORQUE_ENABLE):
            self.velocity = 0.0
            return
        low, high = self.read(x.MIN_POSITION_LIMIT), self.read(x.MAX_POSITION_LIMIT)
        goal = min(max(x.signed32(self.read(x.GOAL_POSITION)), low), high)
        profile = self.read(x.PROFILE_VELOCITY)
        speed = (
            self.max_speed
            if profile == 0
            else min(self.max_speed, profile * x.VELOCITY_UNIT_RPM / 60 * x.TICKS_PER_REV)
        )
        move = max(-speed * dt, min(speed * dt, goal - self.position))
        self.position += move
        self.velocity = move / dt if dt > 0 else 0.0

    def _sync_present(self) -> None:
        self.write(x.PRESENT_POSITION, int(round(self.position)))
        self.write(x.PRESENT_VELOCITY, int(round(self.velocity / x.TICKS_PER_REV * 60 / x.VELOCITY_UNIT_RPM)))
        goal = x.signed32(self.read(x.GOAL_POSITION))
        self.write(x.MOVING, int(abs(goal - self.position) > 2 and bool(self.read(x.TORQUE_ENABLE))))
        self.write(x.PRESENT_TEMPERATURE, 35)


class DynamixelSimulator(PtyDevice):
    name = "dynamixel-sim"

    def __init__(self, ids, positions_rad=None, max_speed_rad_s: float = 4.0):
        positions = list(positions_rad) if positions_rad is not None else [0.0] * len(ids)
        self.servos = {int(i): Servo(int(i), p, max_speed_rad_s) for i, p in zip(ids, positions)}
        self.parser = PacketParser()
        self.instructions: list[tuple[int, int]] = []  # (id, instruction) of every packet received
        self._lock = threading.Lock()
        super().__init__()

    # --- what tests look at ------------------------------------------------------------------
    def position_rad(self, dxl_id: int) -> float:
        with self._lock:
            return float(x.ticks_to_rad(self.servos[dxl_id].position))

    def torque(self, dxl_id: int) -> bool:
        with self._lock:
            return bool(self.servos[dxl_id].read(x.TORQUE_ENABLE))

    def goal_rad(self, dxl_id: int) -> float:
        with self._lock:
            return float(x.ticks_to_rad(x.signed32(self.servos[dxl_id].read(x.GOAL_POSITION))))

    def back_drive(self, dxl_id: int, rad: float) -> None:
        """Move a limp servo by hand (torque off): a leader arm being guided."""
        with self._lock:
            servo = self.servos[dxl_id]
            if not servo.read(x.TORQUE_ENABLE):
                servo.position = float(x.rad_to_ticks(rad))

    def count(self, instruction: int) -> int:
        with self._lock:
            return sum(1 for _, i in self.instructions if i == instruction)

    # --- the bus -----------------------------------------------------------------------------
    def tick(self, dt: float, now: float) -> None:
        with self._lock:
            for servo in self.servos.values():
                servo.step(dt)

    def on_bytes(self, data: bytes, now: float) -> bytes:
        with self._lock:
            return b"".join(self._handle(*p) for p in self.parser.feed(data))

    def _status(self, dxl_id: int, error: int = 0, params: bytes = b"") -> bytes:
        return packet(dxl_id, STATUS, bytes([error]) + params)

    def _handle(self, dxl_id: int, instruction: int, params: bytes) -> bytes:
        self.instructions.append((dxl_id, instruction))
        servo = self.servos.get(dxl_id)
        if instruction == PING:
            targets = self.servos.values() if dxl_id == BROADCAST else [servo] if servo else []
            return b"".join(
                self._status(
                    s.read(x.ID), 0, struct.pack("<HB", s.read(x.MODEL_NUMBER), s.read(x.FIRMWARE_VERSION))
                )
                for s in targets
            )
        if instruction == READ and servo:
            address, length = struct.unpack_from("<HH", params)
            data = servo.read_bytes(address, length)
            return self._status(dxl_id, ERR_DATA_RANGE) if data is None else self._status(dxl_id, 0, data)
        if instruction == WRITE:
            if len(params) < 3:
                return self._status(dxl_id, ERR_DATA_LENGTH) if servo else b""
            (address,) = struct.unpack_from("<H", params)
            targets = self.servos.values() if dxl_id == BROADCAST else [servo] if servo else []
            errors = [s.write_bytes(address, params[2:]) for s in targets]
            return self._status(dxl_id, errors[0]) if servo else b""  # broadcast writes get no reply
        if instruction == REBOOT and servo:
            servo.write(x.TORQUE_ENABLE, 0)
            servo.write(x.HARDWARE_ERROR_STATUS, 0)
            return self._status(dxl_id)
        if instruction == SYNC_WRITE:
            address, length = struct.unpack_from("<HH", params)
            for i in range(4, len(params) - length, length + 1):
                target = self.servos.get(params[i])
                if target is not None:
                    target.write_bytes(address, params[i + 1 : i + 1 + length])
            return b""
        if instruction == BULK_WRITE:
            i = 0
            while i + 5 <= len(params):
                target_id, address, length = params[i], *struct.unpack_from("<HH", params, i + 1)
                target = self.servos.get(target_id)
                if target is not None:
                    target.write_bytes(address, params[i + 5 : i + 5 + length])
                i += 5 + length
            return b""
        if instruction == SYNC_READ:
            address, length = struct.unpack_from("<HH", params)
            return b"".join(
                self._status(i, 0, self.servos[i].read_bytes(address, length))
                for i in params[4:]
                if i in self.servos
            )
        if instruction == BULK_READ:
            replies = []
            for i in range(0, len(params) - 4, 5):
                target_id, address, length = params[i], *struct.unpack_from("<HH", params, i + 1)
                if target_id in self.servos:  # a missing servo stays silent; the host times out
                    replies.append(
                        self._status(target_id, 0, self.servos[target_id].read_bytes(address, length))
                    )
            return b"".join(replies)
        if servo is None or dxl_id == BROADCAST:
            return b""
        return self._status(dxl_id, ERR_INSTRUCTION)
