"""EpisodeStore: episodes of robot data in one zarr v3 store (layout of diffusion_policy's ReplayBuffer).

    <name>.zarr/
      data/<key>           arrays concatenated over time (obs/state, obs/image/<cam>, action, ...)
      meta/episode_ends    int64, cumulative: episode i is data[ends[i-1]:ends[i]]
      meta (attributes)    schema, fps, provenance (robot, task, source), per-key statistics

Crash safety: an episode's data is written first and `meta/episode_ends` is extended last, so a
process killed mid-episode leaves every earlier episode intact and the partial one invisible;
the next append overwrites the leftovers. zarr's LocalStore writes each file atomically (temp
file, then rename), and the new `episode_ends` entry is written before the metadata that makes it
visible, so no intermediate state on disk is ever half-valid.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import os
import threading
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.array import Array, AsyncArray

from robot_rl.errors import DatasetError, SchemaMismatchError

FORMAT = "robot_rl.episode_store/1"
IMAGE_CHUNK_STEPS = 32  # ~680 KB of 84x84x3 per chunk: a 16-step window decodes at most 2 chunks
MIN_CHUNK_STEPS = 1024
MAX_CHUNK_STEPS = 16384
CHUNK_TARGET_BYTES = 1 << 18  # small keys: each append re-encodes the chunk it ends in


# Images: Blosc zstd level 5 without shuffle (byte shuffle is a no-op on uint8; bitshuffle
# compresses rendered frames worse). Kept as one dict so zarr's codec and the fast chunk writer
# below encode identically.
IMAGE_BLOSC = {"cname": "zstd", "clevel": 5, "shuffle": "noshuffle"}


def image_codec() -> BloscCodec:
    return BloscCodec(**IMAGE_BLOSC)


def array_blosc(typesize: int) -> dict:
    return {"cname": "zstd", "clevel": 3, "shuffle": "shuffle", "typesize": typesize}


def _encoder(spec: dict):
    """A numcodecs Blosc that writes exactly what the key's zarr BloscCodec would."""
    import numcodecs

    shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
    config = IMAGE_BLOSC if is_image_key(shape, dtype) else array_blosc(dtype.itemsize)
    shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE}[config["shuffle"]]
    return numcodecs.Blosc(cname=config["cname"], clevel=config["clevel"], shuffle=shuffle)


_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="robot_rl-store")
    return _POOL


def array_codec(typesize: int) -> BloscCodec:
    return BloscCodec(**array_blosc(typesize))


