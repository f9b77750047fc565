"""A live view of a collection session in a rerun viewer served on localhost: every camera (and
depth) at `hz`, the robot's state, the action sent and whether the human drives. Open
http://localhost:<web_port> (forward the port over ssh from a headless robot computer).
The `viewer` extra installs rerun."""

from __future__ import annotations

import time

import numpy as np

from robot_rl.errors import require


class LiveView:
    def __init__(self, web_port: int = 9090, grpc_port: int = 9876, hz: float = 10.0):
        self.rr = require("rerun", "viewer", "the live camera view (collect viewer=true)")
        self.rr.init("robot_rl collect")
        uri = self.rr.serve_grpc(grpc_port=grpc_port)
        self.rr.serve_web_viewer(web_port=web_port, open_browser=False, connect_to=uri)
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
        """Stop serving: rerun's servers otherwise live on with the process (its message proxy
        keeps a thread busy)."""
        self.rr.disconnect()
