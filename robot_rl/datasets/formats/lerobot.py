"""LeRobotDataset v3.0 (LeRobot's parquet + mp4 format) in and out of an EpisodeStore.

The layout, as LeRobot's own code writes and reads it (src/lerobot/datasets/utils.py, io_utils.py,
dataset_metadata.py, dataset_writer.py, dataset_reader.py, video_utils.py, compute_stats.py,
feature_utils.py, src/lerobot/configs/video.py, src/lerobot/scripts/convert_dataset_v21_to_v30.py):

    meta/info.json       codebase_version "v3.0", fps, features (dtype, shape, names; a video's
                         `info` with its codec), totals, splits, chunks_size, file-size limits and
                         the path templates below
    meta/stats.json      per feature: min, max, mean, std, count, q01 q10 q50 q90 q99 (a camera's
                         per channel, shape (3, 1, 1), in [0, 1])
    meta/tasks.parquet   task_index, indexed by the task text (a pandas index named "task")
    meta/episodes/chunk-000/file-000.parquet
                         a row per episode: episode_index, tasks, length, data/chunk_index,
                         data/file_index, dataset_from_index, dataset_to_index,
                         videos/<feature>/{chunk_index, file_index, from_timestamp, to_timestamp},
                         stats/<feature>/<stat>, meta/episodes/{chunk_index, file_index}
    data/chunk-XXX/file-YYY.parquet        many episodes a file, a row group each: the features,
                         then timestamp, frame_index, episode_index, index, task_index
    videos/<feature>/chunk-XXX/file-YYY.mp4  many episodes a file, one after the other: frame k
                         of an episode at from_timestamp + timestamp[k] (= k / fps)

A file is closed when the next episode would take it past its size limit (100 MB of parquet,
200 MB of video) and a chunk folder holds at most 1000 files, as LeRobot's writer does. Videos are
encoded with LeRobot's default settings: SVT-AV1, yuv420p, a keyframe every 2 frames, crf 30,
preset 12 (H.264 where PyAV's FFmpeg has no SVT-AV1), recorded in the feature's `info`. LeRobot
encodes each episode alone and joins the files by stream copy; here a file's episodes are one
stream, with the same frames at the same timestamps. They are decoded frame-accurately, as
LeRobot's PyAV reader does: a seek to the keyframe at or before an episode's first timestamp,
then each frame matched to its timestamp within LeRobot's tolerance (1e-4 s).

Export: fps must be whole (LeRobot's is an int); a store key becomes a scalar (shape [1]) or
vector feature, a 3-channel camera a video; the store's `task` is every frame's task. Import:
one task per dataset (a store holds one); `video` and `image` features (not depth maps), scalar
and vector features; a shape-[1] feature becomes a per-step scalar.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from robot_rl.datasets.formats.names import template
from robot_rl.errors import ConfigError, DatasetError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
# LeRobot's DEFAULT_FEATURES: every frame's bookkeeping, not data to map.
BOOKKEEPING = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
TOLERANCE_S = 1e-4  # LeRobotDataset's default tolerance_s between a frame's timestamp and the query
# LeRobot's VideoEncoderConfig defaults (libsvtav1); h264 where PyAV's FFmpeg has no SVT-AV1.
SVTAV1 = {"vcodec": "libsvtav1", "pix_fmt": "yuv420p", "g": 2, "crf": 30, "preset": 12, "fast_decode": 0}
H264 = {"vcodec": "h264", "pix_fmt": "yuv420p", "g": 2, "crf": 30, "preset": None, "fast_decode": 0}


# Its cameras are video already: stored as video again (re-encoded), not as 25x larger Blosc frames.
CAMERA_CODEC = "video"


# --- the key mapping -----------------------------------------------------------------------------


class _Names:
    """Store keys <-> LeRobot feature names, `{camera}` standing for a camera name on both sides.
    Literal entries win over `{camera}` ones."""

    def __init__(self, keys: dict[str, str]):
        pairs = []
        for ours, theirs in keys.items():
            if ("{camera}" in ours) != ("{camera}" in theirs):
                raise ConfigError(f"lerobot key {ours}={theirs}: {{camera}} goes on both sides or on neither")
            if "/" in theirs:
                raise ConfigError(f"lerobot key {ours}={theirs}: LeRobot feature names hold no '/'")
            pairs.append((ours, theirs))
        self.pairs = sorted(pairs, key=lambda p: "{camera}" in p[0])

    @staticmethod
    def _camera(pattern: str, name: str) -> str | None:
        """The camera `name` stands for in `pattern` ("" for a literal one), None: not a match."""
        if "{camera}" not in pattern:
            return "" if pattern == name else None
        match = template(pattern, index=False).match(name)
        return match["camera"] if match else None

    def theirs(self, ours: str) -> str | None:
        for o, t in self.pairs:
            if (camera := self._camera(o, ours)) is not None:
                return t.replace("{camera}", camera)
        return None

    def ours(self, theirs: str) -> str | None:
        for o, t in self.pairs:
            if (camera := self._camera(t, theirs)) is not None:
                return o.replace("{camera}", camera)
        return None


# --- export --------------------------------------------------------------------------------------
def write(store, out, keys: dict[str, str], progress: bool = True) -> dict:
    """An EpisodeStore into a new LeRobotDataset v3.0 folder at `out`."""
    from tqdm import tqdm

    out = Path(out)
    fps = _integer_fps(store.fps, store.path)
    features, sources = _export_features(store, _Names(keys))
    if store.n_episodes == 0:
        raise DatasetError(f"{store.path} holds no episodes")
    task = str(store.attrs.get("task") or "")
    videos = [name for name, ft in features.items() if ft["dtype"] == "video"]
    encoder = _encoder() if videos else None
    out.mkdir(parents=True)
    data = _DataFiles(out, features)
    sinks = {name: _VideoFiles(out, name, fps, features[name]["shape"], encoder) for name in videos}
    rows, episode_stats, index = [], [], 0
    try:
        for e in tqdm(range(store.n_episodes), desc="export lerobot", unit="episode", disable=not progress):
            episode = store.episode(e, list(sources.values()))
            values = {name: np.asarray(episode[key]) for name, key in sources.items()}
            n = len(next(iter(values.values())))
            frame_index = np.arange(n, dtype=np.int64)
            values.update(
                timestamp=(frame_index / fps).astype(np.float32),
                frame_index=frame_index,
                episode_index=np.full(n, e, dtype=np.int64),
                index=np.arange(index, index + n, dtype=np.int64),
                task_index=np.zeros(n, dtype=np.int64),
            )
            chunk, file = data.write({name: v for name, v in values.items() if name not in sinks})
            row = {
                "episode_index": e,
                "tasks": [task],
                "length": n,
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": index,
                "dataset_to_index": index + n,
            }
            for name, sink in sinks.items():
                chunk, file, start = sink.write(values[name])
                row[f"videos/{name}/chunk_index"] = chunk
                row[f"videos/{name}/file_index"] = file
                row[f"videos/{name}/from_timestamp"] = start / fps
                row[f"videos/{name}/to_timestamp"] = (start + n) / fps
            stats = {name: _feature_stats(values[name], image=name in sinks) for name in features}
            for name, feature_stats in stats.items():
                for stat, value in feature_stats.items():
                    row[f"stats/{name}/{stat}"] = value.tolist()
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            rows.append(row)
            episode_stats.append(stats)
            index += n
    finally:
        data.close()
        for sink in sinks.values():
            sink.close()
    for name in videos:
        features[name]["info"] = _video_info(
            out / VIDEO_PATH.format(video_key=name, chunk_index=0, file_index=0)
        )
        features[name]["info"].update(_encoder_info(encoder))
    _write_table(out / EPISODES_PATH.format(chunk_index=0, file_index=0), rows)
    _write_tasks(out / TASKS_PATH, [task])
    stats = {name: _aggregate([s[name] for s in episode_stats]) for name in features}
    _write_json(
        out / "meta" / "stats.json", {n: {k: v.tolist() for k, v in s.items()} for n, s in stats.items()}
    )
    info = {
        "codebase_version": CODEBASE_VERSION,
        "fps": fps,
        "features": features,
        "total_episodes": store.n_episodes,
        "total_frames": index,
        "total_tasks": 1,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if videos else None,
        "robot_type": store.attrs.get("robot"),
        "splits": {"train": f"0:{store.n_episodes}"},
    }
    _write_json(out / "meta" / "info.json", info)
    return {
        "episodes": store.n_episodes,
        "frames": index,
        "fps": fps,
        "task": task,
        "features": dict(sources),
        **({"video_codec": encoder["vcodec"]} if encoder else {}),
    }


def _integer_fps(fps: float, where) -> int:
    if not fps > 0 or float(fps) != int(fps):
        raise DatasetError(f"{where}: LeRobotDataset v3.0 needs a whole frame rate, the store has {fps} fps")
    return int(fps)


def _export_features(store, names: _Names) -> tuple[dict[str, dict], dict[str, str]]:
    """LeRobot's features (then its bookkeeping) for the store's keys, and feature -> store key."""
    images = set(store.image_keys())
    features: dict[str, dict] = {}
    sources: dict[str, str] = {}
    unmapped = []
    for key in store.keys:
        name = names.theirs(key)
        if name is None:
            unmapped.append(key)
            continue
        if name in sources:
            raise ConfigError(f"{sources[name]} and {key} both map to the LeRobot feature {name}")
        if name in BOOKKEEPING:
            raise ConfigError(f"{key} maps to {name}, which LeRobot keeps for its own bookkeeping")
        shape, dtype = tuple(store.schema[key]["shape"]), store.schema[key]["dtype"]
        if key in images:
            if shape[-1] != 3:
                raise DatasetError(
                    f"{store.path}: {key} has {shape[-1]} channels; LeRobot's videos are RGB "
                    "(a 1-channel camera is a depth map there)"
                )
            features[name] = {
                "dtype": "video",
                "shape": list(shape),
                "names": ["height", "width", "channels"],
            }
        elif len(shape) <= 1:
            state_names = store.attrs.get("state_names") if key == "obs/state" else None
            if not (isinstance(state_names, list) and len(state_names) == (shape[0] if shape else 1)):
                state_names = None
            features[name] = {"dtype": dtype, "shape": list(shape) or [1], "names": state_names}
        else:
            raise DatasetError(
                f"{store.path}: {key} is {shape} per step; LeRobot features other than cameras "
                "are scalars or vectors"
            )
        sources[name] = key
    if unmapped:
        raise DatasetError(
            f"{store.path}: no LeRobot name for {', '.join(unmapped)} (give one with --key KEY=NAME; "
            "defaults: robot_rl/conf/formats/lerobot.yaml)"
        )
    for name, dtype in BOOKKEEPING.items():
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    return features, sources


def _arrow_type(feature: dict):
    import pyarrow as pa

    value = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    shape = tuple(feature["shape"])
    return value if shape == (1,) else pa.list_(value, shape[0])  # datasets' Value / fixed-length Sequence


def _arrow_column(values: np.ndarray, feature: dict):
    import pyarrow as pa

    kind = _arrow_type(feature)
    values = np.ascontiguousarray(values, dtype=np.dtype(feature["dtype"]))
    if tuple(feature["shape"]) == (1,):
        return pa.array(values.reshape(len(values)), type=kind)
    flat = pa.array(values.reshape(-1), type=kind.value_type)
    return pa.FixedSizeListArray.from_arrays(flat, kind.list_size)


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    """LeRobot's update_chunk_file_indices."""
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


