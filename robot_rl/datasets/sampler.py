"""WindowSampler: fixed-length windows of episodes for sequence models (diffusion policy & co).

A window covers `horizon` steps. Observation keys keep its first `n_obs` steps, action keys all
of them. Windows may start up to `pad_before` steps before an episode and end up to `pad_after`
steps after it; the missing steps repeat the first/last real frame and `is_pad` marks them.
Defaults follow diffusion_policy: pad_before = n_obs - 1, pad_after = n_action - 1.

Reads go through a cache of decoded chunks (bounded in bytes), so random sampling decodes each
compressed chunk once instead of once per window.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from robot_rl.datasets.store import EpisodeStore


class ChunkCache:
    """LRU cache of decoded zarr chunks, shared by every key of a sampler."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def read(self, key: str, array, start: int, stop: int) -> np.ndarray:
        """array[start:stop] along time, decoding whole chunks on a miss (a video key's chunks:
        its keyframe groups, `chunk_span`)."""
        parts, step = [], start
        while step < stop:
            lo, hi = _chunk_span(array, step)
            chunk = self._chunk(key, array, lo, hi)
            parts.append(chunk[step - lo : min(stop, hi) - lo])
            step = hi
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _chunk(self, key: str, array, lo: int, hi: int) -> np.ndarray:
        chunk = self._chunks.get((key, lo))
        if chunk is not None:
            self._chunks.move_to_end((key, lo))
            return chunk
        chunk = array[lo:hi]
        self._chunks[(key, lo)] = chunk
        self.bytes += chunk.nbytes
        while self.bytes > self.max_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self.bytes -= old.nbytes
        return chunk


def _chunk_span(array, step: int) -> tuple[int, int]:
    """The steps [lo, hi) of the stored chunk that holds `step`."""
    if hasattr(array, "chunk_span"):
        return array.chunk_span(step)
    size = array.chunks[0]
    lo = step // size * size
    return lo, min(lo + size, array.shape[0])


class WindowSampler:
    def __init__(
        self,
        store: EpisodeStore,
        horizon: int,
        n_obs: int = 1,
        n_action: int | None = None,
        *,
        obs_keys: list[str] | None = None,
        action_keys: list[str] | None = None,
        pad_before: int | None = None,
        pad_after: int | None = None,
        episodes: list[int] | np.ndarray | None = None,
        cache_mb: float = 1024,
    ):
        n_action = horizon if n_action is None else n_action
        if not (1 <= n_obs <= horizon and 1 <= n_action <= horizon):
            raise ValueError(f"need 1 <= n_obs, n_action <= horizon; got {n_obs}, {n_action}, {horizon}")
        self.store, self.horizon, self.n_obs = store, horizon, n_obs
        self.pad_before = n_obs - 1 if pad_before is None else pad_before
        self.pad_after = n_action - 1 if pad_after is None else pad_after
        if not (0 <= self.pad_before < horizon and 0 <= self.pad_after < horizon):
            raise ValueError("pad_before and pad_after must lie in [0, horizon)")
        self.obs_keys = obs_keys if obs_keys is not None else [k for k in store.keys if k.startswith("obs/")]
        default_actions = ["action"] if "action" in store.keys else []
        self.action_keys = action_keys if action_keys is not None else default_actions
        for key in self.obs_keys + self.action_keys:
            store.array(key)  # a clear error for a key the store lacks
        self._arrays = {k: store.array(k) for k in self.obs_keys + self.action_keys}
        self.cache = ChunkCache(int(cache_mb * 2**20))
        self.indices = self._build_indices(episodes)

    def _build_indices(self, episodes) -> np.ndarray:
        """Rows (buffer_start, buffer_end, sample_start, sample_end), one per window."""
        ends = self.store.episode_ends
        chosen = range(len(ends)) if episodes is None else episodes
        rows = []
        for e in chosen:
            start = int(ends[e - 1]) if e > 0 else 0
            length = int(ends[e]) - start
            for idx in range(-self.pad_before, length - self.horizon + self.pad_after + 1):
                buffer_start = max(idx, 0)
                buffer_end = min(idx + self.horizon, length)
                sample_start = buffer_start - idx
                sample_end = sample_start + buffer_end - buffer_start
                rows.append((start + buffer_start, start + buffer_end, sample_start, sample_end))
        return np.asarray(rows, dtype=np.int64).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        buffer_start, buffer_end, sample_start, sample_end = (int(x) for x in self.indices[i])
        out = {}
        for key, array in self._arrays.items():
            k = self.n_obs if key in self.obs_keys else self.horizon
            # Read only the real steps this key needs: obs keys stop after n_obs steps.
            need_end = min(buffer_end, buffer_start + max(k - sample_start, 1))
            data = self.cache.read(key, array, buffer_start, need_end)
            front = min(sample_start, k)
            back = k - front - len(data)
            if front or back:
                parts = [np.repeat(data[:1], front, 0)] if front else []
                parts.append(data[: k - front])
                if back > 0:
                    parts.append(np.repeat(data[-1:], back, 0))
                data = np.concatenate(parts)
            out[key] = data
        pad = np.ones(self.horizon, dtype=bool)
        pad[sample_start:sample_end] = False
        out["is_pad"] = pad
        return out

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A batch of random windows, stacked along a leading batch axis."""
        rows = [self[int(i)] for i in rng.integers(0, len(self), size=batch_size)]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
