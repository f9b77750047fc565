import itertools
import os
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # ros_sims: the robots' side of a ROS graph

# A domain per test (0..101 are the IDs whose DDS ports are safe on Linux), starting at random so
# that two test runs on one machine rarely meet; discovery stays on this host.
_domains = itertools.count(random.Random(os.getpid()).randrange(1, 101))


@pytest.fixture
def ros_domain() -> int:
    """A ROS_DOMAIN_ID for this test alone. Without rclpy (the ros-wheels extra or a sourced ROS 2)
    the test is skipped, unless ROBOT_RL_REQUIRE_RCLPY is set (make test sets it): then it fails."""
    try:
        import rclpy  # noqa: F401
    except ImportError:
        if os.environ.get("ROBOT_RL_REQUIRE_RCLPY"):
            raise
        pytest.skip("rclpy is not installed: pip install -e '.[ros-wheels]', or source a ROS 2 installation")
    return 1 + next(_domains) % 101
