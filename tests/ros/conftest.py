import fcntl
import itertools
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # ros_sims: the robots' side of a ROS graph

# Domain IDs 1..101 (0..101 are the ones whose DDS ports are safe on Linux), tried from a random
# start; each is claimed with a lock file, so that test runs on one machine never share one.
_starts = itertools.count(random.Random(os.getpid()).randrange(101))


@pytest.fixture
def ros_domain():
    """A ROS_DOMAIN_ID for this test alone. Without rclpy (the ros-wheels extra or a sourced ROS 2)
    the test is skipped, unless ROBOT_RL_REQUIRE_RCLPY is set (make test sets it): then it fails."""
    try:
        import rclpy  # noqa: F401
    except ImportError:
        if os.environ.get("ROBOT_RL_REQUIRE_RCLPY"):
            raise
        pytest.skip("rclpy is not installed: pip install -e '.[ros-wheels]', or source a ROS 2 installation")
    start = next(_starts)
    for offset in range(101):
        domain = 1 + (start + offset) % 101
        fd = os.open(
            Path(tempfile.gettempdir()) / f"robot_rl_ros_domain_{domain}.lock", os.O_CREAT | os.O_RDWR
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another test run holds it
            os.close(fd)
            continue
        try:
            yield domain
        finally:
            os.close(fd)  # releases the lock
        return
    pytest.fail("every ROS domain 1..101 is taken by other test runs")
