"""EpisodeStore: episodes of robot data in one zarr v3 store (layout of diffusion_policy's ReplayBuffer).

    <name>.zarr/
      data/<key>           arrays concatenated over time (obs/state, obs/image/<cam>, action, ...)
      meta/episode_ends    int64, cumulative: episode i is data[ends[i-1]:ends[i]]
      meta (attributes)    schema, fps, provenance (robot, task, source), per-key statistics

Crash safety: an episode's data is written first and `meta/episode_ends` is extended last, so a
process killed mid-episode leaves every earlier episode intact and the partial one invisible;
the next append overwrites the leftovers. zarr's LocalStore writes each file atomically (temp
file, then rename), and the new `episode_ends` entry is written before the metadata that makes it
visible, so no intermediate state on disk is ever half-valid. A new store is built in a hidden
folder beside its path and renamed into place, so a kill during creation leaves nothing at the path.

Integrity: every chunk ends in a CRC-32C checksum (zarr's `crc32c` codec). Opening a store checks
its metadata (schema and arrays agree; episode ends strictly increasing and within every key's
length) and that every chunk of the committed steps is on disk; a read that meets a corrupt chunk
raises DatasetError naming the store, key and steps. `verify()` (robot-rl dataset verify) reads
every chunk.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import functools
import os
import shutil
import struct
import threading
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.array import Array, AsyncArray

from robot_rl.datasets import video_frames
from robot_rl.errors import DatasetError, SchemaMismatchError

FORMAT = "robot_rl.episode_store/1"
IMAGE_CHUNK_STEPS = 32  # ~680 KB of 84x84x3 per chunk: a 16-step window decodes at most 2 chunks
MIN_CHUNK_STEPS = 256
MAX_CHUNK_STEPS = 16384
# Small keys: ~16 KB chunks (455 steps of a 9-float state). A window then decodes a few KB, not the
# 262 KB of a 256 KB chunk, which is what reading from disk costs once a dataset outgrows the
# sampler's cache; and each append re-encodes only the small chunk it ends in.
CHUNK_TARGET_BYTES = 1 << 14


# Images: Blosc zstd 5 with bit-shuffle, one 1 MB block per chunk. Measured on MuJoCo renders with
# a camera's sensor noise (std 4 grey levels; `robot-rl bench store`, results/benchmarks): 2.49x
# where zstd without shuffle gave 2.23x and diffusion_policy's zstd 5 + bit-shuffle 2.48x,
# appending 2.9-3.7x as fast as zstd without shuffle in two runs (bit-shuffle keeps the
# predictable high bit planes apart from the noisy low ones). On noise-free renders no shuffle
# compresses better (about 21x against 13x): a store of clean simulated frames may set its
# camera keys' codec to {cname: zstd, clevel: 5, shuffle: noshuffle}.
# One dict so that zarr's codec and the fast chunk writer below encode identically.
IMAGE_BLOSC = {"cname": "zstd", "clevel": 5, "shuffle": "bitshuffle", "blocksize": 1 << 20}
ARRAY_BLOSC = {"cname": "zstd", "clevel": 3, "shuffle": "shuffle", "blocksize": 0}
BLOSC_CNAMES = ("zstd", "lz4", "lz4hc", "blosclz", "zlib")
BLOSC_SHUFFLES = ("noshuffle", "shuffle", "bitshuffle")


def default_blosc(shape: tuple[int, ...], dtype) -> dict:
    return dict(IMAGE_BLOSC if is_image_key(shape, dtype) else ARRAY_BLOSC)


def blosc_spec(key: str, codec: dict) -> dict:
    """A schema's Blosc settings for `key`, checked: {cname, clevel, shuffle[, blocksize]}."""
    unknown = sorted(set(codec) - {"cname", "clevel", "shuffle", "blocksize"})
    spec = {**ARRAY_BLOSC, **codec}
    clevel, blocksize = spec["clevel"], spec["blocksize"]
    if (
        unknown
        or spec["cname"] not in BLOSC_CNAMES
        or spec["shuffle"] not in BLOSC_SHUFFLES
        or not isinstance(clevel, int)
        or isinstance(clevel, bool)
        or not 0 <= clevel <= 9
        or not isinstance(blocksize, int)
        or isinstance(blocksize, bool)
        or blocksize < 0
    ):
        raise DatasetError(
            f"{key}: codec {codec!r} is not a Blosc codec: cname one of {', '.join(BLOSC_CNAMES)}, "
            f"clevel 0-9, shuffle one of {', '.join(BLOSC_SHUFFLES)}, blocksize >= 0 bytes"
        )
    return spec


