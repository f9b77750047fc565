"""`robot-rl dataset import-rosbag BAG OUT.zarr --config CONFIG.yaml`: a rosbag2 recording (mcap
or sqlite3, read with `rosbags`) -> an EpisodeStore.

The config names the streams and how to sample them:

    fps: 10
    clock: header            # header: a message's header stamp (record time without one); bag: record time
    align: nearest           # nearest | interpolate (numeric streams; images always nearest)
    tolerance_s: 0.05        # no message this close to a tick: the tick is dropped (and counted)
    episodes:
      gap_s: 1.0             # a silence longer than this on every stream starts a new episode
      marker_topic: null     # or: a topic on which each message starts a new episode
    task: "pick up the cube"
    msg_definitions: {}      # TYPE: FILE.msg (or the definition's text), for types the bag lacks
    streams:                 # in order; streams of one key are concatenated (obs/state)
      - {key: obs/state, topic: /joint_states, field: position, names: [j1, j2]}
      - {key: obs/state, topic: /arm/state, field: "position[0:7]"}   # a path into any message
      - {key: obs/tool, path: "/arm/state.tool.position"}             # topic and path in one string
      - {key: obs/image/front, topic: /camera/color/image_raw}
      - {key: action, topic: /cmd_vel}

Message types come from the bag: the definitions rosbag2 stores with it (mcap schemas, the sqlite3
`message_definitions` table of Iron and later) are registered by `rosbags.highlevel.AnyReader`, so a
lab's own messages need no code here; a type the bag does not define is taken from `msg_definitions`,
then from ROS 2 Humble's (plus ackermann_msgs). A stream's `field` is either one of robot_rl's
converters for the common types (JointState position / velocity / effort in `names` order, Odometry
pose / velocity, Imu gyro / accel; PoseStamped, Twist, AckermannDriveStamped, Float64MultiArray,
Image and CompressedImage without a field) or a path into the message, read as a flat float vector:
`name(.name)*` with `[i]` indices and `[start:stop(:step)]` slices (negative counts from the end)
after any name; a message (or an array of them) gives its numeric fields, recursively, in
definition order (strings are skipped). Paths are checked against the definitions and then on each
topic's first message before the bag is read; every problem is reported in one ConfigError.

Each episode is sampled at `fps` from the first instant every stream has spoken to the last;
a tick is kept only when every stream has a message within the tolerance. The store's attributes
record the bag, its topics and message counts, the config and the dropped ticks per stream. The
store is written under OUT.importing and renamed when complete, so an interrupted import leaves
nothing that looks like a dataset.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_rl.errors import ConfigError, DatasetError
from robot_rl.ros.field_path import (
    PathError,
    check_path,
    describe_fields,
    field_node,
    message_fields,
    parse_field_path,
    read_path,
)

# Types robot_rl/ros/messages.py `read_field` converts, with the `field` names it reads (none: the
# default conversion). Any other `field` on them is a path into the message.
CONVERTERS = {
    "sensor_msgs/msg/JointState": ("position", "velocity", "effort"),
    "nav_msgs/msg/Odometry": ("pose", "velocity"),
    "sensor_msgs/msg/Imu": ("gyro", "accel"),
    "geometry_msgs/msg/PoseStamped": (),
    "geometry_msgs/msg/Pose": (),
    "geometry_msgs/msg/Twist": (),
    "geometry_msgs/msg/TwistStamped": (),
    "ackermann_msgs/msg/AckermannDriveStamped": (),
    "std_msgs/msg/Float64MultiArray": (),
    "std_msgs/msg/Float32MultiArray": (),
    "sensor_msgs/msg/Image": (),
    "sensor_msgs/msg/CompressedImage": (),
}

FIX_DEFINITION = (
    "record with a rosbag2 that stores message definitions (the mcap storage, or Iron or newer) where "
    "the message package is installed, or give the definition in the import config: "
    "msg_definitions: {TYPE: FILE.msg}"
)


@dataclass
class StreamConfig:
    key: str
    topic: str | None = None
    field: str | None = None  # one of a converter's parts, or a path into the message
    names: list | None = None  # JointState: joint order
    path: str | None = None  # "TOPIC.FIELD_PATH" in one string (topic names have no '.')

    def __post_init__(self):
        if self.path is not None:
            topic, _, rest = str(self.path).strip().partition(".")
            # topic and field may come with it only as the path's own parts: the config the store
            # records (and a re-import from it) carries all three
            if (self.topic, self.field) not in ((None, None), (topic, rest or None)):
                raise ConfigError(f"stream {self.key}: give `path` or `topic` (and `field`), not both")
            self.topic, self.field = topic, rest or None
        if not self.topic or any(c in str(self.topic) for c in "[]. "):
            raise ConfigError(
                f"stream {self.key}: bad topic {self.topic!r} (give `topic: /name` and a `field`, "
                "or `path: /name.field.path[0:3]`)"
            )
        if self.field is not None:
            self.field = str(self.field).strip() or None
        if self.field is not None:
            try:
                parse_field_path(self.field)
            except ValueError as exc:
                raise ConfigError(f"stream {self.key}: bad field path {self.field!r}: {exc}") from None


@dataclass
class RosbagImportConfig:
    streams: list
    fps: float = 10.0
    clock: str = "header"
    align: str = "nearest"
    tolerance_s: float = 0.05
    episodes: dict = field(default_factory=lambda: {"gap_s": 1.0, "marker_topic": None})
    task: str = ""
    msg_definitions: dict = field(default_factory=dict)  # type -> .msg / .idl file, or the text

    def __post_init__(self):
        self.streams = [s if isinstance(s, StreamConfig) else StreamConfig(**s) for s in self.streams]
        if not self.streams:
            raise ConfigError("import-rosbag needs streams (key, topic) in its config")
        if self.clock not in ("header", "bag") or self.align not in ("nearest", "interpolate"):
            raise ConfigError("clock must be 'header' or 'bag', align 'nearest' or 'interpolate'")
        if not (self.fps > 0 and self.tolerance_s > 0):
            raise ConfigError("fps and tolerance_s must be positive")
        self.msg_definitions = dict(self.msg_definitions or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.msg_definitions.items()):
            raise ConfigError("msg_definitions maps a type name to its .msg file (or its text)")


# --- message types ------------------------------------------------------------------------------------
def _full_type_name(name: str) -> str:
    parts = name.strip().split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 else name.strip()


def given_definitions(definitions: dict[str, str]) -> dict:
    """The config's msg_definitions (type -> .msg / .idl file, or the text), parsed."""
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    types: dict = {}
    for name, value in definitions.items():
        name, text, source = _full_type_name(name), value, "its text"
        if "\n" not in value and value.strip().endswith((".msg", ".idl")):
            file = Path(value.strip()).expanduser()
            if not file.is_file():
                raise ConfigError(f"msg_definitions: no file {file} for {name}")
            text, source = file.read_text(), str(file)
        try:
            idl = source.endswith(".idl") or text.lstrip().startswith(("module", "#include", "//"))
            types.update(get_types_from_idl(text) if idl else get_types_from_msg(text, name))
        except Exception as exc:  # rosbags raises its own parse errors
            raise ConfigError(
                f"msg_definitions: cannot parse the definition of {name} ({source}): {exc}"
            ) from None
    return types


