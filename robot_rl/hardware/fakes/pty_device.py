"""The device's side of a serial link on a pseudo-terminal, for simulators of serial hardware.

A subclass answers bytes (`on_bytes`) and advances its model (`tick`); `port` is the pty's device
path, which pyserial (and so every driver here, and vendor SDKs built on pyserial) opens like a
USB-serial adapter. `unplug()` makes the device vanish as a pulled cable does.
"""

from __future__ import annotations

import os
import select
import threading
import time


class PtyDevice:
    name = "pty-device"

    def __init__(self):
        self._stop = threading.Event()
        self._plugged = True
        self._master, self._slave = os.openpty()
        self.port = os.ttyname(self._slave)
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)

    # --- what a simulator implements ---------------------------------------------------------
    def on_bytes(self, data: bytes, now: float) -> bytes | None:
        """Bytes from the host; returns the reply to write back, if any."""
        raise NotImplementedError

    def tick(self, dt: float, now: float) -> None:
        """Advance the device's model by dt seconds (called every few milliseconds)."""

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def unplug(self) -> None:
        """Stop answering and reading, as a device whose cable was pulled."""
        self._plugged = False

    def _serve(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.002)
            now = time.monotonic()
            self.tick(now - last, now)
            last = now
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            if not self._plugged:
                continue  # what is sent down a pulled cable is lost (left unread, it would spin this loop)
            reply = self.on_bytes(data, now)
            if reply:
                os.write(self._master, reply)
