"""WindowSampler: fixed-length windows of episodes for sequence models (diffusion policy & co).

A window covers `horizon` steps. Observation keys keep its first `n_obs` steps, action keys all
of them. Windows may start up to `pad_before` steps before an episode and end up to `pad_after`
steps after it; the missing steps repeat the first/last real frame and `is_pad` marks them.
Defaults follow diffusion_policy: pad_before = n_obs - 1, pad_after = n_action - 1.

Reads are by batch and by chunk: a batch's windows are gathered per key from the chunks they
touch, each chunk decoded once per batch (in parallel threads, straight from its file) or not at
all when the cache of decoded chunks (bounded in bytes) holds it. So a dataset that fits the cache
decodes each chunk once, and one that does not costs a decode per distinct chunk in a batch, not
per window. `windows_per_chunk` > 1 draws windows in groups that share a chunk, each window still
uniform over the dataset: fewer decodes per batch, less varied batches. By default ("auto") a
dataset that fits the cache is drawn window by window (i.i.d., as diffusion_policy draws), and one
that does not in groups of OUT_OF_CORE_GROUP.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from robot_rl.datasets.store import EpisodeStore, thread_pool
from robot_rl.errors import DatasetError

# Windows to a chunk when the sampled keys outgrow the cache. `robot-rl bench store` (two 84x84
# cameras in 32-frame chunks, batches of 256): i.i.d. draws with no cache read 0.70x as fast as
# diffusion_policy's per-window reads of its own layout, 8 to a chunk 3.7x; a batch of 256 still
# spans 32 chunks.
OUT_OF_CORE_GROUP = 8


def check_windows_per_chunk(value) -> None:
    """Raises ValueError unless `value` is "auto" or a whole number of windows, at least 1."""
    if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"windows_per_chunk must be 'auto' or at least 1, got {value!r}")


class ChunkCache:
    """LRU cache of decoded chunks, (key, first step) -> array, shared by every key of a sampler."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get(self, key: str, lo: int) -> np.ndarray | None:
        chunk = self._chunks.get((key, lo))
        if chunk is not None:
            self._chunks.move_to_end((key, lo))
        return chunk

    def put(self, key: str, lo: int, chunk: np.ndarray) -> None:
        if chunk.nbytes > self.max_bytes:
            return
        self._chunks[(key, lo)] = chunk
        self.bytes += chunk.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._chunks.popitem(last=False)
            self.bytes -= old.nbytes


