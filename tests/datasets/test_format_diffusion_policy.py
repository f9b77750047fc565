"""diffusion_policy zarr ReplayBuffer import and export (robot_rl/datasets/formats/diffusion_policy.py).

diffusion_policy is not on PyPI and runs on zarr 2, which cannot sit beside zarr 3 here. The export
is read as its ReplayBuffer reads it (diffusion_policy/common/replay_buffer.py: `zarr.open` of a
format-2 group, data arrays sliced to meta/episode_ends[-1], copied without recompression), through
zarr 3's format-2 path; the files zarr 2 reads (.zgroup, .zarray with a numcodecs Blosc compressor)
are checked on disk. (Checked once by hand with zarr 2.18.3 and diffusion_policy's ReplayBuffer:
`copy_from_path(..., keys=['img', 'state', 'action'])` and `create_from_path` read it, and a buffer it
saved imports.)
"""

import json

import numcodecs
import numpy as np
import pytest
import zarr

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore


@pytest.fixture(scope="module")
def exported(collected_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion_policy") / "reach_replay.zarr"
    assert main(["dataset", "export", str(collected_store), str(out), "--to", "diffusion_policy"]) == 0
    return out


def same(a: EpisodeStore, b: EpisodeStore) -> None:
    assert a.schema == b.schema
    assert np.array_equal(a.episode_ends, b.episode_ends)
    for key in a.keys:
        assert np.array_equal(a.array(key)[:], b.array(key)[:]), key
    assert a.fps == b.fps and a.attrs.get("task") == b.attrs.get("task")


def test_round_trip_is_exact(collected_store, exported, tmp_path):
    back = tmp_path / "back.zarr"
    assert main(["dataset", "import", str(exported), str(back), "--from", "diffusion_policy"]) == 0
    a, b = EpisodeStore.open(collected_store), EpisodeStore.open(back)
    same(a, b)
    assert len(a.keys) == 8 and a.fps == 20.0 and a.attrs["task"]
    assert b.attrs["source"] == f"diffusion_policy:{exported.resolve()}"


def test_replay_buffer_reads_it(collected_store, exported):
    source = EpisodeStore.open(collected_store)
    assert (exported / ".zgroup").is_file() and not (exported / "zarr.json").exists()
    for folder in ("data", "meta"):
        assert json.loads((exported / folder / ".zgroup").read_text()) == {"zarr_format": 2}
    root = zarr.open_group(str(exported), mode="r", zarr_format=2)  # ReplayBuffer: zarr.open(path, 'r')
    ends = root["meta"]["episode_ends"][:]
    assert ends.dtype == np.int64 and np.array_equal(ends, source.episode_ends)
    names = {"img": "obs/image/front", "state": "obs/state", "action": "action", "reward": "reward"}
    names.update({k: k for k in ("terminated", "truncated", "intervened", "safety_hold")})
    assert {name for name, _ in root["data"].members()} == set(names)  # arrays only, no groups
    for name, array in root["data"].arrays():  # ReplayBuffer.__init__: every array covers the ends
        values = array[: ends[-1]]
        assert values.shape[0] == ends[-1]
        assert np.array_equal(values, source.array(names[name])[:]), name
        assert values.dtype == np.dtype(source.schema[names[name]]["dtype"])
        meta = json.loads((exported / "data" / name / ".zarray").read_text())
        assert meta["zarr_format"] == 2 and meta["chunks"][1:] == meta["shape"][1:]  # time chunks only
        assert meta["compressor"] == {
            "id": "blosc",
            "cname": "lz4",
            "clevel": 5,
            "shuffle": 0,
            "blocksize": 0,
        }
        assert numcodecs.get_codec(meta["compressor"]) == numcodecs.Blosc("lz4", 5, numcodecs.Blosc.NOSHUFFLE)
    image = root["data"]["img"]
    assert image.dtype == np.uint8 and image.shape[1:] == (32, 32, 3)  # HWC, as pusht's img
    assert root["data"]["state"].dtype == np.float32 and root["data"]["state"].shape[1:] == (12,)
    assert root.attrs["robot_rl"]["fps"] == 20.0


def test_several_cameras(tmp_path):
    path = tmp_path / "two.zarr"
    schema = {"obs/image/wrist": ((8, 8, 3), "uint8"), "obs/image/front": ((8, 8, 3), "uint8")}
    schema.update(
        {"obs/state": ((2,), "float32"), "action": ((2,), "float32"), "obs/extra/depth": ((1,), "float32")}
    )
    rng = np.random.default_rng(0)
    with EpisodeStore.create(path, schema, fps=15, attrs={"task": "stack"}) as store:
        for n in (3, 4):
            store.append_episode(
                {
                    k: rng.integers(0, 256, (n, *s)).astype(d)
                    if d == "uint8"
                    else rng.random((n, *s)).astype(d)
                    for k, (s, d) in schema.items()
                }
            )
    out, back = tmp_path / "two_replay.zarr", tmp_path / "back.zarr"
    assert main(["dataset", "export", str(path), str(out), "--to", "diffusion_policy"]) == 0
    root = zarr.open_group(str(out), mode="r", zarr_format=2)
    assert {n for n, _ in root["data"].members()} == {
        "camera_0",
        "camera_1",
        "state",
        "action",
        "extra_depth",
    }
    assert np.array_equal(root["data"]["camera_1"][:], EpisodeStore.open(path).array("obs/image/wrist")[:])
    assert main(["dataset", "import", str(out), str(back), "--from", "diffusion_policy"]) == 0
    same(EpisodeStore.open(path), EpisodeStore.open(back))  # the names recorded in .zattrs come back
    zarr.open_group(str(out), mode="r+", zarr_format=2).attrs.put({})  # as another tool would write it
    bare = tmp_path / "bare.zarr"
    assert main(["dataset", "import", str(out), str(bare), "--from", "diffusion_policy"]) == 0
    store = EpisodeStore.open(bare)
    assert set(store.keys) == {
        "obs/image/camera_0",
        "obs/image/camera_1",
        "obs/state",
        "action",
        "extra_depth",
    }
    assert store.fps == 10.0 and store.attrs["task"] is None  # the yaml's default rate


def write_pusht(path, img=None):
    """A buffer as diffusion_policy saves PushT's (float32 img 0-255, float64 state from numpy,
    keypoint, n_contacts) plus a real-robot timestamp at 12.5 Hz."""
    rng = np.random.default_rng(0)
    n, ends = 9, np.array([4, 9], dtype=np.int64)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    blosc = numcodecs.Blosc("lz4", 5, numcodecs.Blosc.NOSHUFFLE)
    arrays = {
        "img": rng.integers(0, 256, (n, 16, 16, 3)).astype(np.float32) if img is None else img,
        "state": rng.random((n, 5)),
        "keypoint": rng.random((n, 9, 2)).astype(np.float32),
        "n_contacts": rng.random((n, 1)).astype(np.float32),
        "action": rng.random((n, 2)),
        "timestamp": 1.7e9 + np.arange(n) * 0.08,
    }
    for name, value in arrays.items():
        root.create_array(
            f"data/{name}", shape=value.shape, chunks=value.shape, dtype=value.dtype, compressors=blosc
        )
        root[f"data/{name}"][:] = value
    root.create_array("meta/episode_ends", shape=(2,), chunks=(2,), dtype=np.int64, compressors=None)
    root["meta/episode_ends"][:] = ends
    return arrays


def test_import_of_a_pusht_buffer(tmp_path):
    src, out = tmp_path / "pusht.zarr", tmp_path / "pusht_store.zarr"
    arrays = write_pusht(src)
    assert main(["dataset", "import", str(src), str(out), "--from", "diffusion_policy"]) == 0
    store = EpisodeStore.open(out)
    assert list(store.episode_ends) == [4, 9] and store.fps == 12.5  # from data/timestamp
    assert set(store.keys) == {"obs/image/img", "obs/state", "action", "keypoint", "n_contacts", "timestamp"}
    assert store.schema["obs/image/img"] == {"shape": [16, 16, 3], "dtype": "uint8"}
    assert np.array_equal(store.array("obs/image/img")[:], arrays["img"].astype(np.uint8))
    assert store.schema["obs/state"]["dtype"] == store.schema["action"]["dtype"] == "float32"
    assert store.schema["timestamp"]["dtype"] == "float64"  # other keys keep their dtype
    assert np.array_equal(store.array("timestamp")[:], arrays["timestamp"])


def test_train_diffusion_bc_on_the_import(exported, tmp_path, diffusion_bc_trains):
    imported = tmp_path / "imported.zarr"
    assert main(["dataset", "import", str(exported), str(imported), "--from", "diffusion_policy"]) == 0
    diffusion_bc_trains(imported)


def test_refusals(collected_store, tmp_path, refused):
    out = str(tmp_path / "out.zarr")
    (tmp_path / "folder").mkdir()
    line = refused("dataset", "import", str(tmp_path / "folder"), out, "--from", "diffusion_policy")
    assert "is not a" in line and "ReplayBuffer" in line
    no_ends = tmp_path / "no_ends.zarr"
    zarr.open_group(str(no_ends), mode="w", zarr_format=2).require_group("data")
    line = refused("dataset", "import", str(no_ends), out, "--from", "diffusion_policy")
    assert "not a diffusion_policy ReplayBuffer (no meta" in line
    src = tmp_path / "pusht.zarr"
    write_pusht(src, img=np.full((9, 16, 16, 3), 0.5, dtype=np.float32))
    line = refused("dataset", "import", str(src), out, "--from", "diffusion_policy")
    assert "img is float32 but not whole numbers 0-255" in line and not (tmp_path / "out.zarr").exists()
    key = "obs/state=robot_eef_pose"
    line = refused("dataset", "import", str(src), out, "--from", "diffusion_policy", "--key", key)
    assert "has no robot_eef_pose for obs/state" in line and "keypoint" in line
    bad = str(tmp_path / "bad.zarr")
    line = refused(
        "dataset", "export", str(collected_store), bad, "--to", "diffusion_policy", "--key", "action=a/b"
    )
    assert "data holds arrays, not folders" in line and not (tmp_path / "bad.zarr").exists()
