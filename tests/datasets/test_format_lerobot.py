"""LeRobotDataset v3.0 export and import (robot_rl/datasets/formats/lerobot.py).

A store from `robot-rl collect` goes out to LeRobot's layout and back: every non-image key equal
bit for bit, the camera within the codec's loss, fps, task and episode boundaries kept. The
exported folder is checked as LeRobot's code reads it (src/lerobot/datasets/utils.py, io_utils.py,
dataset_metadata.py, dataset_reader.py, video_utils.py, compute_stats.py: info.json's fields,
the parquet columns and types that `get_hf_features_from_features` expects, the episodes
metadata, every frame of a video at from_timestamp + timestamp within its 1e-4 s tolerance).
LeRobot itself needs Python >= 3.12 and is not installed here.
"""

import io
import json
import shutil

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore
from robot_rl.datasets.formats import export_dataset, import_dataset, lerobot
from robot_rl.errors import DatasetError

STATS = {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
DEFAULT_FEATURES = {  # lerobot/utils/constants.py
    "timestamp": {"dtype": "float32", "shape": [1]},
    "frame_index": {"dtype": "int64", "shape": [1]},
    "episode_index": {"dtype": "int64", "shape": [1]},
    "index": {"dtype": "int64", "shape": [1]},
    "task_index": {"dtype": "int64", "shape": [1]},
}
INFO_FIELDS = {  # lerobot/datasets/utils.py DatasetInfo
    "codebase_version",
    "fps",
    "features",
    "total_episodes",
    "total_frames",
    "total_tasks",
    "chunks_size",
    "data_files_size_in_mb",
    "video_files_size_in_mb",
    "data_path",
    "video_path",
    "robot_type",
    "splits",
}


@pytest.fixture(scope="module")
def exported(collected_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("lerobot") / "reach_lerobot"
    assert main(["dataset", "export", str(collected_store), str(out), "--to", "lerobot"]) == 0
    return out


@pytest.fixture(scope="module")
def imported(exported):
    """Imported with the cameras kept as decoded (Blosc): the frames LeRobot's video holds."""
    out = exported.with_name("back.zarr")
    assert (
        main(["dataset", "import", str(exported), str(out), "--from", "lerobot", "--camera-codec", "blosc"])
        == 0
    )
    return out


def test_by_default_its_cameras_stay_video(exported, imported):
    out = exported.with_name("back_video.zarr")
    assert main(["dataset", "import", str(exported), str(out), "--from", "lerobot"]) == 0
    with EpisodeStore.open(out) as video, EpisodeStore.open(imported) as frames:
        assert video.schema["obs/image/front"]["codec"] == "video"
        a, b = (s.array("obs/image/front")[:].astype(float) for s in (video, frames))
        assert 10 * np.log10(255**2 / np.mean((a - b) ** 2)) > 30  # PSNR of the second encoding


def check_lerobot_v3(root) -> dict:
    """Assert the v3.0 layout as LeRobot reads it; {(video feature, episode): its frames decoded
    straight through the file}."""
    info = json.loads((root / "meta/info.json").read_text())
    assert set(info) <= INFO_FIELDS
    assert info["codebase_version"] == "v3.0" and isinstance(info["fps"], int) and info["fps"] > 0
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["splits"] == {"train": f"0:{info['total_episodes']}"} and info["total_tasks"] == 1
    assert min(info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) > 0
    features, fps = info["features"], info["fps"]
    for name, spec in DEFAULT_FEATURES.items():
        assert {k: features[name][k] for k in spec} == spec
    assert not any("/" in name for name in features)
    videos = [n for n, ft in features.items() if ft["dtype"] == "video"]
    if videos:
        assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"

    # data/: the columns of get_hf_features_from_features, rows in global index order
    paths = sorted(root.glob("data/*/*.parquet"))
    data = pa.concat_tables([pq.read_table(p) for p in paths])
    columns = [n for n in features if n not in videos]
    assert data.column_names == columns and data.num_rows == info["total_frames"]
    for name in columns:
        value = pa.from_numpy_dtype(np.dtype(features[name]["dtype"]))
        shape = features[name]["shape"]
        assert data.schema.field(name).type == (value if shape == [1] else pa.list_(value, shape[0])), name
    assert data.column("index").to_pylist() == list(range(info["total_frames"]))

    # meta/episodes: what load_episodes and the reader look up
    episodes = pa.concat_tables([pq.read_table(p) for p in sorted(root.glob("meta/episodes/*/*.parquet"))])
    rows = episodes.to_pylist()
    assert [r["episode_index"] for r in rows] == list(range(info["total_episodes"]))
    needed = {"episode_index", "tasks", "length", "data/chunk_index", "data/file_index"}
    needed |= {
        "dataset_from_index",
        "dataset_to_index",
        "meta/episodes/chunk_index",
        "meta/episodes/file_index",
    }
    needed |= {
        f"videos/{v}/{c}"
        for v in videos
        for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
    }
    needed |= {f"stats/{f}/{s}" for f in features for s in STATS}
    assert needed <= set(episodes.column_names)
    episode_index = data.column("episode_index").to_numpy()
    frame_index = data.column("frame_index").to_numpy()
    timestamps = data.column("timestamp").to_numpy()
    assert sum(r["length"] for r in rows) == info["total_frames"]
    row_groups = {}
    for r in rows:
        lo, hi = r["dataset_from_index"], r["dataset_to_index"]
        assert hi - lo == r["length"] and np.all(episode_index[lo:hi] == r["episode_index"])
        assert np.array_equal(frame_index[lo:hi], np.arange(r["length"]))
        assert np.allclose(timestamps[lo:hi], np.arange(r["length"]) / fps)
        path = root / info["data_path"].format(
            chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]
        )
        row_groups[path] = row_groups.get(path, 0) + 1
    assert all(pq.ParquetFile(p).num_row_groups == n for p, n in row_groups.items())  # a row group an episode
    assert set(row_groups) == set(paths)

    # videos/: many episodes a file, frame k of an episode at from_timestamp + k / fps
    decoded = {}
    for name in videos:
        video_info = features[name]["info"]
        assert video_info["video.codec"] in ("av1", "h264") and video_info["video.pix_fmt"] == "yuv420p"
        assert [video_info["video.height"], video_info["video.width"], 3] == features[name]["shape"]
        assert video_info["video.fps"] == fps and video_info["is_depth_map"] is False
        files = {}
        for r in rows:
            files.setdefault((r[f"videos/{name}/chunk_index"], r[f"videos/{name}/file_index"]), []).append(r)
        for (chunk, file), in_file in files.items():
            path = root / info["video_path"].format(video_key=name, chunk_index=chunk, file_index=file)
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                assert stream.codec.canonical_name == video_info["video.codec"]
                frames = [
                    (float(f.pts * stream.time_base), f.to_ndarray(format="rgb24"))
                    for f in container.decode(stream)
                ]
            at = np.array([t for t, _ in frames])
            assert len(frames) == sum(r["length"] for r in in_file)
            assert np.allclose(at, np.arange(len(frames)) / fps, atol=1e-4)
            end = 0.0
            for r in in_file:
                start, stop = r[f"videos/{name}/from_timestamp"], r[f"videos/{name}/to_timestamp"]
                assert start == pytest.approx(end) and stop - start == pytest.approx(r["length"] / fps)
                query = start + timestamps[r["dataset_from_index"] : r["dataset_to_index"]]
                nearest = np.abs(query[:, None] - at[None, :]).argmin(1)
                assert np.abs(at[nearest] - query).max() <= 1e-4  # LeRobotDataset's tolerance_s
                decoded[name, r["episode_index"]] = np.stack([frames[i][1] for i in nearest])
                end = stop

    # meta/stats.json and the tasks
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats) == set(features)
    for name, feature_stats in stats.items():
        assert set(feature_stats) == STATS
        shape = (3, 1, 1) if name in videos else tuple(features[name]["shape"])
        assert all(np.shape(v) == shape for k, v in feature_stats.items() if k != "count"), name
        assert np.all(np.array(feature_stats["min"]) <= np.array(feature_stats["mean"]) + 1e-9)
        assert name in videos or feature_stats["count"] == [info["total_frames"]]
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == [
        "task"
    ]  # pd.read_parquet's index
    assert tasks.column("task_index").to_pylist() == [0]
    assert all(r["tasks"] == tasks.column("task").to_pylist() for r in rows)
    return decoded


