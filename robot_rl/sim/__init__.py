"""Simulation backends. MuJoCo renders headless through EGL unless the user chose otherwise."""

import os

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"
