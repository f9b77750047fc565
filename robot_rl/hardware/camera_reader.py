"""What every real camera shares: a background reader thread that keeps the newest frame, so
`read()` never waits on the device; reconnection after the device drops; device clocks mapped to
the host's monotonic clock.

A subclass opens the device (`_open`), grabs one frame (`_grab`: (image, depth or None, host
time) or None when no frame came in time) and closes it (`_close`). Any exception out of `_grab`
counts as a lost device: the thread closes it and tries `_open` again every `reconnect_s` until it
comes back, while `read()` keeps returning the last frame — whose age then tells the loop (RobotEnv's
`max_frame_age_s`) that the image is stale.
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from robot_rl.core.protocols import Camera
from robot_rl.core.specs import Frame
from robot_rl.errors import DeviceError


class DeviceClock:
    """Maps device timestamps (seconds, any epoch) to host monotonic time.

    offset = host arrival time - device time, over the last `window` frames; its minimum is the
    one least delayed by USB and scheduling, so device time + that minimum is when the frame was
    captured, on the host's clock (the approach of a one-way clock sync). The window lets the
    estimate follow a slow drift between the two clocks.
    """

    def __init__(self, window: int = 120):
        self._offsets: collections.deque[float] = collections.deque(maxlen=window)

    def to_host(self, device_s: float, host_arrival_s: float) -> float:
        self._offsets.append(host_arrival_s - device_s)
        return device_s + min(self._offsets)


class ThreadedCamera(Camera):
    def __init__(
        self,
        name: str,
        shape: tuple[int, int, int],
        depth: bool = False,
        reconnect_s: float = 1.0,
        first_frame_timeout_s: float = 5.0,
    ):
        self.name, self.shape, self.depth = name, tuple(shape), depth
        self.reconnect_s, self.first_frame_timeout_s = reconnect_s, first_frame_timeout_s
        self.frames = self.reconnects = 0
        self.last_error: str | None = None
        self._frame: Frame | None = None
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open_now = False

    # --- what a camera implements -----------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _grab(self) -> tuple[np.ndarray, np.ndarray | None, float] | None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # --- Camera protocol ----------------------------------------------------------------------
    def connect(self) -> None:
        if self._thread is not None:
            return
        try:
            self._open()
        except (OSError, RuntimeError) as exc:  # the vendor library's own errors: a device problem
            raise DeviceError(f"camera {self.name}: {exc}") from None
        self._open_now = True
        self._stop.clear()
        self._first.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        if not self._first.wait(self.first_frame_timeout_s):
            error = self.last_error
            self.disconnect()
            raise DeviceError(
                f"camera {self.name}: no frame within {self.first_frame_timeout_s:g} s"
                + (f" ({error})" if error else "")
            )

    def read(self) -> Frame:
        with self._lock:
            if self._frame is None:
                raise DeviceError(f"camera {self.name} is not connected")
            return self._frame

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        if self._open_now:
            self._open_now = False
            self._close()

    # --- the reader thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._open_now:
                if self._stop.wait(self.reconnect_s):
                    return
                try:
                    self._open()
                    self._open_now = True
                    self.reconnects += 1
                except Exception as exc:  # keep trying: the device may come back
                    self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            try:
                got = self._grab()
            except Exception as exc:  # the device went away: close it and keep trying to reopen
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._open_now = False
                try:
                    self._close()
                except Exception:
                    pass
                continue
            if got is None:
                continue
            image, depth, stamp = got
            if image.shape != self.shape:
                self.last_error = f"frame of shape {image.shape}, expected {self.shape}"
                continue
            with self._lock:
                self._frame = Frame(image, stamp, depth)
                self.frames += 1
            self._first.set()