def _dependencies(fields) -> list[str]:
    out = []
    for _, spec in fields:
        node = field_node(spec)
        while node[0] == "array":
            node = node[1]
        if node[0] == "msg":
            out.append(node[1])
    return out


def complete_types(store, roots, given: dict, defaults) -> dict[str, list[str]]:
    """Register into `store` (the bag's definitions) the types `roots` need and it lacks, from `given`
    (the config's definitions), then `defaults`; returns, per root type, the types found nowhere."""
    extra: dict = {}
    missing: dict[str, list[str]] = {}
    for root in roots:
        todo, seen = [root], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for source in (store.fielddefs, extra, given, defaults.fielddefs):
                if name in source:
                    if source is not store.fielddefs:
                        extra.setdefault(name, source[name])
                    todo += _dependencies(source[name][1])
                    break
            else:
                missing.setdefault(root, []).append(name)
    if extra := {k: v for k, v in extra.items() if k not in store.fielddefs}:
        store.register(extra)
    return missing


def _bag_typestore(reader):
    """The bag's types as AnyReader registered them, less those whose stored definition is empty (a
    writer that stored the name without a definition): those are looked up elsewhere."""
    from rosbags.typesys import Stores, get_typestore

    blank = {
        c.msgtype for c in reader.connections if c.msgdef.format.name != "NONE" and not c.msgdef.data.strip()
    }
    if not blank:
        return reader.typestore
    store = get_typestore(Stores.EMPTY)
    store.register({k: v for k, v in reader.typestore.fielddefs.items() if k not in blank})
    return store