def test_an_export_is_a_lerobot_v3_dataset(collected_store, exported):
    decoded = check_lerobot_v3(exported)
    info = json.loads((exported / "meta/info.json").read_text())
    with EpisodeStore.open(collected_store) as store:
        assert info["fps"] == 20 and info["total_episodes"] == store.n_episodes == 2
        assert info["total_frames"] == store.n_steps and info["robot_type"] == store.attrs["robot"]
        assert info["features"]["observation.state"]["names"] == store.attrs["state_names"]
        assert info["features"]["observation.images.front"]["shape"] == [32, 32, 3]
        assert {"next.reward", "next.done", "next.truncated", "complementary_info.is_intervention"} <= set(
            info["features"]
        )
        task = pq.read_table(exported / "meta/tasks.parquet").column("task").to_pylist()
        assert task == [store.attrs["task"]]
        data = pq.read_table(sorted(exported.glob("data/*/*.parquet"))[0])
        assert np.array_equal(
            np.stack(data.column("action").to_numpy(zero_copy_only=False)), store.array("action")[:]
        )
        stats = json.loads((exported / "meta/stats.json").read_text())
        assert np.allclose(stats["observation.state"]["mean"], store.stats("obs/state")["mean"], atol=1e-6)
        for e in range(store.n_episodes):
            frames = store.episode(e, ["obs/image/front"])["obs/image/front"]
            assert np.abs(decoded["observation.images.front", e].astype(int) - frames).mean() < 4


