"""Replay buffers of transitions for off-policy learners, their RLPD batch mix, and conversions
from episode stores (demonstrations) and from the ControlLoop (online and intervention data).

A transition holds `obs/<key>`, `next_obs/<key>`, `action` (what was executed: the human's while
intervening), `prev_action` (the action before it in the episode; the action itself at the
start), `reward`, `mask` (0 where the episode terminated, so the target does not bootstrap; a
time limit keeps 1) and `intervened`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from robot_rl.errors import DatasetError

Schema = dict[str, tuple[tuple[int, ...], str]]
TRANSITION_KEYS = ("action", "prev_action", "reward", "mask", "intervened")


def replay_schema(obs_space: dict, action_dim: int) -> Schema:
    """Keys, per-transition shapes and dtypes for observations of these spaces (name -> gym Box)."""
    schema: Schema = {}
    for key, space in obs_space.items():
        schema[f"obs/{key}"] = (tuple(space.shape), space.dtype.name)
        schema[f"next_obs/{key}"] = (tuple(space.shape), space.dtype.name)
    schema.update(
        {
            "action": ((action_dim,), "float32"),
            "prev_action": ((action_dim,), "float32"),
            "reward": ((), "float32"),
            "mask": ((), "float32"),
            "intervened": ((), "bool"),
        }
    )
    return schema


class ReplayBuffer:
    """A fixed-capacity ring buffer of transitions in numpy arrays; the oldest are overwritten."""

    def __init__(self, capacity: int, schema: Schema):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity, self.schema = int(capacity), dict(schema)
        self.data = {k: np.zeros((self.capacity, *shape), dtype) for k, (shape, dtype) in self.schema.items()}
        self.size, self.pointer, self.total = 0, 0, 0

    def __len__(self) -> int:
        return self.size

    def add_batch(self, batch: dict[str, np.ndarray]) -> None:
        missing = sorted(set(self.schema) - set(batch))
        if missing:
            raise ValueError(f"transitions lack {', '.join(missing)}")
        n = len(batch["action"])
        if n > self.capacity:  # only the newest fit
            batch = {k: v[-self.capacity :] for k, v in batch.items()}
            n = self.capacity
        index = (self.pointer + np.arange(n)) % self.capacity
        for key, array in self.data.items():
            array[index] = batch[key]
        self.pointer = int((self.pointer + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        self.total += n

    def add(self, transition: dict[str, np.ndarray]) -> None:
        self.add_batch({k: np.asarray(v)[None] for k, v in transition.items()})

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = rng.integers(0, self.size, n)
        return {k: v[index] for k, v in self.data.items()}

    def contents(self) -> dict[str, np.ndarray]:
        """All stored transitions, oldest first."""
        return self.newest(self.size)

    def newest(self, n: int) -> dict[str, np.ndarray]:
        """The last `n` transitions added (at most `size`), oldest first."""
        n = min(int(n), self.size)
        order = (self.pointer - n + np.arange(n)) % self.capacity
        return {k: v[order] for k, v in self.data.items()}

    # --- persistence -----------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the buffer as a zarr store, atomically: a temporary folder renamed over `path`
        (the previous copy kept as `<path>.old` until the new one is in place). Every chunk is
        written, all-zero ones too, with a CRC-32C checksum, so `load` can tell damage from data."""
        import zarr
        from zarr.codecs import Crc32cCodec

        from robot_rl.datasets.store import array_codec

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        root = zarr.open_group(str(tmp), mode="w")
        for key, values in self.contents().items():
            shape, dtype = self.schema[key]
            root.create_array(
                key,
                data=values,
                chunks=(max(1, min(len(values), 4096)), *shape),
                compressors=[array_codec(np.dtype(dtype).itemsize), Crc32cCodec()],
                config={"write_empty_chunks": True},
            )
        root.attrs.update(
            {
                "format": "robot_rl.replay",
                "capacity": self.capacity,
                "total": self.total,
                "schema": {k: [list(s), d] for k, (s, d) in self.schema.items()},
            }
        )
        old = path.with_name(path.name + ".old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)  # a copy a killed save had not removed yet
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path, capacity: int | None = None) -> ReplayBuffer:
        import zarr

        from robot_rl.datasets.store import chunk_file, has_checksums

        path = Path(path)
        old = path.with_name(path.name + ".old")
        if not path.exists() and old.exists():  # killed between save's two renames
            path = old
        try:
            root = zarr.open_group(str(path), mode="r")
            attrs = dict(root.attrs)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise DatasetError(f"no replay buffer at {path}") from None
        except Exception as exc:  # unreadable metadata
            raise DatasetError(f"the replay buffer at {path} is damaged: {exc}") from None
        if attrs.get("format") != "robot_rl.replay":
            raise DatasetError(f"{path} is not a saved replay buffer")
        try:
            schema = {k: (tuple(s), d) for k, (s, d) in attrs["schema"].items()}
            buffer = cls(capacity or int(attrs["capacity"]), schema)
            arrays = {k: root[k] for k in schema}
            for key, array in arrays.items():
                # Buffers saved before checksums skipped all-zero chunks: only newer ones are whole on disk.
                if has_checksums(array) and any(
                    not chunk_file(array, t).exists() for t in range(-(-array.shape[0] // array.chunks[0]))
                ):
                    raise ValueError(f"a chunk of {key} is missing")
            buffer.add_batch({k: a[:] for k, a in arrays.items()})
            buffer.total = int(attrs["total"])
        except Exception as exc:  # a missing or corrupt chunk, metadata that does not agree
            raise DatasetError(
                f"the replay buffer at {path} is damaged: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        return buffer


class ReplayJournal:
    """A replay buffer on disk for training checkpoints, kept in segments: each checkpoint adds
    only the transitions that arrived since the one before, as a segment `<start>-<end>.zarr`
    (transitions start..end of the buffer's life, written whole and renamed: a kill mid-write
    leaves no partial segment), and names the segments that rebuild the buffer at that point.
    Segments no checkpoint needs any more (older than the buffer's capacity) are removed."""

    def __init__(self, directory, segments: list | None = None):
        self.dir = Path(directory)
        self.segments = [tuple(int(x) for x in s) for s in (segments or [])]
        self._previous = list(self.segments)  # what the latest written checkpoint needs

    def _path(self, segment) -> Path:
        return self.dir / f"{segment[0]:012d}-{segment[1]:012d}.zarr"

    def append(self, buffer: ReplayBuffer) -> list[list[int]]:
        """Write what `buffer` took in since the last call; returns the segments that rebuild it
        (for the checkpoint about to be written)."""
        end = self.segments[-1][1] if self.segments else 0
        if buffer.total > end:
            n = min(buffer.total - end, buffer.size)  # more than the capacity since: only the newest exist
            part = ReplayBuffer(n, buffer.schema)
            part.add_batch(buffer.newest(n))
            self.segments.append((buffer.total - n, buffer.total))
            part.save(self._path(self.segments[-1]))
        # The buffer is rebuilt from the newest segments that cover its size.
        needed, rows = [], 0
        for segment in reversed(self.segments):
            if rows >= buffer.size:
                break
            needed.insert(0, segment)
            rows += segment[1] - segment[0]
        keep = set(needed) | set(self._previous)  # a kill before the next checkpoint is down needs those
        for old in set(self.segments) - keep:
            shutil.rmtree(self._path(old), ignore_errors=True)
        self.segments, self._previous = sorted(keep), needed
        return [list(s) for s in needed]

    def restore(self, buffer: ReplayBuffer) -> ReplayBuffer:
        """Fill an empty `buffer` from the segments, each transition in the slot it had. What a
        killed run wrote after its checkpoint goes."""
        listed = {self._path(s).name for s in self.segments}
        for stray in self.dir.glob("*.zarr*"):
            if stray.name not in listed:
                shutil.rmtree(stray, ignore_errors=True)
        for start, end in self.segments:
            try:
                part = ReplayBuffer.load(self._path((start, end)))
            except DatasetError as exc:
                raise DatasetError(f"the checkpoint's replay buffer is incomplete: {exc}") from None
            if part.size != end - start or part.schema != buffer.schema:
                raise DatasetError(f"{self._path((start, end))} does not hold what the checkpoint says")
            buffer.pointer, buffer.total = start % buffer.capacity, start
            buffer.add_batch(part.contents())
        return buffer


def sample_mixed(
    online: ReplayBuffer, prior: ReplayBuffer, batch_size: int, rng: np.random.Generator
) -> dict:
    """RLPD's symmetric sampling: half the batch from the online buffer, half from the demo +
    intervention buffer (all from one of them while the other is empty)."""
    if len(prior) == 0:
        return online.sample(batch_size, rng)
    if len(online) == 0:
        return prior.sample(batch_size, rng)
    half = batch_size // 2
    a, b = online.sample(batch_size - half, rng), prior.sample(half, rng)
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def transitions_from_store(path, schema: Schema, end_at_success: bool = False) -> dict[str, np.ndarray]:
    """Every transition of an EpisodeStore's episodes (demonstrations), with next observations
    taken from the following step. An episode's last step bootstraps from nothing when it
    terminated (mask 0; its own observation stands in as next); after a time limit it has no
    next observation, so it is left out. With `end_at_success` (a sparse success reward) each
    episode ends, terminated, at its first rewarded step, as a learner's episodes do: demos
    recorded on past the success (to show a success classifier many success frames) give the
    same transitions as demos that stopped there."""
    from robot_rl.datasets.store import EpisodeStore

    obs_keys = [k[len("obs/") :] for k in schema if k.startswith("obs/")]
    with EpisodeStore.open(path) as store:
        needed = [f"obs/{k}" for k in obs_keys] + ["action", "reward", "terminated"]
        absent = [k for k in needed if k not in store.keys]
        if absent:
            raise DatasetError(f"{path} lacks {', '.join(absent)}, which the learner's observations need")
        parts = []
        for e in range(store.n_episodes):
            ep = store.episode(e, needed + (["intervened"] if "intervened" in store.keys else []))
            rewarded = np.flatnonzero(ep["reward"] > 0)
            if end_at_success and len(rewarded):
                ep = {k: v[: rewarded[0] + 1] for k, v in ep.items()}
                ep["terminated"] = ep["terminated"].copy()
                ep["terminated"][-1] = True
            n = len(ep["action"])
            terminated = bool(ep["terminated"][-1])
            keep = n if terminated else n - 1
            if keep <= 0:
                continue
            nxt = np.minimum(np.arange(n) + 1, n - 1)
            out = {}
            for k in obs_keys:
                out[f"obs/{k}"] = ep[f"obs/{k}"][:keep]
                out[f"next_obs/{k}"] = ep[f"obs/{k}"][nxt][:keep]
            action = ep["action"].astype(np.float32)
            out["action"] = action[:keep]
            out["prev_action"] = np.concatenate([action[:1], action[:-1]])[:keep]
            out["reward"] = ep["reward"].astype(np.float32)[:keep]
            out["mask"] = 1.0 - ep["terminated"].astype(np.float32)[:keep]
            out["intervened"] = np.ones(keep, bool)  # a demonstration is the human's action throughout
            parts.append(out)
    if not parts:
        raise DatasetError(f"{path} holds no usable transitions")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class TransitionSink:
    """A ControlLoop recorder that turns each tick into a transition for `on_transition` at once
    (an off-policy learner may update between ticks). Steps the safety layer held are left out:
    no policy action was executed. With `keep_prev` the previous action runs on across episodes
    (from zeros at the first), as it does for a robot that drives on between them (FastRLAP):
    the same previous action `AgentPolicy(keep_prev=True)` acted from."""

    wants_next_obs = True

    def __init__(self, on_transition: Callable[[dict[str, np.ndarray]], None], keep_prev: bool = False):
        self.on_transition, self.keep_prev = on_transition, keep_prev
        self._prev_action: np.ndarray | None = None

    def begin(self) -> None:
        if not self.keep_prev:
            self._prev_action = None

    def add(self, step: dict) -> None:
        if step["safety_hold"]:
            return
        action = np.asarray(step["action"], np.float32)
        if self._prev_action is None:
            self._prev_action = np.zeros_like(action) if self.keep_prev else action
        # Copies: a device may hand out the same frame buffer again, and batches wait before they are sent.
        transition = {k: np.array(v) for k, v in step.items() if k.startswith(("obs/", "next_obs/"))}
        transition.update(
            {
                "action": action,
                "prev_action": self._prev_action,
                "reward": np.float32(step["reward"]),
                "mask": np.float32(not step["terminated"]),
                "intervened": bool(step["intervened"]),
            }
        )
        self._prev_action = action
        self.on_transition(transition)

    # Transitions went out as they happened: a re-recorded episode is still real experience.
    def commit(self) -> None:
        pass

    def discard(self) -> None:
        pass
