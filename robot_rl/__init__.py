"""robot_rl: one control loop for simulated and real robots, and the learners that train on it."""

import os

# MuJoCo picks its OpenGL backend when it is first imported: default to headless EGL unless the
# user chose a backend or has a display. Done here so that it holds whatever is imported first.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"

__version__ = "0.2.0"