def test_a_round_trip_keeps_every_key(collected_store, imported, exported):
    decoded = check_lerobot_v3(exported)
    with EpisodeStore.open(collected_store) as before, EpisodeStore.open(imported) as after:
        shapes = {k: (s["shape"], s["dtype"]) for k, s in before.schema.items()}
        assert {k: (s["shape"], s["dtype"]) for k, s in after.schema.items()} == shapes
        assert after.keys == before.keys
        assert np.array_equal(after.episode_ends, before.episode_ends)
        assert after.fps == before.fps == 20.0 and after.attrs["task"] == before.attrs["task"]
        assert after.attrs["source"].startswith("lerobot:")
        for key in before.keys:
            old, new = before.array(key)[:], after.array(key)[:]
            if key.startswith("obs/image/"):
                assert np.abs(old.astype(int) - new).mean() < 4  # AV1 at crf 30 on 32x32 renders: ~2.7
            else:
                assert old.dtype == new.dtype and np.array_equal(old, new), key
        for e in range(before.n_episodes):  # the seeks land on the frames a straight decode gives
            assert np.array_equal(
                after.episode(e, ["obs/image/front"])["obs/image/front"],
                decoded["observation.images.front", e],
            )
        assert np.allclose(after.stats("obs/state")["std"], before.stats("obs/state")["std"])


