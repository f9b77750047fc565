"""A MuJoCo world shared by a simulated robot, its cameras and its task, and its camera backend."""

from __future__ import annotations

from pathlib import Path

import mujoco

from robot_rl.core.protocols import Camera
from robot_rl.core.specs import Frame

ASSETS = Path(__file__).parent / "assets"


class MujocoWorld:
    """Model and data of one scene. Physics advances only when the robot is commanded."""

    def __init__(self, xml_path: str | Path | None = None, *, xml: str | None = None):
        if (xml_path is None) == (xml is None):
            raise ValueError("give either an MJCF path or an MJCF string")
        self.model = (
            mujoco.MjModel.from_xml_path(str(xml_path))
            if xml is None
            else mujoco.MjModel.from_xml_string(xml)
        )
        self.data = mujoco.MjData(self.model)

    @property
    def time(self) -> float:
        return float(self.data.time)

    def step(self, n: int) -> None:
        mujoco.mj_step(self.model, self.data, nstep=n)

    def forward(self) -> None:
        mujoco.mj_forward(self.model, self.data)


class MujocoCamera(Camera):
    """Renders a named camera of a MujocoWorld, tuned for speed (no MSAA, shadows or reflections).

    Rendering happens in `read()`, in the caller's thread: the GL context is not thread-safe and
    the image must match the physics state the loop just observed. Timestamps are sim time.
    """

    def __init__(self, world: MujocoWorld, name: str, height: int = 84, width: int = 84):
        if mujoco.mj_name2id(world.model, mujoco.mjtObj.mjOBJ_CAMERA, name) < 0:
            raise ValueError(f"the scene has no camera named {name!r}")
        self.world, self.name, self.shape = world, name, (height, width, 3)
        self._renderer: mujoco.Renderer | None = None

    def connect(self) -> None:
        if self._renderer is None:
            model = self.world.model
            h, w, _ = self.shape
            # The offscreen buffer must hold the image; size it to it (larger costs fill time).
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, w)
            model.vis.global_.offheight = max(model.vis.global_.offheight, h)
            self._renderer = mujoco.Renderer(model, height=h, width=w)
            flags = self._renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0

    def read(self) -> Frame:
        if self._renderer is None:
            raise RuntimeError(f"camera {self.name} is not connected")
        self._renderer.update_scene(self.world.data, camera=self.name)
        return Frame(image=self._renderer.render().copy(), timestamp=self.world.time)

    def disconnect(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
