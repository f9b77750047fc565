"""`robot-rl dataset import-rosbag BAG OUT.zarr --config CONFIG.yaml`: a rosbag2 recording (mcap
or sqlite3, read with `rosbags`) -> an EpisodeStore.

The config names the streams and how to sample them:

    fps: 10
    clock: header            # header: each message's header stamp; bag: its record time
    align: nearest           # nearest | interpolate (numeric streams; images always nearest)
    tolerance_s: 0.05        # no message this close to a tick: the tick is dropped (and counted)
    episodes:
      gap_s: 1.0             # a silence longer than this on every stream starts a new episode
      marker_topic: null     # or: a topic on which each message starts a new episode
    task: "pick up the cube"
    streams:                 # in order; streams of one key are concatenated (obs/state)
      - {key: obs/state, topic: /joint_states, field: position, names: [j1, j2]}
      - {key: obs/image/front, topic: /camera/color/image_raw}
      - {key: action, topic: /cmd_vel}

Each episode is sampled at `fps` from the first instant every stream has spoken to the last;
a tick is kept only when every stream has a message within the tolerance. The store's attributes
record the bag, its topics and message counts, the config and the dropped ticks per stream. The
store is written under OUT.importing and renamed when complete, so an interrupted import leaves
nothing that looks like a dataset.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_rl.errors import ConfigError, DatasetError


@dataclass
class StreamConfig:
    key: str
    topic: str
    field: str | None = None
    names: list | None = None  # JointState: joint order


@dataclass
class RosbagImportConfig:
    streams: list
    fps: float = 10.0
    clock: str = "header"
    align: str = "nearest"
    tolerance_s: float = 0.05
    episodes: dict = field(default_factory=lambda: {"gap_s": 1.0, "marker_topic": None})
    task: str = ""

    def __post_init__(self):
        self.streams = [s if isinstance(s, StreamConfig) else StreamConfig(**s) for s in self.streams]
        if not self.streams:
            raise ConfigError("import-rosbag needs streams (key, topic) in its config")
        if self.clock not in ("header", "bag") or self.align not in ("nearest", "interpolate"):
            raise ConfigError("clock must be 'header' or 'bag', align 'nearest' or 'interpolate'")
        if not (self.fps > 0 and self.tolerance_s > 0):
            raise ConfigError("fps and tolerance_s must be positive")


def read_bag(
    path, cfg: RosbagImportConfig, progress: bool = True
) -> tuple[dict[str, tuple[np.ndarray, list]], dict, list[float]]:
    """[(times, arrays)] per stream (in config order), the bag's topic -> message count, the marker times."""
    from rosbags.rosbag2 import Reader

    from robot_rl.ros.messages import read_field, ros2_typestore

    store = ros2_typestore()
    wanted: dict[str, list[int]] = {}
    for i, s in enumerate(cfg.streams):  # several streams may read one topic (positions and velocities)
        wanted.setdefault(s.topic, []).append(i)
    marker = (cfg.episodes or {}).get("marker_topic")
    try:
        reader = Reader(Path(path))
        reader.open()
    except Exception as exc:  # rosbags raises its own errors for a missing or bad bag
        raise DatasetError(f"cannot read the bag {path}: {exc}") from None
    try:
        available = {c.topic: c.msgtype for c in reader.connections}
        missing = [t for t in [*wanted, *([marker] if marker else [])] if t not in available]
        if missing:
            raise DatasetError(
                f"{path} has no topic {', '.join(missing)} (it has {', '.join(sorted(available))})"
            )
        connections = [c for c in reader.connections if c.topic in wanted or c.topic == marker]
        data = [([], []) for _ in cfg.streams]
        markers = []
        counts = {t: 0 for t in available}
        total = sum(c.msgcount for c in connections)
        for connection, bag_ns, raw in tqdm(
            reader.messages(connections),
            total=total,
            desc=f"read {Path(path).name}",
            unit="msg",
            disable=not progress,
            dynamic_ncols=True,
        ):
            counts[connection.topic] += 1
            msg = store.deserialize_cdr(raw, connection.msgtype)
            stamp = bag_ns * 1e-9
            if cfg.clock == "header" and hasattr(msg, "header"):
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            if connection.topic == marker:
                markers.append(stamp)
                continue
            for i in wanted[connection.topic]:
                stream = cfg.streams[i]
                data[i][0].append(stamp)
                data[i][1].append(read_field(msg, connection.msgtype, stream.field, stream.names))
    finally:
        reader.close()
    out = []
    for times, values in data:
        order = np.argsort(times, kind="stable")
        out.append((np.asarray(times)[order], [values[i] for i in order]))
    return out, counts, sorted(markers)


