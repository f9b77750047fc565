"""Real robot backends behind the core protocols (Robot, Camera, Teleop). Device libraries
(pyserial, pyrealsense2, ...) are imported lazily: install robot_rl[hardware]."""
