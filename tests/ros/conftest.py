import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # ros_sims: the robots' side of the loopback graph
