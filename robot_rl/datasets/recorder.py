"""EpisodeRecorder: buffers one episode's transitions in memory and appends it to a store at the end.

Nothing of an episode reaches disk until `commit()`, so an episode that is re-recorded, or that
ends in an exception, leaves the store untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_rl.datasets.store import EpisodeStore


class EpisodeRecorder:
    """Give `schema` (see `core.loop.transition_schema`) to open or create the store up front, so
    that a mismatch with an existing store is reported before anything is recorded."""

    def __init__(self, path, *, fps: float, attrs: dict | None = None, schema: dict | None = None):
        self.path, self.fps, self.attrs = Path(path), fps, dict(attrs or {})
        self.store: EpisodeStore | None = None
        if schema is not None:
            self.store = EpisodeStore.open_or_create(self.path, schema, fps=fps, attrs=self.attrs)
        self._steps: list[dict[str, np.ndarray]] = []

    def begin(self) -> None:
        self._steps = []

    def add(self, transition: dict) -> None:
        self._steps.append({k: np.asarray(v) for k, v in transition.items()})

    def discard(self) -> None:
        self._steps = []

    def commit(self) -> int | None:
        """Append the buffered episode; returns its index in the store (None if it was empty)."""
        if not self._steps:
            return None
        episode = {k: np.stack([s[k] for s in self._steps]) for k in self._steps[0]}
        self._steps = []
        if self.store is None:
            schema = {k: (v.shape[1:], v.dtype) for k, v in episode.items()}
            self.store = EpisodeStore.open_or_create(self.path, schema, fps=self.fps, attrs=self.attrs)
        index = self.store.append_episode(episode)
        return index

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