def episode_spans(data, cfg: RosbagImportConfig, markers: list[float]) -> list[tuple[float, float]]:
    """(start, end) of each episode: split at silences longer than gap_s on every stream, or at markers."""
    stamps = np.sort(np.concatenate([t for t, _ in data]))
    if len(stamps) == 0:
        return []
    cuts = list(markers)
    gap = (cfg.episodes or {}).get("gap_s")
    if gap:
        big = np.flatnonzero(np.diff(stamps) > gap)
        cuts += [float((stamps[i] + stamps[i + 1]) / 2) for i in big]
    edges = [
        float(stamps[0]) - 1e-9,
        *sorted(c for c in cuts if stamps[0] < c < stamps[-1]),
        float(stamps[-1]) + 1e-9,
    ]
    spans = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        # Within the span, from when every stream has spoken to when the first goes quiet for good.
        firsts, lasts = [], []
        for times, _ in data:
            inside = times[(times >= lo) & (times <= hi)]
            if len(inside) == 0:
                break
            firsts.append(inside[0])
            lasts.append(inside[-1])
        else:
            if max(firsts) <= min(lasts):
                spans.append((max(firsts), min(lasts)))
    return spans


def sample(
    times: np.ndarray, values: list, ticks: np.ndarray, cfg: RosbagImportConfig
) -> tuple[list, np.ndarray]:
    """Values at each tick (nearest, or interpolated between neighbours) and which ticks had one
    within the tolerance."""
    right = (
        np.clip(np.searchsorted(times, ticks), 1, len(times) - 1)
        if len(times) > 1
        else np.zeros(len(ticks), int)
    )
    left = np.maximum(right - 1, 0)
    d_left, d_right = np.abs(ticks - times[left]), np.abs(times[right] - ticks)
    nearest = np.where(d_left <= d_right, left, right)
    ok = np.minimum(d_left, d_right) <= cfg.tolerance_s
    numeric = values[0].dtype != np.uint8 and values[0].dtype != np.uint16
    if cfg.align == "interpolate" and numeric and len(times) > 1:
        out = []
        for t, i, j in zip(ticks, left, right):
            span = times[j] - times[i]
            w = 0.0 if span <= 0 else float(np.clip((t - times[i]) / span, 0.0, 1.0))
            out.append((1 - w) * values[i] + w * values[j])
        # Interpolating needs a message on each side within the tolerance of the gap it bridges.
        ok = (ticks >= times[left]) & (ticks <= times[right]) & (
            times[right] - times[left] <= 2 * cfg.tolerance_s
        ) | ok
        return out, ok
    return [values[i] for i in nearest], ok


def import_rosbag(bag, out, cfg: RosbagImportConfig, progress: bool = True) -> dict:
    from robot_rl.datasets.store import EpisodeStore

    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out} exists; import into a new store")
    data, counts, markers = read_bag(bag, cfg, progress)
    empty = [s.topic for s, (times, _) in zip(cfg.streams, data) if len(times) == 0]
    if empty:
        raise DatasetError(f"{bag}: no messages on {', '.join(empty)}")
    spans = episode_spans(data, cfg, markers)
    keys = list(dict.fromkeys(s.key for s in cfg.streams))
    dropped = {f"{s.key}:{s.topic}": 0 for s in cfg.streams}
    episodes = []
    for start, end in spans:
        ticks = start + np.arange(int(np.floor((end - start) * cfg.fps)) + 1) / cfg.fps
        sampled, keep = {}, np.ones(len(ticks), bool)
        for i, s in enumerate(cfg.streams):
            values, ok = sample(*data[i], ticks, cfg)
            sampled[i] = values
            dropped[f"{s.key}:{s.topic}"] += int((~ok).sum())
            keep &= ok
        index = np.flatnonzero(keep)
        if len(index) == 0:
            continue
        episode = {}
        for key in keys:
            parts = [
                np.stack([np.asarray(sampled[j][i]) for i in index])
                for j, s in enumerate(cfg.streams)
                if s.key == key
            ]
            episode[key] = (
                parts[0]
                if len(parts) == 1
                else np.concatenate([p.reshape(len(index), -1) for p in parts], axis=1)
            )
            if episode[key].dtype == np.float64:
                episode[key] = episode[key].astype(np.float32)
        episode["timestamp"] = ticks[index]
        episodes.append(episode)
    if not episodes:
        raise DatasetError(f"{bag}: no tick where every stream has a message within {cfg.tolerance_s} s")
    schema = {k: (v.shape[1:], v.dtype) for k, v in episodes[0].items()}
    partial = out.with_name(out.name + ".importing")
    shutil.rmtree(partial, ignore_errors=True)
    attrs = {
        "source": "robot-rl dataset import-rosbag",
        "bag": str(bag),
        "task": cfg.task,
        "topics": {s.key + ":" + s.topic: counts.get(s.topic, 0) for s in cfg.streams},
        "dropped_ticks": dropped,
        "config": {k: v for k, v in vars(cfg).items() if k != "streams"}
        | {"streams": [vars(s) for s in cfg.streams]},
    }
    store = EpisodeStore.open_or_create(partial, schema, fps=cfg.fps, attrs=attrs)
    try:
        for episode in episodes:
            store.append_episode(episode)
    finally:
        store.close()
    partial.rename(out)
    return {
        "store": str(out),
        "episodes": len(episodes),
        "steps": int(sum(len(e["timestamp"]) for e in episodes)),
        "dropped_ticks": dropped,
        "messages": {s.topic: counts.get(s.topic, 0) for s in cfg.streams},
    }
