"""A RealSense made inside librealsense: an `rs.software_device` with a colour and a depth sensor,
fed frames by a thread, for tests and dry runs without a camera. Everything downstream of the
device — sensors, stream profiles, options, the syncer, alignment, timestamps — is librealsense's
own code; only the pixels come from here (a moving gradient, depth increasing with the frame).

`with SoftwareRealSense(serial="sim0001") as device:` ... `RealSenseCamera(cfg, device=device.device)`;
`pause()` stops the frames as a dropped USB link does, `resume()` restarts them.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from robot_rl.hardware.realsense_camera import import_pyrealsense2


class SoftwareRealSense:
    def __init__(
        self,
        serial: str = "sim0001",
        width: int = 64,
        height: int = 48,
        fps: int = 30,
        depth_units: float = 0.001,
    ):
        rs = self.rs = import_pyrealsense2()
        self.width, self.height, self.fps = width, height, fps
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.name, "robot_rl software RealSense")
        self.device.register_info(rs.camera_info.serial_number, serial)
        self._color_sensor = self.device.add_sensor("RGB Camera")
        self._depth_sensor = self.device.add_sensor("Stereo Module")
        self._color = self._color_sensor.add_video_stream(
            self._stream(rs.stream.color, rs.format.rgb8, 3, uid=1)
        )
        self._depth = self._depth_sensor.add_video_stream(
            self._stream(rs.stream.depth, rs.format.z16, 2, uid=2)
        )
        self._depth_sensor.add_read_only_option(rs.option.depth_units, depth_units)
        # option_range(min, max, default, step): pyrealsense2's order, whatever its docstring says
        self._color_sensor.add_option(rs.option.exposure, rs.option_range(1, 10000, 166, 1), True)
        self._color_sensor.add_option(rs.option.enable_auto_exposure, rs.option_range(0, 1, 1, 1), True)
        identity = rs.extrinsics()
        identity.rotation, identity.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
        self._depth.register_extrinsics_to(self._color, identity)
        self.device.create_matcher(rs.matchers.default)
        self.frames_sent = 0
        self._feeding = threading.Event()
        self._feeding.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="software-realsense", daemon=True)

    def _stream(self, kind, fmt, bpp: int, uid: int):
        rs = self.rs
        intrinsics = rs.intrinsics()
        intrinsics.width, intrinsics.height = self.width, self.height
        intrinsics.fx = intrinsics.fy = float(self.width)
        intrinsics.ppx, intrinsics.ppy = self.width / 2, self.height / 2
        intrinsics.model, intrinsics.coeffs = rs.distortion.none, [0.0] * 5
        stream = rs.video_stream()
        stream.type, stream.index, stream.uid = kind, 0, uid
        stream.width, stream.height, stream.fps, stream.bpp, stream.fmt = (
            self.width,
            self.height,
            self.fps,
            bpp,
            fmt,
        )
        stream.intrinsics = intrinsics
        return stream

    def __enter__(self) -> SoftwareRealSense:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def pause(self) -> None:
        self._feeding.clear()

    def resume(self) -> None:
        self._feeding.set()

    def image(self, n: int) -> np.ndarray:
        """The colour image of frame n (tests compare against it)."""
        x = (np.arange(self.width) + n) % 256
        return np.broadcast_to(x[None, :, None], (self.height, self.width, 3)).astype(np.uint8).copy()

    def _frame(self, profile, pixels: np.ndarray, bpp: int, n: int, stamp_ms: float):
        frame = self.rs.software_video_frame()
        frame.pixels, frame.bpp, frame.stride = pixels, bpp, self.width * bpp
        frame.timestamp, frame.domain, frame.frame_number = stamp_ms, self.rs.timestamp_domain.system_time, n
        frame.profile = profile.as_video_stream_profile()
        return frame

    def _feed(self) -> None:
        # Frames on the device's own clock, exactly 1/fps apart, as a sensor's hardware clock
        # stamps them (librealsense's syncer matches colour and depth expecting that spacing).
        n, start = 0, time.monotonic()
        while not self._stop.is_set():
            if not self._feeding.wait(0.05):
                start = time.monotonic() - n / self.fps  # a pause: the clock runs on
                continue
            due = start + n / self.fps
            time.sleep(max(0.0, due - time.monotonic()))
            # Stamped in system time, as a D400 with global timestamps reports them (librealsense's
            # syncer does not pair software frames stamped on a free-running hardware clock).
            stamp_ms = (due + time.time() - time.monotonic()) * 1000
            depth = np.full((self.height, self.width), 500 + n % 1000, np.uint16)
            self._color_sensor.on_video_frame(self._frame(self._color, self.image(n), 3, n, stamp_ms))
            self._depth_sensor.on_video_frame(self._frame(self._depth, depth, 2, n, stamp_ms))
            self.frames_sent = n = n + 1
