"""A camera through OpenCV: a device index, a device path (/dev/video0), a video file or a stream
URL (rtsp://, http://). Resolution and frame rate are set and then read back: a camera that
does not give what was asked is a ConfigError naming what it gives. A file plays at its own
frame rate, as a live camera would deliver it, and starts over at its end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from robot_rl.errors import ConfigError, DeviceError
from robot_rl.hardware.camera_reader import ThreadedCamera


@dataclass
class OpenCVCameraConfig:
    name: str
    source: int | str = 0
    width: int | None = None  # None: the device's or file's own
    height: int | None = None
    fps: float | None = None
    exposure: float | None = None  # the driver's CAP_PROP_EXPOSURE units; None leaves auto exposure on
    reconnect_s: float = 1.0


class OpenCVCamera(ThreadedCamera):
    def __init__(self, cfg: OpenCVCameraConfig):
        import cv2

        self.cfg, self._cv2 = cfg, cv2
        source = cfg.source
        self._is_file = isinstance(source, str) and Path(source).is_file() and not source.startswith("/dev/")
        if (
            isinstance(source, str)
            and not self._is_file
            and "://" not in source
            and not Path(source).exists()
        ):
            raise ConfigError(f"camera {cfg.name}: no such device or file {source!r}")
        self._cap = None
        self._period = 0.0
        self._next = 0.0
        width, height = self._probe()
        super().__init__(cfg.name, (height, width, 3), reconnect_s=cfg.reconnect_s)

    def _probe(self) -> tuple[int, int]:
        if self.cfg.width and self.cfg.height:
            return int(self.cfg.width), int(self.cfg.height)
        self._open()
        try:
            return self._size
        finally:
            self._close()

    def _open(self) -> None:
        cv2, cfg = self._cv2, self.cfg
        cap = cv2.VideoCapture(cfg.source)
        if not cap.isOpened():
            cap.release()
            raise DeviceError(f"camera {cfg.name}: OpenCV cannot open {cfg.source!r}")
        if not self._is_file:
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, cfg.width),
                (cv2.CAP_PROP_FRAME_HEIGHT, cfg.height),
                (cv2.CAP_PROP_FPS, cfg.fps),
            ):
                if value:
                    cap.set(prop, value)
            if cfg.exposure is not None:
                cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)  # V4L2: 1 = manual
                cap.set(cv2.CAP_PROP_EXPOSURE, cfg.exposure)
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        fps = cap.get(cv2.CAP_PROP_FPS)
        problems = []
        if cfg.width and cfg.height and size != (cfg.width, cfg.height):
            problems.append(f"{size[0]}x{size[1]} instead of {cfg.width}x{cfg.height}")
        if cfg.fps and fps and abs(fps - cfg.fps) > 0.5:
            problems.append(f"{fps:g} fps instead of {cfg.fps:g}")
        if cfg.exposure is not None and abs(cap.get(cv2.CAP_PROP_EXPOSURE) - cfg.exposure) > 1e-6 * max(
            1.0, abs(cfg.exposure)
        ):
            problems.append(f"exposure {cap.get(cv2.CAP_PROP_EXPOSURE):g} instead of {cfg.exposure:g}")
        if problems:
            cap.release()
            raise ConfigError(f"camera {cfg.name} ({cfg.source}) gives " + ", ".join(problems))
        self._cap, self._size = cap, size
        self._period = 1.0 / fps if self._is_file and fps else 0.0
        self._next = time.monotonic()

    def _grab(self):
        if self._period:  # a file: deliver at its frame rate
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next = max(self._next + self._period, time.monotonic() - self._period)
        ok, bgr = self._cap.read()
        stamp = time.monotonic()
        if not ok:
            if self._is_file:  # the end: start over
                self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
                return None
            raise DeviceError(f"camera {self.cfg.name}: no frame from {self.cfg.source!r}")
        return self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB), None, stamp

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