def _chunk_spans(array, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and end step of the stored chunk that holds each of `steps` (a video key's
    chunks: its keyframe groups, `chunk_span`)."""
    if hasattr(array, "chunk_span"):
        spans = {int(s): array.chunk_span(int(s)) for s in np.unique(steps)}
        lo = np.array([spans[int(s)][0] for s in steps], np.int64)
        hi = np.array([spans[int(s)][1] for s in steps], np.int64)
        return lo, hi
    size = array.chunks[0]
    lo = steps // size * size
    return lo, np.minimum(lo + size, array.shape[0])


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
        windows_per_chunk: int | str = "auto",
    ):
        n_action = horizon if n_action is None else n_action
        if not (1 <= n_obs <= horizon and 1 <= n_action <= horizon):
            raise ValueError(f"need 1 <= n_obs, n_action <= horizon; got {n_obs}, {n_action}, {horizon}")
        check_windows_per_chunk(windows_per_chunk)
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
        if windows_per_chunk == "auto":
            decoded = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in self._arrays.values())
            windows_per_chunk = 1 if decoded <= self.cache.max_bytes else OUT_OF_CORE_GROUP
        self.windows_per_chunk = int(windows_per_chunk)
        self.decodes = 0  # chunks decoded so far (cache misses)
        self.indices = self._build_indices(episodes)
        if not len(self.indices):
            need = horizon - self.pad_before - self.pad_after
            raise DatasetError(
                f"no {horizon}-step window fits the chosen episodes of {store.path}: "
                f"an episode needs at least {need} steps here"
            )
        self._groups = None  # windows_per_chunk > 1: windows sorted by chunk, and where each group starts

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
        return {k: v[0] for k, v in self.windows(np.array([int(i)])).items()}

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A batch of random windows (`draw`), stacked along a leading batch axis."""
        return self.windows(self.draw(batch_size, rng))

    def draw(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Random window indices, each uniform over the dataset; with windows_per_chunk = r, in
        groups of r drawn from the windows whose first real step is in one chunk of the widest key."""
        if self.windows_per_chunk == 1:
            return rng.integers(0, len(self), size=batch_size)
        order, starts, group = self._window_groups()
        anchors = rng.integers(0, len(self), size=-(-batch_size // self.windows_per_chunk))
        g = group[anchors]
        sizes = starts[g + 1] - starts[g]
        # uniform within the anchor's group, so each drawn window is uniform over the dataset: a
        # group is an anchor's with probability size / N, then each member 1 / size
        offsets = (rng.random((len(g), self.windows_per_chunk - 1)) * sizes[:, None]).astype(np.int64)
        mates = order[starts[g][:, None] + offsets]
        return np.concatenate([anchors[:, None], mates], axis=1).ravel()[:batch_size]

    def _window_groups(self):
        """Windows sorted by the chunk of the widest key their first real step lies in."""
        if self._groups is None:
            key = max(self._arrays, key=lambda k: int(np.prod(self._arrays[k].shape[1:])))
            lo, _ = _chunk_spans(self._arrays[key], self.indices[:, 0])
            order = np.argsort(lo, kind="stable")
            _, first, group_of_sorted = np.unique(lo[order], return_index=True, return_inverse=True)
            group = np.empty(len(order), np.int64)
            group[order] = group_of_sorted
            self._groups = (order, np.append(first, len(order)), group)
        return self._groups

    def windows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Windows `indices`, stacked: each key read once per chunk the windows touch."""
        bs, be, ss, se = (self.indices[indices, c][:, None] for c in range(4))
        out = {}
        for key, array in self._arrays.items():
            j = np.arange(self.n_obs if key in self.obs_keys else self.horizon)[None]
            # the real step each position shows: padding repeats the first / last real step
            out[key] = self._gather(key, array, np.clip(bs + j - ss, bs, be - 1))
        j = np.arange(self.horizon)[None]
        out["is_pad"] = (j < ss) | (j >= se)
        return out

    def _gather(self, key: str, array, steps: np.ndarray) -> np.ndarray:
        """array[steps] for an array of global steps, decoding each chunk they touch once."""
        flat = steps.ravel()
        lo, hi = _chunk_spans(array, flat)
        order = np.argsort(lo, kind="stable")
        firsts, where = np.unique(lo[order], return_index=True)
        chunks = self._chunks(key, array, firsts, hi[order][where])
        out = np.empty((len(flat), *array.shape[1:]), array.dtype)
        bounds = np.append(where, len(flat))
        for first, chunk, a, b in zip(firsts.tolist(), chunks, bounds[:-1], bounds[1:]):
            rows = order[a:b]
            out[rows] = chunk[flat[rows] - first]
        return out.reshape(*steps.shape, *array.shape[1:])

    def _chunks(self, key: str, array, firsts: np.ndarray, ends: np.ndarray) -> list[np.ndarray]:
        """The decoded chunks starting at `firsts`: from the cache, the rest decoded (a store key's
        in parallel, straight from their files; a video key's in turn, its decoders being
        stateful) and offered to the cache."""
        found = [self.cache.get(key, int(lo)) for lo in firsts]
        missing = [i for i, chunk in enumerate(found) if chunk is None]
        if missing:
            if hasattr(array, "chunk"):
                decoded = thread_pool().map(lambda i: array.chunk(int(firsts[i]), int(ends[i])), missing)
            else:
                decoded = (array[int(firsts[i]) : int(ends[i])] for i in missing)
            for i, chunk in zip(missing, decoded):
                found[i] = chunk
                self.cache.put(key, int(firsts[i]), chunk)
            self.decodes += len(missing)
        return found
