"""Physical constants shared by simulated and real robots."""

GRAVITY = 9.81  # m/s^2: an IMU's reading at rest, and the unit of collision thresholds in g