class _DataFiles:
    """data/chunk-XXX/file-YYY.parquet, a row group per episode, the next file when this one would
    pass the size limit."""

    def __init__(self, root: Path, features: dict[str, dict]):
        import pyarrow as pa

        self.root = root
        self.columns = [n for n, ft in features.items() if ft["dtype"] != "video"]
        self.features = features
        self.schema = pa.schema([(n, _arrow_type(features[n])) for n in self.columns])
        self.chunk = self.file = self.rows = 0
        self.writer = self.path = None

    def write(self, values: dict[str, np.ndarray]) -> tuple[int, int]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays = [_arrow_column(values[n], self.features[n]) for n in self.columns]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if self.writer is not None:
            size = self.path.stat().st_size
            if size + size / self.rows * table.num_rows >= DATA_FILES_SIZE_IN_MB * 2**20:
                self.close()
                self.chunk, self.file = _next_file(self.chunk, self.file)
        if self.writer is None:
            self.path = self.root / DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="snappy", use_dictionary=True)
            self.rows = 0
        self.writer.write_table(table)
        self.rows += table.num_rows
        return self.chunk, self.file

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _encoder() -> dict:
    import av

    return dict(SVTAV1 if "libsvtav1" in av.codecs_available else H264)


def _codec_options(encoder: dict) -> dict[str, str]:
    """LeRobot's VideoEncoderConfig.get_codec_options."""
    options = {"g": str(encoder["g"]), "crf": str(encoder["crf"])}
    if encoder["preset"] is not None:
        options["preset"] = str(encoder["preset"])
    if encoder["vcodec"] == "libsvtav1":
        options["svtav1-params"] = f"fast-decode={encoder['fast_decode']}"
    return options