def synthetic_store(path, lengths=(30, 7, 9, 12), extra: dict | None = None):
    """Episodes of odd and even lengths whose frames are flat colours numbered by step, so a frame
    off by one shows."""
    schema = {
        "obs/image/wrist": ((16, 24, 3), np.uint8),
        "obs/state": ((4,), np.float32),
        "action": ((2,), np.float64),
        "reward": ((), np.float32),
        "terminated": ((), np.bool_),
        **{k: (v.shape[1:], v.dtype) for k, v in (extra or {}).items()},
    }
    rng = np.random.default_rng(0)
    with EpisodeStore.create(
        path, schema, fps=10, attrs={"task": "stack the cubes", "robot": "toy"}
    ) as store:
        t = 0
        for n in lengths:
            level = (np.arange(t, t + n) * 37) % 200 + 20
            frames = np.empty((n, 16, 24, 3), np.uint8)
            frames[..., 0], frames[..., 1] = level[:, None, None], 255 - level[:, None, None]
            frames[..., 2] = 128
            episode = {
                "obs/image/wrist": frames,
                "obs/state": rng.normal(size=(n, 4)).astype(np.float32),
                "action": rng.normal(size=(n, 2)),
                "reward": rng.random(n).astype(np.float32),
                "terminated": np.arange(n) == n - 1,
                **{k: v[t : t + n] for k, v in (extra or {}).items()},
            }
            store.append_episode(episode)
            t += n
    return path


def test_files_split_at_their_size_and_chunks_roll_over(tmp_path, monkeypatch):
    store = synthetic_store(tmp_path / "toy.zarr")
    monkeypatch.setattr(lerobot, "DATA_FILES_SIZE_IN_MB", 1e-9)  # each file closes after an episode
    monkeypatch.setattr(lerobot, "VIDEO_FILES_SIZE_IN_MB", 1e-9)
    monkeypatch.setattr(lerobot, "CHUNKS_SIZE", 2)
    out = tmp_path / "toy_lerobot"
    summary = export_dataset(store, out, "lerobot", progress=False)
    assert summary["episodes"] == 4 and summary["frames"] == 58 and summary["fps"] == 10
    decoded = check_lerobot_v3(out)
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    data_files = [(r["data/chunk_index"], r["data/file_index"]) for r in episodes]
    assert data_files == [(0, 0), (0, 1), (1, 0), (1, 1)]
    video = [
        (r["videos/observation.images.wrist/chunk_index"], r["videos/observation.images.wrist/file_index"])
        for r in episodes
    ]
    assert video[0] == (0, 0) and video[1] != video[0]  # 30 frames: past the encoder's delay, so measured

    back = tmp_path / "back.zarr"
    assert import_dataset(out, back, "lerobot", progress=False, camera_codec="blosc")["episodes"] == 4
    with EpisodeStore.open(store) as before, EpisodeStore.open(back) as after:
        assert np.array_equal(after.episode_ends, before.episode_ends) and after.fps == 10.0
        for key in ("obs/state", "action", "reward", "terminated"):
            assert np.array_equal(after.array(key)[:], before.array(key)[:]), key
        old, new = (
            before.array("obs/image/wrist")[:].astype(int),
            after.array("obs/image/wrist")[:].astype(int),
        )
        per_frame = np.abs(old - new).mean(axis=(1, 2, 3))
        assert per_frame.max() < 4 and np.abs(old[1:] - new[:-1]).mean(axis=(1, 2, 3)).min() > 10
        for e in range(4):
            assert np.array_equal(
                after.episode(e, ["obs/image/wrist"])["obs/image/wrist"],
                decoded["observation.images.wrist", e],
            )


def test_a_key_without_a_lerobot_name_is_refused_until_given_one(tmp_path):
    store = synthetic_store(
        tmp_path / "toy.zarr", lengths=(3, 2), extra={"obs/tool": np.zeros((5, 2), np.float32)}
    )
    with pytest.raises(DatasetError, match="no LeRobot name for obs/tool") as refused:
        export_dataset(store, tmp_path / "out", "lerobot", progress=False)
    assert "\n" not in str(refused.value) and not (tmp_path / "out").exists()
    export_dataset(store, tmp_path / "out", "lerobot", keys={"obs/tool": "observation.tool"}, progress=False)
    info = json.loads((tmp_path / "out/meta/info.json").read_text())
    assert info["features"]["observation.tool"] == {"dtype": "float32", "shape": [2], "names": None}
    # and back: the feature has no store key by default, then it has the one given
    with pytest.raises(DatasetError, match="no store key for the LeRobot feature.*observation.tool"):
        import_dataset(tmp_path / "out", tmp_path / "back.zarr", "lerobot", progress=False)
    import_dataset(
        tmp_path / "out",
        tmp_path / "back.zarr",
        "lerobot",
        keys={"obs/tool": "observation.tool"},
        progress=False,
    )
    with EpisodeStore.open(tmp_path / "back.zarr") as back:
        assert back.schema["obs/tool"] == {"shape": [2], "dtype": "float32"}