def blosc_codec(config: dict, typesize: int) -> BloscCodec:
    return BloscCodec(**config, typesize=typesize)


def array_codec(typesize: int) -> BloscCodec:
    """The codec of the store's bookkeeping arrays (episode ends, indexes) and of added keys."""
    return blosc_codec(ARRAY_BLOSC, typesize)


def _encoder(array: zarr.Array):
    """A numcodecs Blosc that writes exactly what the array's zarr BloscCodec would."""
    import numcodecs

    codec = next(c for c in array.metadata.codecs if isinstance(c, BloscCodec))
    shuffle = {
        "noshuffle": numcodecs.Blosc.NOSHUFFLE,
        "shuffle": numcodecs.Blosc.SHUFFLE,
        "bitshuffle": numcodecs.Blosc.BITSHUFFLE,
    }[codec.shuffle.value]
    return numcodecs.Blosc(
        cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle, blocksize=codec.blocksize
    )


_POOL = None


def thread_pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="robot_rl-store")
    return _POOL


def _chunk_steps(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Steps per chunk of a non-image key: about CHUNK_TARGET_BYTES, within the bounds."""
    step_bytes = max(1, int(np.prod(shape, dtype=int)) * np.dtype(dtype).itemsize)
    return int(np.clip(CHUNK_TARGET_BYTES // step_bytes, MIN_CHUNK_STEPS, MAX_CHUNK_STEPS))


def is_image_key(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return np.dtype(dtype) == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3, 4)


def _normalize_schema(schema: dict) -> dict[str, dict]:
    """key -> {shape, dtype} and, where given, its codec: "video" for a camera key kept as video,
    or Blosc settings ({cname, clevel, shuffle[, blocksize]}) in place of the default."""
    out = {}
    for key, spec in schema.items():
        codec = None
        if isinstance(spec, dict):
            shape, dtype, codec = spec["shape"], spec["dtype"], spec.get("codec")
        elif hasattr(spec, "shape") and hasattr(spec, "dtype"):
            shape, dtype = spec.shape, spec.dtype
        else:
            shape, dtype = spec
        out[key] = {"shape": [int(s) for s in shape], "dtype": np.dtype(dtype).name}
        if codec == "video":
            if not is_image_key(tuple(out[key]["shape"]), out[key]["dtype"]):
                raise DatasetError(f"{key}: codec 'video'; only camera keys (uint8 HxWx3) take codec video")
            out[key]["codec"] = "video"
        elif isinstance(codec, dict):
            out[key]["codec"] = blosc_spec(key, dict(codec))
        elif codec is not None:
            raise DatasetError(
                f"{key}: codec {codec!r}; give 'video' or Blosc settings {{cname, clevel, shuffle}}"
            )
    return out


def is_video(spec: dict) -> bool:
    return spec.get("codec") == "video"


def key_blosc(spec: dict) -> dict:
    """The Blosc settings a (non-video) key is stored with: its schema's, else the default."""
    codec = spec.get("codec")
    return codec if isinstance(codec, dict) else default_blosc(tuple(spec["shape"]), spec["dtype"])


CAMERA_CODECS = ("video", "blosc")


def with_camera_codec(schema: dict, codec: str) -> dict[str, dict]:
    """`schema` with its camera keys stored as `codec`: "video" (H.264, lossy, ~25x smaller on
    real camera frames) or "blosc" (lossless)."""
    from robot_rl.errors import ConfigError

    if codec not in CAMERA_CODECS:
        raise ConfigError(f"camera_codec must be video or blosc, got {codec!r}")
    schema = _normalize_schema(schema)
    for spec in schema.values():
        if codec == "video" and is_image_key(tuple(spec["shape"]), spec["dtype"]):
            spec["codec"] = "video"
    return schema


class EpisodeStore:
    """Create with `EpisodeStore.create(path, schema, fps=...)`, open with `EpisodeStore.open(path)`."""

    def __init__(self, path: Path, root: zarr.Group, mode: str, check_chunks: bool = True):
        self.path, self._root, self.mode = path, root, mode
        meta = root["meta"]
        self._meta_group = meta
        self.attrs: dict = dict(meta.attrs)
        if self.attrs.get("format") != FORMAT:
            raise DatasetError(f"{path} is a zarr store but not a robot_rl episode store")
        self.schema: dict[str, dict] = self._read_schema()
        # episode_ends before the arrays' shapes: a writer grows the arrays before it commits an
        # end, so ends read first never reach beyond shapes read after, whatever it is doing.
        self._ends_array = meta["episode_ends"]
        ends = self._read_ends_values()
        self._arrays = {k: self._data_array(k) for k in self.schema}
        self._ends = self._check_ends(ends)
        if check_chunks:
            for key, (first, last) in self.missing_chunks().items():
                raise DatasetError(
                    f"{path}: {key} steps {first}-{last} are missing on disk "
                    f"(robot-rl dataset verify {path} lists the damage)"
                )
        self._lock_fd: int | None = None
        self._tails: dict[str, tuple[int, np.ndarray]] = {}  # last partial chunk of each key

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path,
        schema: dict,
        *,
        fps: float,
        attrs: dict | None = None,
        overwrite: bool = False,
        checksums: bool = True,
    ) -> EpisodeStore:
        """Create an empty store. `schema` maps key -> (per-step shape, dtype) or an ArraySpec.

        The store is built in a hidden folder beside `path` and renamed into place: a process
        killed meanwhile leaves nothing at `path` (the next create removes its leftover)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise DatasetError(f"{path} already exists (pass overwrite=True to replace it)")
        schema = _normalize_schema(schema)
        if not schema:
            raise DatasetError("a store needs at least one data key")
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_leftovers(path)
        building = path.with_name(f".{path.name}.creating-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        root = zarr.open_group(str(building), mode="w")
        for key, spec in schema.items():
            shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
            if is_video(spec):  # the frames go to video files; meta/video/<key> indexes them
                index = root.create_array(
                    f"meta/video/{key}",
                    shape=(0, len(video_frames.INDEX_COLUMNS)),
                    chunks=(4096, len(video_frames.INDEX_COLUMNS)),
                    dtype="int64",
                    fill_value=0,
                    compressors=(array_codec(8), Crc32cCodec()) if checksums else array_codec(8),
                )
                index.attrs.update(
                    {"columns": list(video_frames.INDEX_COLUMNS), **video_frames.encoder_settings(shape)}
                )
                continue
            chunk_steps = IMAGE_CHUNK_STEPS if is_image_key(shape, dtype) else _chunk_steps(shape, dtype)
            codec = blosc_codec(key_blosc(spec), dtype.itemsize)
            root.create_array(
                f"data/{key}",
                shape=(0, *shape),
                chunks=(chunk_steps, *shape),
                dtype=dtype,
                compressors=(codec, Crc32cCodec()) if checksums else codec,
                fill_value=0,
            )
        meta = root.require_group("meta")
        meta.create_array(
            "episode_ends",
            shape=(0,),
            chunks=(4096,),
            dtype="int64",
            fill_value=0,
            compressors=(array_codec(8), Crc32cCodec()) if checksums else array_codec(8),
        )
        meta.attrs.update(
            {
                "format": FORMAT,
                "schema": schema,
                "fps": float(fps),
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                **(attrs or {}),
            }
        )
        if overwrite and path.exists():  # the old store goes aside, then away, under its writer lock
            lock_fd = cls._lock(path) if (path / "meta").exists() else None
            old = path.with_name(f".{path.name}.replaced-{os.getpid()}")
            os.rename(path, old)
            os.rename(building, path)
            if lock_fd is not None:
                os.close(lock_fd)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:  # fails if another process created `path` meanwhile (a non-empty folder)
                os.rename(building, path)
            except OSError:
                shutil.rmtree(building, ignore_errors=True)
                raise DatasetError(f"{path} already exists (created by another process meanwhile)") from None
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path, mode: str = "r", *, check_chunks: bool = True) -> EpisodeStore:
        """Open an existing store, read-only ("r") or for appending ("a"). The metadata is checked
        and, unless `check_chunks` is false, that every chunk of the committed steps exists."""
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
            store = cls(path, root, mode, check_chunks)
        except Exception as exc:  # zarr raises many kinds for a damaged store
            if lock_fd is not None:
                os.close(lock_fd)
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"cannot read episode store {path}: {_first_line(exc)}") from exc
        store._lock_fd = lock_fd
        if mode == "a":
            try:
                for leftover in path.rglob("*.partial"):  # temp files of a write that was killed
                    leftover.unlink(missing_ok=True)
            except OSError as exc:
                store.close()
                raise DatasetError(f"cannot clean up {path} for writing: {exc}") from None
        return store

    @classmethod
    def open_or_create(cls, path, schema: dict, *, fps: float, attrs: dict | None = None) -> EpisodeStore:
        """Open `path` for appending if it exists (its schema must match), else create it."""
        if Path(path).exists():
            store = cls.open(path, mode="a")
            try:
                store.check_schema(_normalize_schema(schema), what="the new data")
            except Exception:
                store.close()
                raise
            return store
        return cls.create(path, schema, fps=fps, attrs=attrs)

    @staticmethod
    def _lock(path: Path) -> int:
        try:
            fd = os.open(path / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DatasetError(f"cannot open {path} for writing: {exc.strerror}") from None
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

    # --- integrity -------------------------------------------------------------------------
    def _read_schema(self) -> dict[str, dict]:
        schema = self.attrs.get("schema")
        ok = (
            isinstance(schema, dict)
            and schema
            and all(
                isinstance(s, dict) and isinstance(s.get("shape"), list) and isinstance(s.get("dtype"), str)
                for s in schema.values()
            )
        )
        if not ok:
            raise DatasetError(f"{self.path}: the schema in meta is missing or malformed")
        return schema

    def _data_array(self, key: str) -> zarr.Array | video_frames.VideoArray:
        spec = self.schema[key]
        if is_video(spec):
            try:
                index = self._root[f"meta/video/{key}"]
            except KeyError:
                raise DatasetError(
                    f"{self.path}: the schema lists {key} as video but meta/video/{key} is missing"
                ) from None
            return video_frames.VideoArray(
                self.path, key, spec, index, functools.partial(getattr, self, "_ends")
            )
        try:
            array = self._root[f"data/{key}"]
        except KeyError:
            raise DatasetError(f"{self.path}: the schema lists {key} but data/{key} is missing") from None
        if (
            not isinstance(array, zarr.Array)
            or list(array.shape[1:]) != spec["shape"]
            or array.dtype.name != spec["dtype"]
        ):
            raise DatasetError(
                f"{self.path}: data/{key} does not match its schema entry "
                f"({tuple(spec['shape'])} {spec['dtype']})"
            )
        return array

    def _read_ends_values(self) -> np.ndarray:
        """The committed episode ends, read from chunks that are all on disk (a missing one would
        read as zeros)."""
        ends_array = self._ends_array
        if ends_array.ndim != 1 or ends_array.dtype != np.int64:
            raise DatasetError(f"{self.path}: meta/episode_ends is not a 1-D int64 array")
        if self._absent_chunks(ends_array, ends_array.shape[0]):
            raise DatasetError(
                f"{self.path}: meta/episode_ends is missing on disk; the episodes cannot be "
                "located (nothing is written to a store in this state)"
            )
        return np.asarray(_read(self.path, "meta/episode_ends", ends_array, slice(None)), dtype=np.int64)

    def _check_ends(self, ends: np.ndarray) -> np.ndarray:
        """Episode ends strictly increasing, positive and backed by data in every key."""
        where = f"{self.path}: meta/episode_ends"
        if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            bad = int(np.argmax(np.diff(ends, prepend=0) <= 0))
            raise DatasetError(f"{where} is not strictly increasing (entry {bad}: {ends[bad]})")
        have = min(a.shape[0] for a in self._arrays.values())
        if len(ends) and ends[-1] > have:
            short = min(self._arrays, key=lambda k: self._arrays[k].shape[0])
            raise DatasetError(f"{where} reaches step {ends[-1]} but {short} holds {have} steps")
        return ends

    @staticmethod
    def _absent_chunks(array: zarr.Array, stop: int) -> list[int]:
        """Time indices of the chunks covering [0, stop) whose file is not on disk."""
        return [t for t in range(-(-stop // array.chunks[0])) if not chunk_file(array, t).exists()]

    @property
    def checksums(self) -> bool:
        """Whether every array's chunks carry a CRC-32C (stores created before checksums do not)."""
        return all(has_checksums(a) for a in self._arrays.values())

    def missing_chunks(self) -> dict[str, tuple[int, int]]:
        """key -> (first, last) step of its first chunk that is missing within the committed steps.
        Only arrays with checksums are checked: they are written whole, all-zero chunks included,
        while older stores' zarr writes skipped all-zero chunks, which then read as zeros rightly."""
        out = {}
        for key, array in self._arrays.items():
            if isinstance(array, video_frames.VideoArray):
                missing = self._missing_videos(array)
                if missing:
                    out[key] = self.episode_bounds(missing[0])[0], self.episode_bounds(missing[0])[1] - 1
                continue
            if not has_checksums(array):
                continue
            absent = self._absent_chunks(array, self.n_steps)
            if absent:
                size = array.chunks[0]
                out[key] = (absent[0] * size, min((absent[0] + 1) * size, self.n_steps) - 1)
        return out

    def _missing_videos(self, array: video_frames.VideoArray) -> list[int]:
        """Committed episodes whose video or index entry is not on disk."""
        if self._absent_chunks(array.index, self.n_episodes):
            return list(range(self.n_episodes))
        return [e for e in range(self.n_episodes) if not video_frames.episode_file(array.folder, e).exists()]

    def verify(self, progress: bool = False) -> list[dict]:
        """Read every chunk of the committed steps: a list of damaged ones, each {key, first, last,
        episodes, problem} (steps inclusive, episode indices it touches); [] when the store is whole."""
        from tqdm import tqdm

        damage = []
        todo = [
            (key, array, t)
            for key, array in self._arrays.items()
            for t in range(
                self.n_episodes
                if isinstance(array, video_frames.VideoArray)
                else -(-self.n_steps // array.chunks[0])
            )
        ]
        for key, array, t in tqdm(todo, desc="verify", unit="chunk", disable=not progress):
            if isinstance(array, video_frames.VideoArray):  # t: an episode
                first, stop = self.episode_bounds(t)
                try:
                    array.check(t)
                    continue
                except DatasetError as exc:
                    problem = str(exc).split(f"episode {t} ", 1)[-1].split(";")[0]
                damage.append(
                    {"key": key, "first": first, "last": stop - 1, "problem": problem, "episodes": [t]}
                )
                continue
            size = array.chunks[0]
            first, last = t * size, min((t + 1) * size, self.n_steps) - 1
            if has_checksums(array) and not chunk_file(array, t).exists():
                problem = "missing"
            else:
                try:
                    array[first : last + 1]
                    continue
                except Exception as exc:  # a decode failure of any kind is damage to report
                    problem = f"corrupt ({_first_line(exc)})"
            damage.append(
                {
                    "key": key,
                    "first": first,
                    "last": last,
                    "problem": problem,
                    "episodes": self.episodes_between(first, last),
                }
            )
        return damage

    def episodes_between(self, first: int, last: int) -> list[int]:
        """Indices of the episodes that hold any step in [first, last]."""
        lo = int(np.searchsorted(self._ends, first, side="right"))
        hi = int(np.searchsorted(self._ends, last, side="right"))
        return list(range(lo, min(hi, self.n_episodes - 1) + 1)) if lo < self.n_episodes else []

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

    def array(self, key: str) -> CheckedArray | video_frames.VideoArray:
        """One key's array, read like a zarr array; a corrupt chunk raises DatasetError."""
        try:
            array = self._arrays[key]
            if isinstance(array, video_frames.VideoArray):
                return array
            return CheckedArray(self.path, f"data/{key}", array)
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
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unexpected {', '.join(extra)}"] if extra else []
            )
            raise SchemaMismatchError(f"{what} does not match the schema of {self.path}: {'; '.join(parts)}")
        for key, spec in schema.items():
            if (spec["shape"], spec["dtype"]) != (mine[key]["shape"], mine[key]["dtype"]):
                raise SchemaMismatchError(
                    f"{what} does not match the schema of {self.path}: {key} is "
                    f"{tuple(spec['shape'])} {spec['dtype']}, "
                    f"the store has {tuple(mine[key]['shape'])} {mine[key]['dtype']}"
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
        videos = [k for k in arrays if isinstance(self._arrays[k], video_frames.VideoArray)]
        encoded = thread_pool().map(lambda k: self._encode(k, arrays[k]), videos)  # beside the other writes
        for key, value in arrays.items():
            if key in videos:
                continue
            array = self._arrays[key]
            # Resizing to `stop` also drops whatever a killed append left beyond `start`.
            array.resize((stop, *array.shape[1:]))
            self._write_steps(key, array, start, value)
        for key, data in zip(videos, encoded):  # before the commit, as every other key's data
            self._arrays[key].add_episode(self.n_episodes, data, length)
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
            tail = (head, _read(self.path, f"data/{key}", array, slice(head, start)))
        data = np.concatenate([tail[1], values]) if len(tail[1]) else values
        n_chunks = -(-len(data) // size)
        padded = np.zeros((n_chunks * size, *data.shape[1:]), data.dtype.newbyteorder("<"))
        padded[: len(data)] = data
        encoder = _encoder(array)
        checksum = has_checksums(array)
        folder = self.path / "data" / key / "c"
        inner = "/".join("0" for _ in data.shape[1:])  # chunk key: c/<time index>/0/0...

        def write(i: int) -> None:
            target = folder / str(head // size + i) / inner if inner else folder / str(head // size + i)
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
            payload = encoder.encode(padded[i * size : (i + 1) * size])
            if checksum:  # what zarr's crc32c codec appends: CRC-32C of the compressed bytes, little-endian
                payload = bytes(payload) + struct.pack("<I", google_crc32c.value(bytes(payload)))
            temp.write_bytes(payload)
            os.replace(temp, target)

        list(thread_pool().map(write, range(n_chunks)))
        last = (n_chunks - 1) * size
        self._tails[key] = (
            (head + last, data[last:].copy()) if len(data) % size else (head + len(data), data[:0])
        )

    def _encode(self, key: str, frames: np.ndarray) -> bytes:
        return video_frames.encode_frames(frames, dict(self._arrays[key].attrs))

    def _commit_end(self, end: int) -> None:
        ends = self._ends_array
        n = len(self._ends)
        # Write the new entry's chunk through a view that already has the longer shape, then the
        # metadata that makes it visible (each file write is atomic). Done in the other order, a
        # crash in between would expose an entry that reads as the fill value. (zarr 3.1 has no
        # public call for this; the private names are pinned with zarr==3.1.5.)
        inner = ends._async_array
        wider = Array(
            AsyncArray(dataclasses.replace(inner.metadata, shape=(n + 1,)), inner.store_path, inner._config)
        )
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
            raise SchemaMismatchError(
                f"{key} has {len(values) if values.ndim else 0} steps, the store {self.n_steps}"
            )
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise SchemaMismatchError(f"{key} contains NaN or inf; refusing to store it")
        spec = {"shape": list(values.shape[1:]), "dtype": values.dtype.name}
        # overwrite: an array under this name that the schema does not list is what a killed
        # add_key left behind.
        checksums = has_checksums(self._ends_array)
        codec = array_codec(values.dtype.itemsize)
        # write_empty_chunks: every chunk on disk, all-zero ones too, so a missing one is damage.
        array = self._root.create_array(
            f"data/{key}",
            shape=values.shape,
            dtype=values.dtype,
            fill_value=0,
            chunks=(_chunk_steps(values.shape[1:], values.dtype), *values.shape[1:]),
            compressors=(codec, Crc32cCodec()) if checksums else codec,
            overwrite=True,
            config={"write_empty_chunks": True},
        )
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
            values = self.array(key)[start:stop]
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
        provenance = {
            k: v for k, v in self.attrs.items() if k not in ("format", "schema", "stats_accumulators")
        }
        return {
            "path": str(self.path),
            "episodes": self.n_episodes,
            "steps": self.n_steps,
            "episode_length": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "mean": float(lengths.mean()) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
            "keys": {k: dict(s) for k, s in self.schema.items()},
            "size_bytes": self.size_bytes(),
            **provenance,
        }


class CheckedArray:
    """A zarr array of a store, read by slicing; a chunk that fails to decode (checksum mismatch,
    truncated, not Blosc) raises DatasetError naming the store, the key and the steps."""

    def __init__(self, store_path: Path, name: str, array: zarr.Array):
        self._store_path, self._name, self._array = store_path, name, array
        self._direct = _direct_decoding(array)

    def __getitem__(self, index):
        return _read(self._store_path, self._name, self._array, index)

    def chunk(self, lo: int, hi: int) -> np.ndarray:
        """Steps [lo, hi) of the stored chunk that starts at `lo`, decoded straight from its file:
        zarr 3's read path costs far more than the decode of a small chunk (~0.8 ms against
        ~30 us here). Thread-safe, and Blosc releases the GIL: chunks decode in parallel. A chunk
        that is not on disk (zarr's fill value), fails its checksum or does not decode is read
        through zarr, which gives the same array or the same DatasetError as slicing."""
        if self._direct is not None:
            decoder, checksum, dtype = self._direct
            try:
                payload = chunk_file(self._array, lo // self._array.chunks[0]).read_bytes()
                if checksum:
                    payload, crc = payload[:-4], payload[-4:]
                    if google_crc32c.value(payload) != int.from_bytes(crc, "little"):
                        raise ValueError("checksum")
                chunk = np.frombuffer(decoder.decode(payload), dtype).reshape(self._array.chunks)
                return chunk[: hi - lo]
            except (OSError, ValueError, RuntimeError):
                pass
        return _read(self._store_path, self._name, self._array, slice(lo, hi))

    def __getattr__(self, name):  # shape, chunks, dtype, ndim, attrs... as zarr has them
        if name.startswith("_"):  # not yet set (unpickling): no recursion through _array
            raise AttributeError(name)
        return getattr(self._array, name)

    def __len__(self) -> int:
        return self._array.shape[0]


def _direct_decoding(array: zarr.Array):
    """(Blosc decoder, whether chunks end in a CRC-32C, dtype) where the array's codecs are the
    store's own (bytes -> Blosc [-> CRC-32C]), so a chunk file can be decoded without zarr."""
    import numcodecs
    from zarr.codecs import BytesCodec

    codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
    ok = (
        len(codecs) in (2, 3)
        and isinstance(codecs[0], BytesCodec)
        and getattr(codecs[0].endian, "value", "little") == "little"
        and isinstance(codecs[1], BloscCodec)
        and (len(codecs) == 2 or isinstance(codecs[2], Crc32cCodec))
    )
    if not ok:
        return None
    return numcodecs.Blosc(), len(codecs) == 3, array.dtype.newbyteorder("<")


def _read(store_path: Path, name: str, array: zarr.Array, index):
    try:
        return array[index]
    except Exception as exc:  # zarr and its codecs raise ValueError, RuntimeError, TypeError...
        size, length = array.chunks[0], array.shape[0]
        steps = index[0] if isinstance(index, tuple) else index
        if isinstance(steps, slice):
            first, stop = steps.indices(length)[:2]
        elif isinstance(steps, (int, np.integer)):
            first = int(steps) % length if length else 0
            stop = first + 1
        else:
            first, stop = 0, length
        for t in range(first // size, -(-stop // size)):  # name the chunk that fails
            lo, hi = t * size, min((t + 1) * size, length)
            try:
                array[lo:hi]
            except Exception:
                first, stop = lo, hi
                break
        raise DatasetError(
            f"{store_path}: {name} steps {first}-{stop - 1} are corrupt ({_first_line(exc)}); "
            f"robot-rl dataset verify {store_path} lists the damage"
        ) from exc


def has_checksums(array: zarr.Array) -> bool:
    return any(isinstance(c, Crc32cCodec) for c in array.metadata.codecs)


def chunk_file(array: zarr.Array, t: int) -> Path:
    """The file of the chunk that holds steps [t * chunk, (t + 1) * chunk) of a local array."""
    root = Path(str(array.store_path.store.root)) / array.store_path.path
    return root / array.metadata.encode_chunk_key((t, *(0,) * (array.ndim - 1)))


def remove_dead_leftovers(path: Path) -> None:
    """Folders that a create, import, export or repair killed before its rename left beside `path`
    (`.<name>.<what>-<pid>`, their process gone)."""
    for leftover in path.parent.glob(f".{path.name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if (
            kind.endswith((".creating", ".replaced", ".importing", ".exporting", ".repairing"))
            and pid.isdigit()
            and not _alive(int(pid))
        ):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:  # an exported file (robomimic's HDF5)
                leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        pass
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_steps(
    path, keys: list[str], stats_key: str | None = "obs/state"
) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
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