def _encoder_info(encoder: dict) -> dict:
    """The encoder's settings as LeRobot records them in a video feature's `info`."""
    return {
        "video.g": encoder["g"],
        "video.crf": encoder["crf"],
        "video.preset": encoder["preset"],
        "video.fast_decode": encoder["fast_decode"],
        "video.video_backend": "pyav",
        "video.extra_options": {},
        "is_depth_map": False,
    }


class _VideoFiles:
    """videos/<feature>/chunk-XXX/file-YYY.mp4 of one camera: episodes encoded one after the other
    in one stream (frame k of the file at k / fps), the next file when this one would pass the
    size limit (its size: the bytes muxed so far, and as much again a frame for the frames still
    inside the encoder and the next episode's)."""

    def __init__(self, root: Path, name: str, fps: int, shape: list[int], encoder: dict):
        self.root, self.name, self.fps, self.encoder = root, name, fps, encoder
        self.height, self.width = shape[0], shape[1]
        self.chunk = self.file = self.frames = self.packets = self.bytes = 0
        self.container = self.stream = self.path = None

    def write(self, frames: np.ndarray) -> tuple[int, int, int]:
        """Append an episode's frames; (chunk, file, the file's frame it starts at)."""
        import av

        if self.container is not None:
            per_frame = self.bytes / self.packets if self.packets else 0.0
            if (
                self.bytes + per_frame * (self.frames - self.packets + len(frames))
                >= VIDEO_FILES_SIZE_IN_MB * 2**20
            ):
                self.close()
                self.chunk, self.file = _next_file(self.chunk, self.file)
        if self.container is None:
            self._open()
        start = self.frames
        try:
            for frame in frames:
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                picture.pts, picture.time_base = self.frames, Fraction(1, self.fps)
                self._mux(self.stream.encode(picture))
                self.frames += 1
        except av.FFmpegError as exc:
            raise DatasetError(f"cannot encode {self.name} with {self.encoder['vcodec']}: {exc}") from None
        return self.chunk, self.file, start

    def _mux(self, packets) -> None:
        for packet in packets:
            self.packets, self.bytes = self.packets + 1, self.bytes + packet.size
            self.container.mux(packet)

    def _open(self) -> None:
        import av

        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration at every open otherwise
        self.path = self.root / VIDEO_PATH.format(
            video_key=self.name, chunk_index=self.chunk, file_index=self.file
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # faststart: the index at the front, as LeRobot's concatenated files have it.
        self.container = av.open(str(self.path), mode="w", options={"movflags": "faststart"})
        try:
            self.stream = self.container.add_stream(
                self.encoder["vcodec"], rate=self.fps, options=_codec_options(self.encoder)
            )
            self.stream.width, self.stream.height = self.width, self.height
            self.stream.pix_fmt = self.encoder["pix_fmt"]
            self.stream.codec_context.open()
        except av.FFmpegError as exc:
            self.container.close()
            self.container = None
            raise DatasetError(
                f"cannot encode {self.name} ({self.width}x{self.height}) with {self.encoder['vcodec']}: {exc}"
            ) from None
        self.frames = self.packets = self.bytes = 0

    def close(self) -> None:
        if self.container is None:
            return
        try:
            self._mux(self.stream.encode())  # the encoder's delayed frames
        finally:
            self.container.close()
            self.container = None


def _video_info(path: Path) -> dict:
    """What LeRobot's get_video_info reads from a video file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.fps": int(stream.base_rate),
            "video.channels": 3,
            "has_audio": bool(container.streams.audio),
        }


def _sample_indices(n: int) -> np.ndarray:
    """LeRobot's sample_indices: the frames of an episode its image statistics are computed on."""
    samples = min(n, 100) if n < 100 else max(100, min(int(n**0.75), 10_000))
    return np.round(np.linspace(0, n - 1, samples)).astype(int)


def _feature_stats(values: np.ndarray, image: bool) -> dict[str, np.ndarray]:
    """One episode's statistics of a feature, as LeRobot's compute_episode_stats has them: a
    camera's per channel over sampled frames (downsampled past 300 pixels), in [0, 1], shape
    (C, 1, 1); any other feature's per dimension; quantiles exact here (LeRobot: histograms)."""
    if image:
        frames = values[_sample_indices(len(values))]
        h, w = frames.shape[1:3]
        if max(h, w) >= 300:
            step = int(w / 150) if w > h else int(h / 150)
            frames = frames[:, ::step, ::step]
        x, count = frames.reshape(-1, frames.shape[-1]).astype(np.float64), len(frames)
    else:
        x, count = values.reshape(len(values), -1).astype(np.float64), len(values)
    stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    for key, q in QUANTILES.items():
        stats[key] = np.quantile(x, q, axis=0) if len(x) >= 2 else stats["mean"].copy()
    if image:
        stats = {k: (v / 255.0).reshape(-1, 1, 1) for k, v in stats.items()}
    return {**stats, "count": np.array([count], dtype=np.int64)}


def _aggregate(stats: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """LeRobot's aggregate_feature_stats: count-weighted mean and pooled variance; for quantiles
    the envelope (lowest of the lower ones, highest of the upper ones)."""
    means = np.stack([s["mean"] for s in stats])
    variances = np.stack([s["std"] ** 2 for s in stats])
    counts = np.stack([s["count"] for s in stats]).astype(np.float64)
    total = counts.sum(axis=0)
    while counts.ndim < means.ndim:
        counts = counts[..., None]
    mean = (means * counts).sum(axis=0) / total
    variance = ((variances + (means - mean) ** 2) * counts).sum(axis=0) / total
    out = {
        "min": np.min(np.stack([s["min"] for s in stats]), axis=0),
        "max": np.max(np.stack([s["max"] for s in stats]), axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": total.astype(np.int64),
    }
    for key in QUANTILES:
        values = np.stack([s[key] for s in stats])
        out[key] = values.min(axis=0) if int(key[1:]) <= 50 else values.max(axis=0)
    return out


def _write_table(path: Path, rows: list[dict]) -> None:
    """Rows of Python values into parquet, as LeRobot's pa.Table.from_pydict of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {k: [row[k] for row in rows] for k in rows[0]}
    pq.write_table(pa.Table.from_pydict(columns), path, compression="snappy")


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as pandas writes LeRobot's DataFrame({"task_index": ...},
    index=pd.Index(tasks, name="task")): the index a column named "task", declared in the
    schema's pandas metadata so pandas.read_parquet makes it the index again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema([("task_index", pa.int64()), ("task", pa.string())]).with_metadata(
        {"pandas": json.dumps(pandas_meta)}
    )
    table = pa.table({"task_index": np.arange(len(tasks), dtype=np.int64), "task": tasks}, schema=schema)
    pq.write_table(table, path)


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4, ensure_ascii=False))


# --- import --------------------------------------------------------------------------------------
def read(src, keys: dict[str, str], fps: float | None = None) -> tuple[Iterator[dict[str, np.ndarray]], dict]:
    """A LeRobotDataset v3.0 folder: (its episodes in the store's keys, {"fps", "task", "episodes"}).
    `fps` overrides info.json's (the frames are still found by their timestamps). Everything that
    can be checked without reading the data is checked here, before any episode."""
    src = Path(src)
    info = _read_info(src)
    plan = _import_plan(src, info, _Names(keys))
    episodes = _read_episodes(src, info)
    tasks = _read_tasks(src)
    texts = sorted({t for row in episodes for t in (row.get("tasks") or [])} or set(tasks.values()))
    if len(texts) > 1:
        raise DatasetError(
            f"{src} holds {len(texts)} tasks ({texts[0]!r}, {texts[1]!r}...); a store holds one task"
        )
    task = texts[0] if texts else None
    videos = [name for name, _, kind in plan if kind == "video"]
    needed = {
        info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        for row in episodes
    }
    needed |= {_video_path(info, name, row) for row in episodes for name in videos}
    for relative in sorted(needed):
        _file(src, relative)
    meta = {"fps": float(fps or info["fps"]), "task": task, "episodes": len(episodes)}
    return _episodes(src, info, plan, episodes, tasks, task), meta


def _file(src: Path, relative: str) -> Path:
    path = src / relative
    if not path.is_file():
        raise DatasetError(f"{src}: {relative} is missing")
    return path


def _video_path(info: dict, name: str, row: dict) -> str:
    return info["video_path"].format(
        video_key=name,
        chunk_index=row[f"videos/{name}/chunk_index"],
        file_index=row[f"videos/{name}/file_index"],
    )


def _read_info(src: Path) -> dict:
    path = src / "meta" / "info.json"
    if not path.is_file():
        raise DatasetError(f"{src} is not a LeRobotDataset (no meta/info.json)")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} cannot be read: {exc}") from None
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version != CODEBASE_VERSION:
        hint = (
            " (LeRobot converts v2.1 with lerobot.scripts.convert_dataset_v21_to_v30)"
            if version == "v2.1"
            else ""
        )
        raise DatasetError(f"{src} is LeRobotDataset {version}; only {CODEBASE_VERSION} is read{hint}")
    missing = [k for k in ("fps", "features", "data_path") if not info.get(k)]
    if missing:
        raise DatasetError(f"{path} has no {', '.join(missing)}")
    if not isinstance(info["fps"], int | float) or not info["fps"] > 0:
        raise DatasetError(f"{path}: fps is {info['fps']!r}")
    return info


def _import_plan(src: Path, info: dict, names: _Names) -> list[tuple[str, str, str]]:
    """(feature, store key, kind) for every feature that is not bookkeeping, kind one of video,
    image, vector, scalar; what cannot be placed is refused here, all of it in one line."""
    plan, unmapped, unsupported, taken = [], [], [], {}
    for name, ft in info["features"].items():
        if name in BOOKKEEPING:
            continue
        dtype, shape = ft.get("dtype"), tuple(ft.get("shape") or ())
        if dtype in ("video", "image"):
            details = ft.get("info") or {}
            if (
                details.get("is_depth_map")
                or details.get("video.is_depth_map")
                or 1 in shape[-1:] + shape[:1]
            ):
                unsupported.append(f"{name} (a depth map)")
                continue
            kind = dtype
        elif dtype in ("string", "language") or not _numeric(dtype):
            unsupported.append(f"{name} ({dtype})")
            continue
        elif len(shape) > 1:
            unsupported.append(f"{name} ({'x'.join(map(str, shape))} per frame)")
            continue
        else:
            kind = "scalar" if shape in ((), (1,)) else "vector"
        key = names.ours(name)
        if key is None:
            unmapped.append(name)
            continue
        if key in taken:
            raise ConfigError(f"{taken[key]} and {name} both map to the store key {key}")
        taken[key] = name
        plan.append((name, key, kind))
    if unsupported:
        raise DatasetError(f"{src}: a store cannot hold {', '.join(unsupported)}")
    if unmapped:
        raise DatasetError(
            f"{src}: no store key for the LeRobot feature(s) {', '.join(unmapped)} (give one with "
            "--key OURS=THEIRS; defaults: robot_rl/conf/formats/lerobot.yaml)"
        )
    if not plan:
        raise DatasetError(f"{src} holds no features besides LeRobot's bookkeeping")
    if any(kind == "video" for _, _, kind in plan) and not info.get("video_path"):
        raise DatasetError(f"{src}/meta/info.json has video features but no video_path")
    return plan


def _numeric(dtype) -> bool:
    try:
        return isinstance(dtype, str) and np.dtype(dtype).kind in "biuf"
    except TypeError:
        return False


def _read_episodes(src: Path, info: dict) -> list[dict]:
    """meta/episodes/*/*.parquet without the statistics, ordered by episode_index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted((src / "meta" / "episodes").glob("*/*.parquet"))
    if not paths:
        raise DatasetError(f"{src}: meta/episodes/ holds no parquet file")
    tables = []
    for path in paths:
        try:
            columns = [c for c in pq.ParquetFile(path).schema_arrow.names if not c.startswith("stats/")]
            tables.append(pq.read_table(path, columns=columns))
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(f"{path} cannot be read: {exc}") from None
    try:
        rows = pa.concat_tables(tables, promote_options="default").to_pylist()
    except pa.ArrowException as exc:
        raise DatasetError(f"{src}: meta/episodes files do not agree: {exc}") from None
    needed = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index"]
    videos = [n for n, ft in info["features"].items() if ft.get("dtype") == "video"]
    needed += [f"videos/{n}/{c}" for n in videos for c in ("chunk_index", "file_index", "from_timestamp")]
    for row in rows:
        absent = [c for c in needed if row.get(c) is None]
        if absent:
            raise DatasetError(
                f"{src}: episode {row.get('episode_index')} has no {', '.join(absent)} in meta/episodes"
            )
    rows.sort(key=lambda r: r["episode_index"])
    total = info.get("total_episodes")
    if total is not None and total != len(rows):
        raise DatasetError(f"{src}: meta/info.json counts {total} episodes, meta/episodes holds {len(rows)}")
    return rows


def _read_tasks(src: Path) -> dict[int, str]:
    """meta/tasks.parquet: task_index -> text (the text is the pandas index, its column named by
    the pandas metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = src / TASKS_PATH
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{path} cannot be read: {exc}") from None
    text_columns = [
        f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    if "task_index" not in table.column_names or not text_columns:
        raise DatasetError(f"{path} has no task_index and task text columns")
    column = "task" if "task" in text_columns else text_columns[0]
    return dict(zip(table.column("task_index").to_pylist(), table.column(column).to_pylist()))


def _episodes(src: Path, info: dict, plan, episodes: list[dict], tasks: dict[int, str], task):
    import pyarrow as pa
    import pyarrow.parquet as pq

    loaded: tuple[Path, pa.Table, np.ndarray] | None = None
    readers: dict[str, _VideoReader] = {}  # feature -> the reader of the file its episode is in
    try:
        for row in episodes:
            e, n = row["episode_index"], row["length"]
            path = src / info["data_path"].format(
                chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
            )
            if loaded is None or loaded[0] != path:
                try:
                    table = pq.read_table(path)
                except (OSError, pa.ArrowException) as exc:
                    raise DatasetError(f"{path} cannot be read: {exc}") from None
                absent = [
                    c
                    for c in [
                        "episode_index",
                        "frame_index",
                        "timestamp",
                        *(p[0] for p in plan if p[2] != "video"),
                    ]
                    if c not in table.column_names
                ]
                if absent:
                    raise DatasetError(f"{path} has no column {', '.join(absent)}")
                loaded = (path, table, table.column("episode_index").to_numpy())
            rows = np.flatnonzero(loaded[2] == e)
            if len(rows) != n or (n and rows[-1] - rows[0] != n - 1):
                raise DatasetError(f"{path} holds {len(rows)} frames of episode {e}, meta/episodes says {n}")
            part = loaded[1].slice(int(rows[0]), n) if n else loaded[1].slice(0, 0)
            if not np.array_equal(part.column("frame_index").to_numpy(), np.arange(n)):
                raise DatasetError(f"{path}: the frames of episode {e} are not in order")
            if tasks and task is not None and "task_index" in part.column_names:
                used = {tasks.get(i) for i in np.unique(part.column("task_index").to_numpy()).tolist()}
                if used != {task}:
                    raise DatasetError(f"{path}: episode {e} has frames of another task than {task!r}")
            timestamps = part.column("timestamp").to_numpy().astype(np.float64)
            episode = {}
            for name, key, kind in plan:
                if kind == "video":
                    video = src / _video_path(info, name, row)
                    if name not in readers or readers[name].path != video:
                        if name in readers:
                            readers.pop(name).close()
                        readers[name] = _VideoReader(video)
                    episode[key] = readers[name].frames(row[f"videos/{name}/from_timestamp"] + timestamps)
                elif kind == "image":
                    episode[key] = _decode_images(path, name, part.column(name))
                else:
                    episode[key] = _numbers(path, name, part.column(name), info["features"][name], kind)
            yield episode
    finally:
        for reader in readers.values():
            reader.close()


def _numbers(path: Path, name: str, column, feature: dict, kind: str) -> np.ndarray:
    """A scalar or vector column as (n,) or (n, d) numbers of the feature's dtype."""
    import pyarrow as pa

    column = column.combine_chunks()
    n = len(column)
    if (
        pa.types.is_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
        or pa.types.is_large_list(column.type)
    ):
        values = column.flatten().to_numpy(zero_copy_only=False)
        if (
            column.null_count
            or len(values) % max(n, 1)
            or (n and len(values) // n != int(np.prod(feature["shape"])))
        ):
            raise DatasetError(f"{path}: {name} does not hold {feature['shape']} values a frame")
        values = values.reshape(n, -1)
        if kind == "scalar":
            values = values.reshape(n)
    else:
        if kind == "vector":
            raise DatasetError(f"{path}: {name} holds one value a frame, info.json says {feature['shape']}")
        if column.null_count:
            raise DatasetError(f"{path}: {name} has empty values")
        values = column.to_numpy(zero_copy_only=False)
    return np.asarray(values).astype(np.dtype(feature["dtype"]), copy=False)


def _decode_images(path: Path, name: str, column) -> np.ndarray:
    """A LeRobot `image` column (datasets' Image: {bytes, path} with the PNG embedded) as uint8 HWC."""
    import io

    from PIL import Image

    frames = []
    for i, cell in enumerate(column.to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            raise DatasetError(f"{path}: {name} frame {i} has no embedded image")
        with Image.open(io.BytesIO(data)) as image:
            frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)


class _VideoReader:
    """One mp4, decoded at timestamps: a seek to the keyframe at or before the first, then every
    frame up to the last, each query matched to the nearest frame within TOLERANCE_S (what
    LeRobot's decode_video_frames_pyav does)."""

    def __init__(self, path: Path):
        import av

        self.path = path
        try:
            self.container = av.open(str(path))
            self.stream = self.container.streams.video[0]
        except (av.FFmpegError, IndexError) as exc:
            raise DatasetError(f"{path} is not a readable video: {exc}") from None

    def frames(self, timestamps: np.ndarray) -> np.ndarray:
        import av

        first, last = float(timestamps.min()), float(timestamps.max())
        base = self.stream.time_base
        loaded, at = [], []
        try:
            self.container.seek(
                max(0, round(first / base) - 1), backward=True, any_frame=False, stream=self.stream
            )
            for frame in self.container.decode(self.stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * base)
                if t < first - TOLERANCE_S:
                    continue
                loaded.append(frame.to_ndarray(format="rgb24"))
                at.append(t)
                if t >= last - TOLERANCE_S:
                    break
        except av.FFmpegError as exc:
            raise DatasetError(f"{self.path} cannot be decoded: {exc}") from None
        if not loaded:
            raise DatasetError(f"{self.path} has no frames between {first:.4f} s and {last:.4f} s")
        at = np.asarray(at)
        nearest = np.abs(timestamps[:, None] - at[None, :]).argmin(axis=1)
        off = np.abs(at[nearest] - timestamps)
        if off.max() > TOLERANCE_S:
            bad = int(off.argmax())
            raise DatasetError(
                f"{self.path} has no frame at {timestamps[bad]:.4f} s (nearest {at[nearest[bad]]:.4f} s)"
            )
        return np.stack([loaded[i] for i in nearest])

    def close(self) -> None:
        self.container.close()
