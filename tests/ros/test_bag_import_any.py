"""The rosbag2 importer on a lab's own message types: the types come from the definitions stored in
the bag (mcap schemas, sqlite3 message_definitions), fields are chosen by path, and a bag without
a type's definition gets one clear error (or the definition from the config)."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402

from robot_rl.cli import main  # noqa: E402
from robot_rl.datasets import EpisodeStore  # noqa: E402
from robot_rl.errors import ConfigError, DatasetError  # noqa: E402
from robot_rl.ros.bag_import import RosbagImportConfig, StreamConfig, import_rosbag  # noqa: E402
from robot_rl.ros.field_path import check_path, parse_field_path, read_path  # noqa: E402

ARM_STATE = "my_lab_msgs/msg/ArmState"
ARM_STATE_MSG = "std_msgs/Header header\nfloat64[] position\ngeometry_msgs/Pose tool\nFinger[] fingers\n"
FINGER_MSG = "float64 angle\nfloat64 force\n"
N = 40  # messages per topic: 2 s at 20 Hz from t = 100 s


def writer_store():
    """Humble's types plus the lab's: only the writer knows them; the bag stores their definitions."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    types = get_types_from_msg(FINGER_MSG, "my_lab_msgs/msg/Finger")
    types.update(get_types_from_msg(ARM_STATE_MSG, ARM_STATE))
    store.register(types)
    return store


def write_bag(path, storage):
    """/arm/state (ArmState, header stamps t_i, recorded 0.3 s late), /cmd_vel (Twist) and /gains
    (Float64MultiArray), neither with a header, recorded at t_i; t_i = 100 + i / 20."""
    store = writer_store()
    T = store.types
    writer = Writer(
        path, version=8, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    )
    writer.open()
    conns = {
        topic: writer.add_connection(topic, kind, typestore=store)
        for topic, kind in (
            ("/arm/state", ARM_STATE),
            ("/cmd_vel", "geometry_msgs/msg/Twist"),
            ("/gains", "std_msgs/msg/Float64MultiArray"),
        )
    }
    events = []
    for i in range(N):
        t_ns = 100_000_000_000 + i * 50_000_000
        stamp = T["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
        arm = T[ARM_STATE](
            header=T["std_msgs/msg/Header"](stamp=stamp, frame_id="arm"),
            position=np.array([i, i + 0.5, -i, 1000 + i, 7.0]),
            tool=T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=i / 4, y=-float(i), z=2.0),
                orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            ),
            fingers=[
                T["my_lab_msgs/msg/Finger"](angle=float(k * i), force=float(10 * k + i)) for k in (1, 2, 3)
            ],
        )
        vec = T["geometry_msgs/msg/Vector3"]
        twist = T["geometry_msgs/msg/Twist"](linear=vec(x=float(i), y=0.0, z=0.0), angular=vec(0.0, 0.0, -i))
        layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        gains = T["std_msgs/msg/Float64MultiArray"](
            layout=layout, data=np.array([i, 2 * i, 3 * i, 4 * i], float)
        )
        events += [
            (t_ns + 300_000_000, "/arm/state", arm),
            (t_ns, "/cmd_vel", twist),
            (t_ns, "/gains", gains),
        ]
    for t_ns, topic, msg in sorted(events, key=lambda e: e[0]):
        writer.write(conns[topic], t_ns, store.serialize_cdr(msg, msg.__msgtype__))
    writer.close()


CONFIG = {
    "fps": 10,
    "tolerance_s": 0.01,
    "streams": [
        {"key": "obs/state", "path": "/arm/state.position[0:3]"},
        {"key": "obs/state", "topic": "/arm/state", "field": "position[-2:]"},
        {"key": "obs/tool", "topic": "/arm/state", "field": "tool.position"},
        {"key": "obs/fingers", "path": "/arm/state.fingers[1:].force"},
        {"key": "obs/gain", "topic": "/gains", "field": "data[2]"},
        {"key": "action", "topic": "/cmd_vel", "field": "angular"},  # a path on a converted type
        {"key": "action", "topic": "/cmd_vel"},  # the Twist converter: [forward speed, yaw rate]
    ],
}


def check_store(path):
    """Every value exactly as written, message i at tick i / 2 (the arm's by its header stamp: by its
    record time it would be 6 messages behind the others)."""
    with EpisodeStore.open(path) as store:
        n = store.n_steps
        assert n == N // 2 and store.episode_ends[-1] == n
        i = np.round((store.array("timestamp")[:n] - 100.0) * 20).astype(int)
        np.testing.assert_array_equal(i, np.arange(0, N, 2))
        f = i.astype(np.float32)[:, None]
        ones = np.ones_like(f)
        expected = {
            "obs/state": np.hstack([f, f + 0.5, -f, 1000 + f, 7 * ones]),
            "obs/tool": np.hstack([f / 4, -f, 2 * ones]),
            "obs/fingers": np.hstack([20 + f, 30 + f]),
            "obs/gain": 3 * f,
            "action": np.hstack([0 * f, 0 * f, -f, f, -f]),
        }
        for key, want in expected.items():
            got = store.array(key)[:n]
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=key)