def _has_stamp(fielddefs, msgtype: str) -> bool:
    """A `header` with a `stamp` (std_msgs/Header): the message's time for clock: header."""
    header = dict(message_fields(fielddefs, msgtype)).get("header")
    return bool(header and header[0] == "msg" and "stamp" in dict(message_fields(fielddefs, header[1])))


def _missing_definition(topic: str, msgtype: str, lacking: list[str]) -> str:
    nested = [t for t in lacking if t != msgtype]
    also = f" (nor of {', '.join(nested)}, which it uses)" if nested else ""
    return f"topic {topic} has type {msgtype} and the bag holds no definition of it{also}"


def _undefined_in_sqlite(path: Path) -> list[tuple[str, str]]:
    """(topic, type) of a sqlite3 bag's types stored without a definition (rosbag2 Iron and later
    write an empty encoding when the recorder lacks the message package)."""
    import sqlite3

    out = []
    for db in sorted(path.glob("*.db3")):
        try:
            con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
        except sqlite3.Error:
            continue
        try:
            bare = {
                t
                for (t,) in con.execute(
                    "SELECT topic_type FROM message_definitions WHERE encoding NOT IN ('ros2msg', 'ros2idl')"
                )
            }
            out += [(name, t) for name, t in con.execute("SELECT name, type FROM topics") if t in bare]
        except sqlite3.Error:
            pass
        finally:
            con.close()
    return sorted(set(out))


def open_bag(path: Path, defaults, topics):
    """An open AnyReader of a rosbag2 folder (or of a file in one), the bag's definitions registered."""
    from rosbags.highlevel import AnyReader

    if path.is_file() and (path.parent / "metadata.yaml").exists():
        path = path.parent
    try:
        reader = AnyReader([path], default_typestore=defaults)
        reader.open()
    except KeyError:  # rosbags 0.11 cannot open a sqlite3 bag with a type stored without definition
        undefined = _undefined_in_sqlite(path)
        if not undefined:
            raise DatasetError(f"cannot read the bag {path}: malformed storage") from None
        needed = [(t, m) for t, m in undefined if t in topics]
        text = "; ".join(_missing_definition(t, m, [m]) for t, m in (needed or undefined))
        why = (
            f"{text}. rosbags cannot open a sqlite3 bag holding a type without its definition"
            f"{'' if needed else ', even one this import does not read'}: re-record, or convert the bag "
            "to mcap (`ros2 bag convert`) and give the definition in the config if it is still missing "
            "(msg_definitions: {TYPE: FILE.msg})"
        )
        raise (ConfigError if needed else DatasetError)(f"cannot read {path}: {why}") from None
    except Exception as exc:  # rosbags raises its own errors for a missing or bad bag
        hint = (
            " (the definition stored in the bag is not the one its type hash was made from)"
            if "hash mismatch" in str(exc)
            else ""
        )
        raise DatasetError(f"cannot read the bag {path}: {exc}{hint}") from None
    if not reader.is2:
        reader.close()
        raise DatasetError(f"{path} is a ROS 1 bag; import-rosbag reads rosbag2 (mcap or sqlite3)")
    return reader


def _label(stream: StreamConfig, msgtype: str) -> str:
    where = f"stream {stream.key} ({stream.topic}, {msgtype})"
    return f"{where}, path {stream.field!r}" if stream.field is not None else where


def stream_reader(stream: StreamConfig, msgtype: str, fielddefs) -> tuple[Callable | None, str | None]:
    """(message -> array, None), or (None, why this stream cannot be read from `msgtype` messages)."""
    from robot_rl.ros.messages import read_field

    if msgtype in CONVERTERS and (stream.field is None or stream.field in CONVERTERS[msgtype]):
        return (lambda msg: read_field(msg, msgtype, stream.field, stream.names)), None
    if stream.names is not None:
        return (
            None,
            "`names` picks joints of a JointState's position, velocity or effort; a path takes indices",
        )
    if stream.field is None:
        return None, (
            f"robot_rl has no converter for {msgtype}: give `field`, a path into it; "
            f"its fields: {describe_fields(fielddefs, msgtype)}"
        )
    steps = parse_field_path(stream.field)
    if why := check_path(fielddefs, msgtype, steps):
        return None, why
    return (lambda msg: read_path(msg, steps)), None


def _problems(text: str, problems: list[str], tail: str = "") -> ConfigError:
    if len(problems) == 1:
        return ConfigError(f"{text}: {problems[0]}{tail}")
    return ConfigError(f"{text}:\n" + "\n".join(f"  - {p}" for p in problems) + (f"\n{tail}" if tail else ""))


