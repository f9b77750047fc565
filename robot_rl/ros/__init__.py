"""ROS 2: message conversions and bag import (plain Python, tested here); rclpy nodes import rclpy
only inside their own modules."""
