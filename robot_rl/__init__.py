"""robot_rl: one control loop for simulated and real robots, and the learners that train on it."""

__version__ = "0.1.0"
