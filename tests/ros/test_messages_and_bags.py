"""ROS 2 messages built from the real definitions (the rosbags type store) and round-tripped
through CDR; the rosbag2 importer on bags written here in both storage formats."""

import json

import numpy as np
import pytest

pytest.importorskip("rosbags")

from robot_rl.cli import main  # noqa: E402
from robot_rl.datasets import EpisodeStore  # noqa: E402
from robot_rl.errors import ConfigError, DatasetError  # noqa: E402
from robot_rl.ros import messages as m  # noqa: E402
from robot_rl.ros.bag_import import RosbagImportConfig, import_rosbag  # noqa: E402

STORE = m.ros2_typestore()
TYPES = m.bag_types(STORE)


def roundtrip(msg):
    return STORE.deserialize_cdr(STORE.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def test_messages_round_trip_through_cdr():
    js = roundtrip(m.make_joint_state(TYPES, 12.25, ["b", "a"], [2.0, 1.0], [0.2, 0.1]))
    assert m.stamp_to_s(js.header.stamp) == 12.25
    np.testing.assert_array_equal(m.joint_state(js, ["a", "b"])["position"], [1.0, 2.0])
    np.testing.assert_array_equal(m.joint_state(js, ["a", "b"])["effort"], [0.0, 0.0])
    with pytest.raises(ConfigError, match="no joint c"):
        m.joint_state(js, ["c"])
    pose = roundtrip(m.make_pose_stamped(TYPES, 1.0, "base", [0.1, 0.2, 0.3, 0, 0, 0.70710678, 0.70710678]))
    np.testing.assert_allclose(m.pose(pose), [0.1, 0.2, 0.3, 0, 0, 0.70710678, 0.70710678])
    traj = roundtrip(m.make_joint_trajectory(TYPES, 1.0, ["a"], [0.5], 0.1))
    assert traj.points[0].time_from_start.nanosec == 100_000_000 and traj.points[0].positions[0] == 0.5
    np.testing.assert_array_equal(roundtrip(m.make_float64_array(TYPES, [1, 2])).data, [1.0, 2.0])
    np.testing.assert_allclose(
        m.ackermann(roundtrip(m.make_ackermann(TYPES, 0.0, 0.2, 1.5))), [0.2, 1.5], rtol=1e-6
    )
    np.testing.assert_allclose(m.twist(roundtrip(m.make_twist(TYPES, 1.0, -0.5))), [1.0, -0.5])
    odom = m.odometry(roundtrip(m.make_odometry(TYPES, 0.0, 1.0, 2.0, 0.5, 1.2, 0.1)))
    np.testing.assert_allclose(odom["pose"], [1.0, 2.0, 0.5])
    np.testing.assert_allclose(odom["velocity"], [1.2, 0, 0.1])
    np.testing.assert_allclose(
        m.imu(roundtrip(m.make_imu(TYPES, 0.0, [0, 0, 1], [0, 0, 9.8])))["accel"], [0, 0, 9.8]
    )
    rgb = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(m.image(roundtrip(m.make_image(TYPES, 0.0, rgb))), rgb)
    np.testing.assert_array_equal(
        m.image(roundtrip(m.make_image(TYPES, 0.0, rgb[..., ::-1].copy(), "bgr8"))), rgb
    )
    depth = np.arange(48, dtype=np.uint16).reshape(6, 8) * 100
    np.testing.assert_array_equal(m.image(roundtrip(m.make_image(TYPES, 0.0, depth, "16UC1"))), depth)
    np.testing.assert_array_equal(
        m.compressed_image(roundtrip(m.make_compressed_image(TYPES, 0.0, rgb))), rgb
    )  # png: lossless


def write_bag(path, storage, gap_s=2.0, drop_camera_after=None):
    """Two episodes of 2 s (joint states 50 Hz, camera 15 Hz, commands 20 Hz), a gap between them."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(path, version=8, storage_plugin=plugin)
    writer.open()
    conns = {
        topic: writer.add_connection(topic, kind, typestore=STORE)
        for topic, kind in (
            ("/joint_states", "sensor_msgs/msg/JointState"),
            ("/camera/image_raw", "sensor_msgs/msg/Image"),
            ("/cmd_vel", "geometry_msgs/msg/Twist"),
        )
    }
    events = []
    for start in (100.0, 102.0 + gap_s):
        for i in range(100):
            t = start + i / 50
            events.append((t, "/joint_states", m.make_joint_state(TYPES, t, ["j1", "j2"], [t, -t])))
        for i in range(30):
            t = start + i / 15
            if drop_camera_after is None or t < drop_camera_after:
                pixels = np.full((4, 6, 3), int(t * 10) % 256, np.uint8)
                events.append((t, "/camera/image_raw", m.make_image(TYPES, t, pixels)))
        for i in range(40):
            t = start + i / 20
            events.append((t, "/cmd_vel", m.make_twist(TYPES, t, 0.0)))  # Twist has no header: bag time
    for t, topic, msg in sorted(events, key=lambda e: e[0]):
        writer.write(conns[topic], int(t * 1e9), STORE.serialize_cdr(msg, msg.__msgtype__))
    writer.close()


CONFIG = {
    "fps": 10,
    "tolerance_s": 0.04,
    "episodes": {"gap_s": 1.0},
    "task": "wave",
    "streams": [
        {"key": "obs/state", "topic": "/joint_states", "names": ["j2", "j1"]},
        {"key": "obs/image/front", "topic": "/camera/image_raw"},
        {"key": "action", "topic": "/cmd_vel"},
    ],
}


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_import_both_storage_formats(tmp_path, storage):
    bag = tmp_path / "bag"
    write_bag(bag, storage)
    result = import_rosbag(bag, tmp_path / "out.zarr", RosbagImportConfig(**CONFIG), progress=False)
    assert result["episodes"] == 2
    with EpisodeStore.open(tmp_path / "out.zarr") as store:
        assert store.attrs["task"] == "wave" and store.attrs["topics"]["obs/state:/joint_states"] == 200
        state, action = store.array("obs/state")[: store.n_steps], store.array("action")[: store.n_steps]
        stamps = store.array("timestamp")[: store.n_steps]
        # Aligned: at every tick the state (j2, j1) = (-t, t) and the command's speed = t,
        # to within the tolerance.
        np.testing.assert_allclose(state[:, 1], stamps, atol=0.021)
        np.testing.assert_allclose(state[:, 0], -stamps, atol=0.021)
        np.testing.assert_allclose(action[:, 0], stamps, atol=0.026)
        assert np.allclose(np.diff(stamps[: store.episode_ends[0]]), 0.1)
        assert store.array("obs/image/front")[0].shape == (4, 6, 3)


def test_missing_topic_gap_and_dropped_frames(tmp_path):
    bag = tmp_path / "bag"
    write_bag(bag, "mcap", drop_camera_after=101.0)  # the camera dies 1 s into episode 1
    result = import_rosbag(bag, tmp_path / "a.zarr", RosbagImportConfig(**CONFIG), progress=False)
    # Episode 1 ends when the camera goes quiet for good; episode 2 has no camera at all: skipped.
    assert result["episodes"] == 1 and result["steps"] <= 10
    bad = dict(CONFIG, streams=[*CONFIG["streams"], {"key": "obs/x", "topic": "/nope"}])
    with pytest.raises(DatasetError, match="no topic /nope"):
        import_rosbag(bag, tmp_path / "b.zarr", RosbagImportConfig(**bad), progress=False)
    assert not (tmp_path / "b.zarr").exists() and not (tmp_path / "b.zarr.importing").exists()
    with pytest.raises(DatasetError, match="exists"):
        import_rosbag(bag, tmp_path / "a.zarr", RosbagImportConfig(**CONFIG), progress=False)


def test_interpolated_alignment_and_the_cli(tmp_path, capsys):
    bag = tmp_path / "bag"
    write_bag(bag, "sqlite3")
    (tmp_path / "import.yaml").write_text(json.dumps(dict(CONFIG, align="interpolate", tolerance_s=0.02)))
    assert (
        main(
            [
                "dataset",
                "import-rosbag",
                str(bag),
                str(tmp_path / "i.zarr"),
                "--config",
                str(tmp_path / "import.yaml"),
            ]
        )
        == 0
    )
    with EpisodeStore.open(tmp_path / "i.zarr") as store:
        stamps = store.array("timestamp")[: store.n_steps]
        np.testing.assert_allclose(
            store.array("obs/state")[: store.n_steps, 1], stamps, atol=1e-4
        )  # exact, not nearest
    both = dict(
        CONFIG,
        streams=[
            {"key": "obs/state", "topic": "/joint_states", "names": ["j1"]},
            {"key": "obs/state", "topic": "/joint_states", "names": ["j2"]},
        ],
    )
    import_rosbag(
        bag, tmp_path / "two.zarr", RosbagImportConfig(**both), progress=False
    )  # two streams, one topic
    with EpisodeStore.open(tmp_path / "two.zarr") as store:
        state = store.array("obs/state")[: store.n_steps]
        np.testing.assert_allclose(state[:, 0], -state[:, 1])
    assert (
        main(
            [
                "dataset",
                "import-rosbag",
                str(tmp_path / "nobag"),
                str(tmp_path / "x.zarr"),
                "--config",
                str(tmp_path / "import.yaml"),
            ]
        )
        == 2
    )
    assert "cannot read the bag" in capsys.readouterr().err
