"""ROS 2: message conversions and bag import (plain Python, tested here); rclpy nodes import rclpy
only inside their own modules."""

from pathlib import Path

LAUNCH_DIR = Path(__file__).parent / "launch"  # shipped in the wheel; `robot-rl ros launch-dir` prints it
