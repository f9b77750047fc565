"""Zarr episode stores, episode recording and window sampling."""

from robot_rl.datasets.recorder import EpisodeRecorder
from robot_rl.datasets.sampler import WindowSampler
from robot_rl.datasets.store import EpisodeStore

__all__ = ["EpisodeRecorder", "EpisodeStore", "WindowSampler"]