# Runs in a fresh interpreter: nothing but the bag can define my_lab_msgs there.
IMPORT = """
import json, sys
from robot_rl.ros.bag_import import RosbagImportConfig, import_rosbag
from robot_rl.ros.messages import ros2_typestore
assert "my_lab_msgs/msg/ArmState" not in ros2_typestore().types
assert not any("my_lab" in name for name in sys.modules)
for bag, out in json.loads(sys.argv[1]):
    import_rosbag(bag, out, RosbagImportConfig(**json.loads(sys.argv[2])), progress=False)
"""


def test_custom_type_from_the_bags_definitions_both_storages(tmp_path):
    jobs = []
    for storage in ("mcap", "sqlite3"):
        write_bag(tmp_path / storage, storage)
        jobs.append((str(tmp_path / storage), str(tmp_path / f"{storage}.zarr")))
    done = subprocess.run(
        [sys.executable, "-c", IMPORT, json.dumps(jobs), json.dumps(CONFIG)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for _, out in jobs:
        check_store(out)


def test_field_paths_in_the_config():
    assert parse_field_path("pose.pose.position.x") == [
        ("field", n) for n in ("pose", "pose", "position", "x")
    ]
    assert parse_field_path("points[0].positions[-3::2]") == [
        ("field", "points"),
        ("index", 0),
        ("field", "positions"),
        ("slice", -3, None, 2),
    ]
    s = StreamConfig(key="obs/state", path="/robot/arm/state.position[0:7]")
    assert (s.topic, s.field) == ("/robot/arm/state", "position[0:7]")
    assert StreamConfig(key="a", path="/cmd_vel").field is None
    assert StreamConfig(**vars(s)) == s  # as the store's attributes record it
    for bad, match in (
        ({"path": "/a.b", "topic": "/a"}, "not both"),
        ({"topic": "/a", "field": "position[0:a]"}, "bad field path 'position\\[0:a\\]'"),
        ({"topic": "/a", "field": "position[::0]"}, "step cannot be 0"),
        ({"topic": "/a", "field": "pose..x"}, "bad field path"),
        ({"path": "/a[0]"}, "bad topic"),
        ({}, "bad topic"),
    ):
        with pytest.raises(ConfigError, match=match):
            StreamConfig(key="obs/x", **bad)


def test_paths_on_standard_messages():
    from robot_rl.ros import messages as m

    store = m.ros2_typestore()
    types = m.bag_types(store)
    odom = m.make_odometry(types, 0.0, 1.0, 2.0, 0.5, 1.2, 0.1)
    traj = m.make_joint_trajectory(types, 0.0, ["a", "b", "c"], [0.5, 1.5, 2.5], 0.1)
    for msg, path, want in (
        (odom, "pose.pose.position.x", [1.0]),
        (odom, "twist.twist.linear", [1.2, 0.0, 0.0]),
        (odom, "pose.covariance[-2:]", [0.0, 0.0]),
        (traj, "points[0].positions[::2]", [0.5, 2.5]),
        (traj, "points[0].time_from_start", [0.0, 100_000_000.0]),
    ):
        steps = parse_field_path(path)
        assert check_path(store.fielddefs, msg.__msgtype__, steps) is None, path
        np.testing.assert_array_equal(read_path(msg, steps), want, err_msg=path)
    assert "has 36 values: [40] is out of range" in check_path(
        store.fielddefs, "nav_msgs/msg/Odometry", parse_field_path("pose.covariance[40]")
    )


def test_bad_paths_one_error_before_reading(tmp_path):
    write_bag(tmp_path / "bag", "mcap")
    streams = [
        {"key": "obs/a", "topic": "/arm/state", "field": "positon[0:3]"},
        {"key": "obs/b", "path": "/arm/state.tool.position.w"},
        {"key": "obs/c", "path": "/arm/state.header.frame_id"},
        {"key": "obs/d", "topic": "/arm/state"},
        {"key": "obs/e", "path": "/arm/state.position[0:7]"},  # 5 values: found on the first message
        {"key": "obs/f", "path": "/gains.data.x"},
        {"key": "obs/g", "topic": "/cmd_vel", "field": "linear[0]"},
    ]
    with pytest.raises(ConfigError) as info:
        import_rosbag(
            tmp_path / "bag", tmp_path / "x.zarr", RosbagImportConfig(streams=streams), progress=False
        )
    text = str(info.value)
    fields = "header (std_msgs/msg/Header), position (float64[]), tool (geometry_msgs/msg/Pose), fingers"
    assert f"stream obs/a (/arm/state, {ARM_STATE}), path 'positon[0:3]'" in text
    assert f"{ARM_STATE} has no field 'positon'; its fields: {fields}" in text
    assert "tool.position has no field 'w'; its fields: x (float64), y (float64), z (float64)" in text
    assert "header.frame_id (string) holds no numbers" in text
    assert f"stream obs/d (/arm/state, {ARM_STATE}): robot_rl has no converter" in text
    assert "path 'position[0:7]': position has 5 values: [0:7] is out of range" in text
    assert "data is float64[], not a message" in text
    assert "linear is geometry_msgs/msg/Vector3, not an array" in text
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "x.zarr.importing").exists()
    # The first message's check is not repeated for the stream that fits.
    ok = RosbagImportConfig(streams=[{"key": "obs/e", "path": "/arm/state.position[0:5]"}])
    assert import_rosbag(tmp_path / "bag", tmp_path / "y.zarr", ok, progress=False)["steps"] > 0


def strip_definition(bag, how):
    """Make the sqlite3 bag lack ArmState's definition, as rosbag2 recorders do: no row (Humble has
    no table at all), an empty encoding (Iron and later), or an empty text without a hash."""
    db = next(Path(bag).glob("*.db3"))
    con = sqlite3.connect(db)
    if how == "no row":
        con.execute("DELETE FROM message_definitions WHERE topic_type = ?", (ARM_STATE,))
    elif how == "empty encoding":
        con.execute(
            "UPDATE message_definitions SET encoding = '', encoded_message_definition = '' "
            "WHERE topic_type = ?",
            (ARM_STATE,),
        )
    else:
        con.execute(
            "UPDATE message_definitions SET encoded_message_definition = '', type_description_hash = ''"
        )
        con.execute("UPDATE topics SET type_description_hash = ''")
        meta = Path(bag, "metadata.yaml")
        text = meta.read_text()
        for digest in {line.split()[-1] for line in text.splitlines() if "RIHS01_" in line}:
            text = text.replace(digest, "''")
        meta.write_text(text)
    con.commit()
    con.close()


@pytest.mark.parametrize("how", ["no row", "empty encoding", "empty text"])
def test_a_bag_without_the_definition(tmp_path, how):
    write_bag(tmp_path / "bag", "sqlite3")
    strip_definition(tmp_path / "bag", how)
    cfg = RosbagImportConfig(**CONFIG)
    with pytest.raises(ConfigError) as info:
        import_rosbag(tmp_path / "bag", tmp_path / "x.zarr", cfg, progress=False)
    text = str(info.value)
    assert f"topic /arm/state has type {ARM_STATE} and the bag holds no definition of it" in text
    assert "msg_definitions" in text and text.count(ARM_STATE) <= 2  # one error, not one per stream
    if how == "empty encoding":
        return  # rosbags cannot open such a sqlite3 bag at all; the error says so
    # The definitions in the config fill the gap (ArmState's .msg names Finger, also needed).
    (tmp_path / "ArmState.msg").write_text(ARM_STATE_MSG)
    definitions = {ARM_STATE: str(tmp_path / "ArmState.msg")}
    with pytest.raises(ConfigError, match="nor of my_lab_msgs/msg/Finger, which it uses"):
        import_rosbag(
            tmp_path / "bag", tmp_path / "x.zarr", RosbagImportConfig(**CONFIG, msg_definitions=definitions)
        )
    definitions["my_lab_msgs/Finger"] = FINGER_MSG  # a type name without /msg/, the text inline
    (tmp_path / "import.yaml").write_text(json.dumps(dict(CONFIG, msg_definitions=definitions)))
    argv = ["dataset", "import-rosbag", str(tmp_path / "bag"), str(tmp_path / "i.zarr")]
    assert main([*argv, "--config", str(tmp_path / "import.yaml")]) == 0
    check_store(tmp_path / "i.zarr")


def test_variable_length_arrays_and_bag_errors(tmp_path):
    write_bag(tmp_path / "bag", "mcap")
    cfg = RosbagImportConfig(streams=[{"key": "obs/fingers", "path": "/arm/state.fingers[0].angle"}])
    # A file of the bag folder opens the folder.
    assert import_rosbag(next((tmp_path / "bag").glob("*.mcap")), tmp_path / "a.zarr", cfg, progress=False)
    with pytest.raises(DatasetError, match="cannot read the bag"):
        import_rosbag(tmp_path / "nobag", tmp_path / "b.zarr", cfg, progress=False)
    # A whole sequence whose length changes cannot be stacked: the error says where.
    store = get_typestore(Stores.ROS2_HUMBLE)
    writer = Writer(tmp_path / "var", version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    conn = writer.add_connection("/gains", "std_msgs/msg/Float64MultiArray", typestore=store)
    layout = store.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    for i in range(10):
        msg = store.types["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.zeros(4 if i < 5 else 3))
        writer.write(conn, 10**9 + i * 10**8, store.serialize_cdr(msg, msg.__msgtype__))
    writer.close()
    cfg = RosbagImportConfig(streams=[{"key": "obs/gain", "path": "/gains.data"}])
    with pytest.raises(DatasetError, match=r"shape \(3,\) at t=1.500 s, \(4,\) in the first message"):
        import_rosbag(tmp_path / "var", tmp_path / "c.zarr", cfg, progress=False)