def read_bag(
    path, cfg: RosbagImportConfig, progress: bool = True
) -> tuple[dict[str, tuple[np.ndarray, list]], dict, list[float]]:
    """[(times, arrays)] per stream (in config order), the bag's topic -> message count, the marker times."""
    from robot_rl.ros.messages import ros2_typestore

    wanted: dict[str, list[int]] = {}
    for i, s in enumerate(cfg.streams):  # several streams may read one topic (positions and velocities)
        wanted.setdefault(s.topic, []).append(i)
    marker = (cfg.episodes or {}).get("marker_topic")
    given = given_definitions(cfg.msg_definitions)
    defaults = ros2_typestore()
    reader = open_bag(Path(path), defaults, [*wanted, *([marker] if marker else [])])
    try:
        available = {c.topic: c.msgtype for c in reader.connections}
        missing = [t for t in [*wanted, *([marker] if marker else [])] if t not in available]
        if missing:
            raise DatasetError(
                f"{path} has no topic {', '.join(missing)} (it has {', '.join(sorted(available))})"
            )
        connections = [c for c in reader.connections if c.topic in wanted or c.topic == marker]
        # Types: the bag's definitions, then the config's, then the defaults; the marker's only for
        # its header stamp.
        store = _bag_typestore(reader)
        needed = {t: available[t] for t in wanted} | (
            {marker: available[marker]} if marker and cfg.clock == "header" else {}
        )
        lacking = complete_types(store, sorted(set(needed.values())), given, defaults)
        problems = [_missing_definition(t, m, lacking[m]) for t, m in needed.items() if m in lacking]
        if problems:
            raise _problems(f"cannot read {path}", problems, f". To fix: {FIX_DEFINITION}")
        fielddefs = store.fielddefs
        readers: list[Callable] = []
        for s in cfg.streams:
            read, why = stream_reader(s, available[s.topic], fielddefs)
            readers.append(read)
            if why:
                problems.append(f"{_label(s, available[s.topic])}: {why}")
        stamped = {t: cfg.clock == "header" and _has_stamp(fielddefs, m) for t, m in needed.items()}

        def decode(connection, raw):
            try:
                return store.deserialize_cdr(raw, connection.msgtype)
            except Exception as exc:  # rosbags raises its own errors for data that do not fit
                raise DatasetError(
                    f"{path}: cannot decode a {connection.msgtype} message on {connection.topic} "
                    f"with the bag's definition of it: {exc}"
                ) from None

        def extract(i, msg):
            try:
                return readers[i](msg)
            except PathError as exc:
                s = cfg.streams[i]
                raise ConfigError(f"{_label(s, available[s.topic])}: {exc}") from None

        # Each topic's first message, before the long read: indices, joint names, empty vectors; then
        # every problem found so far in one error.
        shapes: dict[int, tuple] = {}
        for topic, streams in wanted.items():
            first = reader.messages([c for c in connections if c.topic == topic])
            item = next(first, None)
            first.close()
            if item is None:
                continue
            msg = decode(item[0], item[2])
            for i in streams:
                s = cfg.streams[i]
                if readers[i] is None:  # its path does not fit the definition: reported already
                    continue
                try:
                    value = np.asarray(readers[i](msg))
                except (PathError, ConfigError) as exc:
                    problems.append(f"{_label(s, available[topic])}: {exc}")
                    continue
                if value.size == 0:
                    problems.append(f"{_label(s, available[topic])}: no values in the first message")
                shapes[i] = value.shape
        if problems:
            raise _problems(f"cannot read {path}", problems)

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
            topic = connection.topic
            counts[topic] += 1
            stamp = bag_ns * 1e-9
            if topic == marker:
                if stamped.get(topic):
                    msg = decode(connection, raw)
                    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                markers.append(stamp)
                continue
            msg = decode(connection, raw)
            if stamped[topic]:
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            for i in wanted[topic]:
                value = extract(i, msg)
                if np.shape(value) != shapes[i]:  # stacking needs one shape; say where it changed
                    raise DatasetError(
                        f"{_label(cfg.streams[i], connection.msgtype)}: shape {np.shape(value)} at "
                        f"t={stamp:.3f} s, {shapes[i]} in the first message (a variable-length array: "
                        "pick a fixed part of it)"
                    )
                data[i][0].append(stamp)
                data[i][1].append(value)
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