def test_image_features_are_read_from_their_png_bytes(tmp_path, collected_store, exported):
    """LeRobot's `image` dtype (datasets' Image in the parquet) instead of a video: lossless."""
    copy = tmp_path / "images"
    shutil.copytree(exported, copy)
    shutil.rmtree(copy / "videos")
    info = json.loads((copy / "meta/info.json").read_text())
    name = "observation.images.front"
    info["features"][name] = {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channel"]}
    info["video_path"] = None
    (copy / "meta/info.json").write_text(json.dumps(info))
    with EpisodeStore.open(collected_store) as store:
        frames = store.array("obs/image/front")[:]
    pngs = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="png")
        pngs.append({"bytes": buffer.getvalue(), "path": None})
    path = copy / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    column = pa.array(pngs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(table.add_column(0, name, column), path)
    back = tmp_path / "back.zarr"
    import_dataset(copy, back, "lerobot", progress=False, camera_codec="blosc")
    with EpisodeStore.open(back) as after:
        assert np.array_equal(after.array("obs/image/front")[:], frames)


def damage(kind: str):
    def change(root):
        info = json.loads((root / "meta/info.json").read_text())
        if kind == "version":
            info["codebase_version"] = "v2.1"
        elif kind == "unmapped":
            info["features"]["observation.environment_state"] = {
                "dtype": "float32",
                "shape": [3],
                "names": None,
            }
        elif kind == "text":
            info["features"]["language_instruction"] = {"dtype": "string", "shape": [1], "names": None}
        elif kind == "tasks":
            path = root / "meta/episodes/chunk-000/file-000.parquet"
            table = pq.read_table(path)
            tasks = pa.array([["reach"], ["push"]], type=pa.list_(pa.string()))
            pq.write_table(table.set_column(table.column_names.index("tasks"), "tasks", tasks), path)
        elif kind == "video":
            next((root / "videos").rglob("*.mp4")).unlink()
        elif kind == "data":
            next((root / "data").rglob("*.parquet")).unlink()
        (root / "meta/info.json").write_text(json.dumps(info))

    return change


@pytest.mark.parametrize(
    "kind, says",
    [
        ("version", "is LeRobotDataset v2.1; only v3.0 is read"),
        ("unmapped", "no store key for the LeRobot feature(s) observation.environment_state"),
        ("text", "a store cannot hold language_instruction (string)"),
        ("tasks", "holds 2 tasks ('push', 'reach'...); a store holds one task"),
        ("video", "videos/observation.images.front/chunk-000/file-000.mp4 is missing"),
        ("data", "data/chunk-000/file-000.parquet is missing"),
    ],
)
def test_what_cannot_be_imported_is_one_line_and_exit_2(tmp_path, exported, refused, kind, says):
    copy = tmp_path / "damaged"
    shutil.copytree(exported, copy)
    damage(kind)(copy)
    line = refused(
        "dataset", "import", str(copy), str(tmp_path / "out.zarr"), "--from", "lerobot", alone=True
    )
    assert says in line, line
    assert not (tmp_path / "out.zarr").exists() and not list(tmp_path.glob(".out.zarr*"))


def test_diffusion_bc_trains_on_an_imported_store(imported, diffusion_bc_trains):
    diffusion_bc_trains(imported)
