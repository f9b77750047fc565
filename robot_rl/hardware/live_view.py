"""A live view of a collection session in a rerun viewer served on localhost: every camera (and
depth) at `hz`, the robot's state, the action sent and whether the human drives. Open
http://localhost:<web_port> (forward the port over ssh from a headless robot computer).
The `viewer` extra installs rerun.

rerun's gRPC server and web viewer run in a child process (the `rerun` executable the SDK
installs), niced, and this process only streams to it. Served from inside the SDK instead, its
message proxy kept one core busy for as long as it served (rerun 0.23, measured), beside the
control loop; the child process idles, and it ends with this one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from robot_rl.errors import ConfigError, require

START_TIMEOUT_S = 15.0


def _end_with_parent() -> None:  # runs in the child between fork and exec: Linux only, no locks
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: a parent killed -9 ends it too


class LiveView:
    def __init__(self, web_port: int = 9090, grpc_port: int = 9876, hz: float = 10.0):
        self.rr = require("rerun", "viewer", "the live camera view (collect viewer=true)")
        self._server = _serve(web_port, grpc_port)
        self.rr.init("robot_rl collect")
        self.rr.connect_grpc(f"rerun+http://127.0.0.1:{grpc_port}/proxy")
        self.url = f"http://localhost:{web_port}"
        self.period, self._last, self._step = 1.0 / hz, 0.0, 0

    def __call__(self, loop, result) -> None:
        """A ControlLoop on_step callback."""
        self._step += 1
        now = time.monotonic()
        if now - self._last < self.period:
            return
        self._last = now
        rr, env = self.rr, loop.env
        rr.set_time("step", sequence=self._step)
        for cam in env.cameras:
            frame = cam.read()
            rr.log(f"camera/{cam.name}", rr.Image(frame.image))
            if frame.depth is not None:
                rr.log(f"camera/{cam.name}/depth", rr.DepthImage(frame.depth, meter=1000.0))
        for key, value in env.raw_obs.items():
            if not key.startswith("timestamp"):
                for i, v in enumerate(np.atleast_1d(np.asarray(value, np.float64))):
                    rr.log(f"state/{key}/{i}", rr.Scalars(float(v)))
        rr.log(
            "episode",
            rr.TextLog(
                f"episode {loop.episode + 1} step {result.steps} intervened {result.intervened_steps}"
            ),
        )

    def close(self) -> None:
        """Stop streaming and stop the server."""
        self.rr.disconnect()
        self._server.terminate()
        try:
            self._server.wait(5)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()


def _serve(web_port: int, grpc_port: int) -> subprocess.Popen:
    """rerun's gRPC server and web viewer on localhost, up and listening."""
    # the binary itself: the `rerun` on PATH is a Python script that would run it as its own child
    rerun = Path(require("rerun_cli", "viewer", "the live camera view").__file__).with_name("rerun")
    if not rerun.is_file():
        raise ConfigError(f"the live view needs rerun's executable, missing at {rerun}")
    for port in (grpc_port, web_port):  # rerun panics with a backtrace on a port in use
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as rerun binds its own
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise ConfigError(f"the live view's port {port} is in use by another program") from None
    command = [str(rerun), "--serve-web", "--bind", "127.0.0.1"]
    log = tempfile.TemporaryFile()  # its messages, read only if it fails to start
    server = subprocess.Popen(
        [*command, "--port", str(grpc_port), "--web-viewer-port", str(web_port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        preexec_fn=_end_with_parent if sys.platform == "linux" else None,
    )
    os.setpriority(os.PRIO_PROCESS, server.pid, 10)  # the control loop comes first
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            reason = log.read().decode(errors="replace").strip().splitlines()
            raise ConfigError(
                f"the live view's rerun server exited at start (ports {grpc_port}, {web_port}): "
                f"{reason[-1] if reason else 'no message'}"
            )
        if all(_listening(port) for port in (grpc_port, web_port)):
            log.close()  # the child keeps its own descriptor
            return server
        time.sleep(0.05)
    server.kill()
    server.wait()
    raise ConfigError(f"the live view's rerun server did not listen on ports {grpc_port} and {web_port}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