def _chunk_steps(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Steps per chunk of a non-image key: about CHUNK_TARGET_BYTES, within the bounds."""
    step_bytes = max(1, int(np.prod(shape, dtype=int)) * np.dtype(dtype).itemsize)
    return int(np.clip(CHUNK_TARGET_BYTES // step_bytes, MIN_CHUNK_STEPS, MAX_CHUNK_STEPS))


def is_image_key(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return np.dtype(dtype) == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3, 4)


def _normalize_schema(schema: dict) -> dict[str, dict]:
    out = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            shape, dtype = spec["shape"], spec["dtype"]
        elif hasattr(spec, "shape") and hasattr(spec, "dtype"):
            shape, dtype = spec.shape, spec.dtype
        else:
            shape, dtype = spec
        out[key] = {"shape": [int(s) for s in shape], "dtype": np.dtype(dtype).name}
    return out


class EpisodeStore:
    """Create with `EpisodeStore.create(path, schema, fps=...)`, open with `EpisodeStore.open(path)`."""

    def __init__(self, path: Path, root: zarr.Group, mode: str):
        self.path, self._root, self.mode = path, root, mode
        meta = root["meta"]
        self._meta_group = meta
        self.attrs: dict = dict(meta.attrs)
        if self.attrs.get("format") != FORMAT:
            raise DatasetError(f"{path} is a zarr store but not a robot_rl episode store")
        self.schema: dict[str, dict] = self.attrs["schema"]
        self._arrays = {k: root[f"data/{k}"] for k in self.schema}
        self._ends_array = meta["episode_ends"]
        self._ends = self._valid_ends(np.asarray(self._ends_array[:], dtype=np.int64))
        self._lock_fd: int | None = None
        self._tails: dict[str, tuple[int, np.ndarray]] = {}  # last partial chunk of each key

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path, schema: dict, *, fps: float, attrs: dict | None = None, overwrite: bool = False) -> EpisodeStore:
        """Create an empty store. `schema` maps key -> (per-step shape, dtype) or an ArraySpec."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise DatasetError(f"{path} already exists (pass overwrite=True to replace it)")
        schema = _normalize_schema(schema)
        if not schema:
            raise DatasetError("a store needs at least one data key")
        root = zarr.open_group(str(path), mode="w")
        for key, spec in schema.items():
            shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
            if is_image_key(shape, dtype):
                chunk_steps, codec = IMAGE_CHUNK_STEPS, image_codec()
            else:
                chunk_steps, codec = _chunk_steps(shape, dtype), array_codec(dtype.itemsize)
            root.create_array(
                f"data/{key}", shape=(0, *shape), chunks=(chunk_steps, *shape), dtype=dtype,
                compressors=codec, fill_value=0,
            )
        meta = root.require_group("meta")
        meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64", fill_value=0)
        meta.attrs.update({
            "format": FORMAT,
            "schema": schema,
            "fps": float(fps),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(attrs or {}),
        })
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path, mode: str = "r") -> EpisodeStore:
        """Open an existing store, read-only ("r") or for appending ("a")."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.exists():
            raise DatasetError(f"no episode store at {path}")
        if not (path / "meta" / "episode_ends").exists():
            raise DatasetError(f"{path} is not an episode store (no meta/episode_ends)")
        lock_fd = cls._lock(path) if mode == "a" else None
        try:
            root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
            store = cls(path, root, mode)
        except DatasetError:
            raise
        except Exception as exc:  # zarr raises many kinds for a damaged store
            raise DatasetError(f"cannot read episode store {path}: {exc}") from exc
        store._lock_fd = lock_fd
        if mode == "a":
            for leftover in path.rglob("*.partial"):  # temp files of a write that was killed
                leftover.unlink(missing_ok=True)
        return store

    @classmethod
    def open_or_create(cls, path, schema: dict, *, fps: float, attrs: dict | None = None) -> EpisodeStore:
        """Open `path` for appending if it exists (its schema must match), else create it."""
        if Path(path).exists():
            store = cls.open(path, mode="a")
            store.check_schema(_normalize_schema(schema), what="the new data")
            return store
        return cls.create(path, schema, fps=fps, attrs=attrs)

    @staticmethod
    def _lock(path: Path) -> int:
        fd = os.open(path / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatasetError(f"another process is writing to {path}") from None
        return fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _valid_ends(self, ends: np.ndarray) -> np.ndarray:
        """Committed episode ends: strictly increasing and backed by data in every array."""
        have = min((a.shape[0] for a in self._arrays.values()), default=0)
        ok = len(ends)
        for i, e in enumerate(ends):
            if e > have or (i > 0 and e <= ends[i - 1]) or e <= 0:
                ok = i
                break
        return ends[:ok]

    # --- shape of the data -----------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return list(self.schema)

    @property
    def fps(self) -> float:
        return float(self.attrs.get("fps", 0.0))

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    def image_keys(self) -> list[str]:
        return [k for k, s in self.schema.items() if is_image_key(tuple(s["shape"]), s["dtype"])]

    def array(self, key: str) -> zarr.Array:
        try:
            return self._arrays[key]
        except KeyError:
            raise DatasetError(f"{self.path} has no key {key!r} (keys: {', '.join(self.keys)})") from None

    def episode_bounds(self, index: int) -> tuple[int, int]:
        n = self.n_episodes
        if not -n <= index < n:
            raise DatasetError(f"episode {index} does not exist ({self.path} has {n} episodes)")
        index %= n
        start = int(self._ends[index - 1]) if index > 0 else 0
        return start, int(self._ends[index])

    def episode(self, index: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        start, stop = self.episode_bounds(index)
        return {k: self.array(k)[start:stop] for k in (keys or self.keys)}

    # --- writing ---------------------------------------------------------------------------
    def check_schema(self, schema: dict[str, dict], what: str = "the episode") -> None:
        mine = self.schema
        missing, extra = sorted(set(mine) - set(schema)), sorted(set(schema) - set(mine))
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {', '.join(extra)}"] if extra else [])
            raise SchemaMismatchError(f"{what} does not match the schema of {self.path}: {'; '.join(parts)}")
        for key, spec in schema.items():
            if spec != mine[key]:
                raise SchemaMismatchError(
                    f"{what} does not match the schema of {self.path}: {key} is "
                    f"{tuple(spec['shape'])} {spec['dtype']}, the store has {tuple(mine[key]['shape'])} {mine[key]['dtype']}"
                )

    def append_episode(self, data: dict[str, np.ndarray]) -> int:
        """Append one episode (every key, same length). Returns its index once it is committed."""
        if self.mode != "a":
            raise DatasetError(f"{self.path} is open read-only")
        arrays = {k: np.asarray(v) for k, v in data.items()}
        lengths = {len(v) for v in arrays.values() if v.ndim > 0}
        if len(lengths) != 1 or any(v.ndim == 0 for v in arrays.values()):
            raise SchemaMismatchError("every key of an episode must have the same number of steps")
        (length,) = lengths
        if length == 0:
            raise SchemaMismatchError("an episode needs at least one step")
        self.check_schema({k: {"shape": list(v.shape[1:]), "dtype": v.dtype.name} for k, v in arrays.items()})
        for key, value in arrays.items():
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise SchemaMismatchError(f"{key} contains NaN or inf; refusing to store it")
        start = self.n_steps
        stop = start + length
        for key, value in arrays.items():
            array = self._arrays[key]
            # Resizing to `stop` also drops whatever a killed append left beyond `start`.
            array.resize((stop, *array.shape[1:]))
            self._write_steps(key, array, start, value)
        self._commit_end(stop)
        self._update_stats(arrays)
        return self.n_episodes - 1

    def _write_steps(self, key: str, array: zarr.Array, start: int, values: np.ndarray) -> None:
        """Write steps [start, start + len(values)) of one key as whole chunks.

        zarr's generic write path costs about twice the compression itself and re-reads the chunk
        an episode starts in. Here each touched chunk is encoded with the array's own Blosc codec
        settings (in parallel: Blosc releases the GIL) and written as a chunk file through a temp
        file and a rename, as zarr's LocalStore does. The chunk the episode starts in is completed
        from the previous episode's tail, kept in memory by this writer, or read back once after
        reopening. The last chunk is zero-padded to full size, as zarr stores edge chunks.
        """
        size = array.chunks[0]
        head = start // size * size
        tail = self._tails.get(key)
        if tail is None or tail[0] != head or len(tail[1]) != start - head:
            tail = (head, array[head:start])
        data = np.concatenate([tail[1], values]) if len(tail[1]) else values
        n_chunks = -(-len(data) // size)
        padded = np.zeros((n_chunks * size, *data.shape[1:]), data.dtype.newbyteorder("<"))
        padded[: len(data)] = data
        encoder = _encoder(self.schema[key])
        folder = self.path / "data" / key / "c"
        inner = "/".join("0" for _ in data.shape[1:])  # chunk key: c/<time index>/0/0...

        def write(i: int) -> None:
            target = folder / str(head // size + i) / inner if inner else folder / str(head // size + i)
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
            temp.write_bytes(encoder.encode(padded[i * size : (i + 1) * size]))
            os.replace(temp, target)

        list(_pool().map(write, range(n_chunks)))
        last = (n_chunks - 1) * size
        self._tails[key] = (head + last, data[last:].copy()) if len(data) % size else (head + len(data), data[:0])

    def _commit_end(self, end: int) -> None:
        ends = self._ends_array
        n = len(self._ends)
        # Write the new entry's chunk through a view that already has the longer shape, then the
        # metadata that makes it visible (each file write is atomic). Done in the other order, a
        # crash in between would expose an entry that reads as the fill value. (zarr 3.1 has no
        # public call for this; the private names are pinned with zarr==3.1.5.)
        inner = ends._async_array
        wider = Array(AsyncArray(dataclasses.replace(inner.metadata, shape=(n + 1,)), inner.store_path, inner._config))
        wider[n] = end
        ends.resize((n + 1,))
        self._ends = np.append(self._ends, np.int64(end))

    def add_key(self, key: str, values: np.ndarray, attrs: dict | None = None) -> None:
        """Add a per-step key to every committed step (a relabeled reward), with `attrs` (its
        provenance) on the new array. Existing keys are not touched; the new key must be new."""
        if self.mode != "a":
            raise DatasetError(f"{self.path} is open read-only")
        if key in self.schema:
            raise SchemaMismatchError(f"{self.path} already has {key!r}; choose another key")
        values = np.asarray(values)
        if values.ndim == 0 or len(values) != self.n_steps:
            raise SchemaMismatchError(f"{key} has {len(values) if values.ndim else 0} steps, the store {self.n_steps}")
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise SchemaMismatchError(f"{key} contains NaN or inf; refusing to store it")
        spec = {"shape": list(values.shape[1:]), "dtype": values.dtype.name}
        # overwrite: an array under this name that the schema does not list is what a killed
        # add_key left behind.
        array = self._root.create_array(f"data/{key}", shape=values.shape, dtype=values.dtype, fill_value=0,
                                        chunks=(_chunk_steps(values.shape[1:], values.dtype), *values.shape[1:]),
                                        compressors=array_codec(values.dtype.itemsize), overwrite=True)
        array[:] = values
        array.attrs.update(attrs or {})
        # The schema last: until it names the key, readers do not see the new array.
        self.schema = {**self.schema, key: spec}
        self._arrays[key] = array
        self.attrs["schema"] = self.schema
        self._meta_group.attrs["schema"] = self.schema
        stats = self._accumulate(dict(self.attrs.get("stats_accumulators", {})), [key], 0, self.n_steps)
        self.attrs["stats_accumulators"] = stats
        self._meta_group.attrs["stats_accumulators"] = stats

    def key_attrs(self, key: str) -> dict:
        """The attributes of one key's array (a relabeled reward's provenance)."""
        return dict(self.array(key).attrs)

    # --- statistics ------------------------------------------------------------------------
    def _update_stats(self, arrays: dict[str, np.ndarray]) -> None:
        stats = self.attrs.get("stats_accumulators", {})
        if stats.get("_n_steps", 0) != self.n_steps - len(next(iter(arrays.values()))):
            stats = self._accumulate({}, self._numeric_keys(), 0, self.n_steps)  # stale: rebuild
        else:
            for key in self._numeric_keys():
                stats[key] = self._merge(stats.get(key), arrays[key])
            stats["_n_steps"] = self.n_steps
        self.attrs["stats_accumulators"] = stats
        self._meta_group.attrs["stats_accumulators"] = stats

    def _numeric_keys(self) -> list[str]:
        images = set(self.image_keys())
        return [k for k in self.keys if k not in images]

    @staticmethod
    def _merge(acc: dict | None, values: np.ndarray) -> dict:
        v = values.reshape(len(values), -1).astype(np.float64)
        new = {"count": len(v), "sum": v.sum(0), "sumsq": (v * v).sum(0), "min": v.min(0), "max": v.max(0)}
        if acc:
            new = {
                "count": acc["count"] + new["count"],
                "sum": np.asarray(acc["sum"]) + new["sum"],
                "sumsq": np.asarray(acc["sumsq"]) + new["sumsq"],
                "min": np.minimum(acc["min"], new["min"]),
                "max": np.maximum(acc["max"], new["max"]),
            }
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in new.items()}

    def _accumulate(self, stats: dict, keys: list[str], start: int, stop: int) -> dict:
        for key in keys:
            values = self._arrays[key][start:stop]
            stats[key] = self._merge(None, values) if len(values) else None
        stats["_n_steps"] = stop
        return stats

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """Per-dimension min, max, mean and std of a non-image key over all committed steps."""
        if key in self.image_keys():
            raise DatasetError(f"{key} is an image key; images are normalized by 255, not by statistics")
        self.array(key)
        acc = self.attrs.get("stats_accumulators", {})
        if acc.get("_n_steps") != self.n_steps:  # a crash between commit and stats update
            acc = self._accumulate({}, [key], 0, self.n_steps)
        entry = acc.get(key)
        if not entry:
            raise DatasetError(f"{self.path} has no steps to compute statistics from")
        shape = tuple(self.schema[key]["shape"])
        count = entry["count"]
        mean = np.asarray(entry["sum"]) / count
        var = np.maximum(np.asarray(entry["sumsq"]) / count - mean**2, 0.0)
        return {
            "min": np.asarray(entry["min"]).reshape(shape),
            "max": np.asarray(entry["max"]).reshape(shape),
            "mean": mean.reshape(shape),
            "std": np.sqrt(var).reshape(shape),
        }

    # --- summary ---------------------------------------------------------------------------
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def info(self) -> dict:
        lengths = self.episode_lengths
        provenance = {k: v for k, v in self.attrs.items() if k not in ("format", "schema", "stats_accumulators")}
        return {
            "path": str(self.path),
            "episodes": self.n_episodes,
            "steps": self.n_steps,
            "episode_length": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "mean": float(lengths.mean()) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
            "keys": {k: {"shape": s["shape"], "dtype": s["dtype"]} for k, s in self.schema.items()},
            "size_bytes": self.size_bytes(),
            **provenance,
        }


def read_steps(path, keys: list[str], stats_key: str | None = "obs/state") -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Every committed step of `keys` in memory, the episode ends, and `stats_key`'s statistics
    ({} for None): what an offline learner reads. A missing key or an empty store is a DatasetError."""
    with EpisodeStore.open(path) as store:
        absent = [k for k in keys if k not in store.keys]
        if absent:
            raise DatasetError(f"{path} has no {', '.join(absent)} (keys: {', '.join(store.keys)})")
        if store.n_episodes == 0:
            raise DatasetError(f"{path} holds no episodes")
        data = {k: np.asarray(store.array(k)[: store.n_steps]) for k in keys}
        return data, store.episode_ends.copy(), store.stats(stats_key) if stats_key else {}
