"""An Intel RealSense camera through librealsense (pyrealsense2): colour, and optionally depth
aligned to colour, from the device with a given serial number.

- The streams are opened sensor by sensor into a `syncer` (librealsense's own delivery thread
  matches colour and depth frames); the reader thread takes each frameset, aligns depth to
  colour (`rs.align`) and keeps the newest.
- Resolution, frame rate and format must be a mode the device offers (else a ConfigError listing
  its modes); a manual exposure is set and then read back.
- Device timestamps are mapped to the host's monotonic clock (`DeviceClock`; system-time
  stamps are converted directly).
- A USB drop shows as an error out of the syncer or as no frames for `lost_after_s`: the
  camera closes and reopens the device by serial until it comes back.
- `device=` takes an rs.device directly: a software device (tests) or one from a playback.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from robot_rl.errors import ConfigError, DeviceError
from robot_rl.hardware.camera_reader import DeviceClock, ThreadedCamera


def import_pyrealsense2():
    """pyrealsense2, loading libusb from the `libusb-package` wheel when the system has none
    (pyrealsense2's wheel links libusb-1.0.so.0 but does not ship it)."""
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        if "libusb" not in str(exc):
            raise ConfigError(
                f"pyrealsense2 is not usable: {exc} (pip install 'robot_rl[hardware]')"
            ) from None
        try:
            import libusb_package

            ctypes.CDLL(str(libusb_package.get_library_path()), mode=ctypes.RTLD_GLOBAL)
            import pyrealsense2 as rs
        except (ImportError, OSError) as exc2:
            raise ConfigError(
                f"pyrealsense2 needs libusb-1.0 (apt-get install libusb-1.0-0): {exc2}"
            ) from None
    return rs


@dataclass
class RealSenseCameraConfig:
    name: str
    serial: str | None = None  # None: the only device connected
    width: int = 640
    height: int = 480
    fps: int = 30
    depth: bool = False  # depth aligned to colour, uint16 millimetres
    exposure: float | None = None  # colour exposure, microseconds; None: auto exposure
    lost_after_s: float = 1.0  # no frameset for this long: the device counts as dropped
    reconnect_s: float = 1.0


class RealSenseCamera(ThreadedCamera):
    def __init__(self, cfg: RealSenseCameraConfig, device=None):
        self.rs = import_pyrealsense2()
        self.cfg = cfg
        self._given_device = device
        self._sensors, self._syncer, self._align = [], None, None
        self._clock = DeviceClock()
        self._last_frame = 0.0
        self._depth_to_mm = 1.0
        super().__init__(cfg.name, (cfg.height, cfg.width, 3), depth=cfg.depth, reconnect_s=cfg.reconnect_s)

    # --- device -------------------------------------------------------------------------------
    def _device(self):
        if self._given_device is not None:
            return self._given_device
        devices = list(self.rs.context().query_devices())
        serials = [d.get_info(self.rs.camera_info.serial_number) for d in devices]
        if self.cfg.serial is None:
            if len(devices) != 1:
                raise DeviceError(
                    f"camera {self.cfg.name}: {len(devices)} RealSense devices connected "
                    f"({', '.join(serials) or 'none'}); set its serial"
                )
            return devices[0]
        for device, serial in zip(devices, serials):
            if serial == str(self.cfg.serial):
                return device
        raise DeviceError(
            f"camera {self.cfg.name}: no RealSense with serial {self.cfg.serial} "
            f"(connected: {', '.join(serials) or 'none'}; `robot-rl find-cameras` lists them)"
        )

    def _profile(self, device, stream, fmt):
        cfg = self.cfg
        modes = []
        for sensor in device.query_sensors():
            for profile in sensor.get_stream_profiles():
                if profile.stream_type() != stream or not profile.is_video_stream_profile():
                    continue
                video = profile.as_video_stream_profile()
                modes.append(f"{video.width()}x{video.height()}@{profile.fps()} {profile.format()}")
                if (video.width(), video.height(), profile.fps(), profile.format()) == (
                    cfg.width,
                    cfg.height,
                    cfg.fps,
                    fmt,
                ):
                    return sensor, profile
        raise ConfigError(
            f"camera {cfg.name}: no {stream} mode {cfg.width}x{cfg.height}@{cfg.fps} {fmt}; "
            f"it offers {', '.join(sorted(set(modes))) or 'none'}"
        )

    def _open(self) -> None:
        rs, cfg = self.rs, self.cfg
        device = self._device()
        wanted = [self._profile(device, rs.stream.color, rs.format.rgb8)]
        if cfg.depth:
            wanted.append(self._profile(device, rs.stream.depth, rs.format.z16))
            depth_sensor = wanted[1][0]
            units = (
                depth_sensor.get_option(rs.option.depth_units)
                if depth_sensor.supports(rs.option.depth_units)
                else 0.001
            )
            self._depth_to_mm = units * 1000.0
        color_sensor = wanted[0][0]
        if cfg.exposure is not None:
            if not color_sensor.supports(rs.option.exposure):
                raise ConfigError(f"camera {cfg.name}: its colour sensor has no exposure setting")
            if color_sensor.supports(rs.option.enable_auto_exposure):
                color_sensor.set_option(rs.option.enable_auto_exposure, 0)
            color_sensor.set_option(rs.option.exposure, float(cfg.exposure))
            got = color_sensor.get_option(rs.option.exposure)
            if abs(got - cfg.exposure) > 1e-3 * max(1.0, cfg.exposure):
                raise ConfigError(
                    f"camera {cfg.name}: exposure {cfg.exposure:g} us was set but the device reports {got:g}"
                )
        self._syncer = rs.syncer()
        by_sensor: dict[int, tuple] = {}
        for sensor, profile in wanted:  # colour and depth may share one sensor (one open with both)
            key = id(sensor)
            by_sensor.setdefault(key, (sensor, []))[1].append(profile)
        self._sensors = []
        try:
            for sensor, profiles in by_sensor.values():
                sensor.open(profiles if len(profiles) > 1 else profiles[0])
                self._sensors.append(sensor)  # closed by _close, even if start fails
                sensor.start(self._syncer)
        except RuntimeError:
            self._close()
            raise
        self._clock = DeviceClock()  # a reopened device may have restarted its clock
        self._align = rs.align(rs.stream.color) if cfg.depth else None
        self._last_frame = time.monotonic()

    def _close(self) -> None:
        for sensor in self._sensors:
            for step in (sensor.stop, sensor.close):
                try:
                    step()
                except RuntimeError:
                    pass  # already stopped, or the device is gone
        self._sensors, self._syncer, self._align = [], None, None

    # --- frames -------------------------------------------------------------------------------
    def _grab(self):
        frames = self._syncer.poll_for_frames()
        if not frames:
            if time.monotonic() - self._last_frame > self.cfg.lost_after_s:
                raise DeviceError(f"camera {self.cfg.name}: no frames for {self.cfg.lost_after_s:g} s")
            time.sleep(0.002)
            return None
        arrival = time.monotonic()
        if self._align is not None:
            if frames.size() < 2:
                return None  # colour without its depth yet
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        if not color:
            return None
        self._last_frame = arrival
        image = np.asanyarray(color.get_data()).copy()
        depth = None
        if self._align is not None:
            raw = np.asanyarray(frames.get_depth_frame().get_data())
            depth = (
                raw
                if self._depth_to_mm == 1.0
                else np.clip(raw * self._depth_to_mm, 0, 65535).astype(np.uint16)
            )
            depth = depth.copy()
        return image, depth, self._host_time(color, arrival)

    def _host_time(self, frame, arrival: float) -> float:
        stamp_s = frame.get_timestamp() / 1000.0
        if frame.get_frame_timestamp_domain() == self.rs.timestamp_domain.system_time:
            return stamp_s - (time.time() - time.monotonic())  # wall clock -> monotonic
        return self._clock.to_host(stamp_s, arrival)


def find_realsense() -> list[dict]:
    """Every connected RealSense: name, serial, firmware, USB type and its colour / depth modes."""
    rs = import_pyrealsense2()
    found = []
    for device in rs.context().query_devices():

        def info(field, device=device):
            return device.get_info(field) if device.supports(field) else ""

        modes = set()
        for sensor in device.query_sensors():
            for profile in sensor.get_stream_profiles():
                if profile.is_video_stream_profile() and profile.stream_type() in (
                    rs.stream.color,
                    rs.stream.depth,
                ):
                    video = profile.as_video_stream_profile()
                    modes.add(
                        f"{profile.stream_type().name} {video.width()}x{video.height()}@{profile.fps()} "
                        f"{profile.format().name}"
                    )
        found.append(
            {
                "kind": "realsense",
                "name": info(rs.camera_info.name),
                "serial": info(rs.camera_info.serial_number),
                "firmware": info(rs.camera_info.firmware_version),
                "usb": info(rs.camera_info.usb_type_descriptor),
                "modes": sorted(modes),
            }
        )
    return found
