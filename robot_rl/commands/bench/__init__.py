"""Performance benchmarks behind `robot-rl bench`: each measures ours beside a baseline in the same run."""
