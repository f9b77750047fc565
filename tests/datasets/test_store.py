"""EpisodeStore on real zarr on disk: round trip, schema checks, statistics, layout."""

import json

import numpy as np
import pytest
import zarr

from robot_rl.datasets import EpisodeStore
from robot_rl.errors import DatasetError, SchemaMismatchError

SCHEMA = {
    "obs/state": ((4,), "float32"),
    "obs/image/cam": ((8, 8, 3), "uint8"),
    "action": ((2,), "float32"),
    "terminated": ((), "bool"),
}


def episode(length, seed):
    rng = np.random.default_rng(seed)
    return {
        "obs/state": rng.normal(size=(length, 4)).astype(np.float32),
        "obs/image/cam": rng.integers(0, 255, size=(length, 8, 8, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, size=(length, 2)).astype(np.float32),
        "terminated": np.arange(length) == length - 1,
    }


def test_round_trip(tmp_path):
    episodes = [episode(n, i) for i, n in enumerate([5, 40, 1, 17])]
    with EpisodeStore.create(
        tmp_path / "s.zarr", SCHEMA, fps=10, attrs={"robot": "test_arm", "task": "t"}
    ) as store:
        for i, ep in enumerate(episodes):
            assert store.append_episode(ep) == i
    store = EpisodeStore.open(tmp_path / "s.zarr")
    assert store.n_episodes == 4 and store.n_steps == 63
    np.testing.assert_array_equal(store.episode_ends, [5, 45, 46, 63])
    for i, ep in enumerate(episodes):
        got = store.episode(i)
        for key in SCHEMA:
            np.testing.assert_array_equal(got[key], ep[key])
    np.testing.assert_array_equal(store.episode(-1)["action"], episodes[-1]["action"])
    info = store.info()
    assert info["episodes"] == 4 and info["steps"] == 63 and info["robot"] == "test_arm" and info["fps"] == 10
    assert info["keys"]["obs/image/cam"] == {"shape": [8, 8, 3], "dtype": "uint8"}
    assert info["size_bytes"] > 0


def test_layout_matches_the_design(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10)
    store.append_episode(episode(50, 0))
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert root["meta/episode_ends"].dtype == np.int64
    image = root["data/obs/image/cam"]
    assert image.chunks[0] < 50 and image.chunks[1:] == (8, 8, 3)  # chunked along time
    meta = json.loads((tmp_path / "s.zarr/data/obs/image/cam/zarr.json").read_text())
    blosc = [c for c in meta["codecs"] if c["name"] == "blosc"]
    assert blosc and blosc[0]["configuration"]["cname"] == "zstd"
    assert root["meta"].attrs["schema"]["action"] == {"shape": [2], "dtype": "float32"}


def test_statistics_match_numpy(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10)
    eps = [episode(n, i) for i, n in enumerate([30, 12, 7])]
    for ep in eps:
        store.append_episode(ep)
    state = np.concatenate([e["obs/state"] for e in eps]).astype(np.float64)
    stats = EpisodeStore.open(tmp_path / "s.zarr").stats("obs/state")
    np.testing.assert_allclose(stats["mean"], state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], state.std(0), rtol=1e-5)
    np.testing.assert_allclose(stats["min"], state.min(0))
    np.testing.assert_allclose(stats["max"], state.max(0))
    with pytest.raises(DatasetError, match="image"):
        store.stats("obs/image/cam")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e.pop("action"), "missing action"),
        (lambda e: e.update(extra=np.zeros(5)), "unexpected extra"),
        (
            lambda e: e.update(action=np.zeros((5, 3), np.float32)),
            r"action is \(3,\) float32, the store has \(2,\) float32",
        ),
        (lambda e: e.update(action=np.zeros((5, 2), np.float64)), "float64"),
        (lambda e: e.update(action=np.zeros((4, 2), np.float32)), "same number of steps"),
        (lambda e: e["obs/state"].__setitem__((0, 0), np.nan), "NaN"),
    ],
)
def test_append_refuses_a_schema_mismatch(tmp_path, change, message):
    store = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10)
    store.append_episode(episode(5, 0))
    bad = episode(5, 1)
    change(bad)
    with pytest.raises(SchemaMismatchError, match=message):
        store.append_episode(bad)
    assert EpisodeStore.open(tmp_path / "s.zarr").n_episodes == 1


def test_open_or_create_checks_the_schema_of_an_existing_store(tmp_path):
    EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10).close()
    other = dict(SCHEMA, action=((3,), "float32"))
    with pytest.raises(SchemaMismatchError, match="action"):
        EpisodeStore.open_or_create(tmp_path / "s.zarr", other, fps=10)


def test_clear_errors_for_bad_paths(tmp_path):
    with pytest.raises(DatasetError, match="no episode store"):
        EpisodeStore.open(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(DatasetError, match="not an episode store"):
        EpisodeStore.open(tmp_path / "empty.zarr")
    EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10).close()
    with pytest.raises(DatasetError, match="already exists"):
        EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10)


def test_read_only_and_single_writer(tmp_path):
    writer = EpisodeStore.create(tmp_path / "s.zarr", SCHEMA, fps=10)
    with pytest.raises(DatasetError, match="another process is writing"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    reader = EpisodeStore.open(tmp_path / "s.zarr")
    with pytest.raises(DatasetError, match="read-only"):
        reader.append_episode(episode(3, 0))
    writer.close()
    EpisodeStore.open(tmp_path / "s.zarr", mode="a").close()


def test_add_key_after_a_killed_add_key(tmp_path):
    """An array that a killed add_key wrote before the schema named it is replaced, not an error."""
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path, {"obs/state": ((2,), "float32")}, fps=10)
    store.append_episode({"obs/state": np.zeros((5, 2), np.float32)})
    store._root.create_array("data/reward_x", shape=(3,), dtype="float32")  # the leftover
    store.add_key("reward_x", np.arange(5, dtype=np.float32), {"source": "test"})
    store.close()
    with EpisodeStore.open(path) as s:
        assert s.keys == ["obs/state", "reward_x"] and s.array("reward_x")[:].tolist() == [0, 1, 2, 3, 4]
        assert s.key_attrs("reward_x") == {"source": "test"}
        with pytest.raises(DatasetError, match="read-only"):
            s.add_key("reward_y", np.zeros(5))


def test_codec_per_key(tmp_path):
    """A key's Blosc settings come from the schema (default: zstd with bit-shuffle for cameras),
    are what zarr records and reads, and what the direct chunk reader decodes; settings Blosc does
    not have are refused when the store is created."""
    import zarr

    lz4 = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}
    schema = {
        "obs/image/front": ((8, 8, 3), "uint8"),
        "obs/image/wrist": {"shape": [8, 8, 3], "dtype": "uint8", "codec": lz4},
        "action": {
            "shape": [2],
            "dtype": "float32",
            "codec": {"cname": "zstd", "clevel": 1, "shuffle": "noshuffle"},
        },
    }
    rng = np.random.default_rng(0)
    episodes = [
        {
            "obs/image/front": rng.integers(0, 255, (n, 8, 8, 3), np.uint8),
            "obs/image/wrist": rng.integers(0, 255, (n, 8, 8, 3), np.uint8),
            "action": rng.normal(size=(n, 2)).astype(np.float32),
        }
        for n in (40, 30)
    ]
    with EpisodeStore.create(tmp_path / "s.zarr", schema, fps=10) as store:
        for ep in episodes:
            store.append_episode(ep)
    blosc = {
        key: next(
            c
            for c in zarr.open_array(str(tmp_path / "s.zarr/data" / key)).metadata.codecs
            if "Blosc" in type(c).__name__
        )
        for key in schema
    }
    assert (blosc["obs/image/front"].cname.value, blosc["obs/image/front"].shuffle.value) == (
        "zstd",
        "bitshuffle",
    )
    assert (blosc["obs/image/wrist"].cname.value, blosc["obs/image/wrist"].shuffle.value) == (
        "lz4",
        "bitshuffle",
    )
    assert (blosc["action"].clevel, blosc["action"].shuffle.value) == (1, "noshuffle")
    with EpisodeStore.open(tmp_path / "s.zarr") as store:
        assert store.schema["obs/image/wrist"]["codec"]["cname"] == "lz4"
        for key in schema:
            whole = np.concatenate([ep[key] for ep in episodes])
            np.testing.assert_array_equal(store.array(key)[:70], whole)
            size = store.array(key).chunks[0]
            for lo in range(0, 70, size):
                np.testing.assert_array_equal(
                    store.array(key).chunk(lo, min(lo + size, 70)), whole[lo : lo + size]
                )
    for bad in ({"cname": "gzip"}, {"clevel": 12}, {"shuffle": "bytes"}, {"level": 3}):
        with pytest.raises(DatasetError, match="action: codec .* is not a Blosc codec"):
            EpisodeStore.create(
                tmp_path / "bad.zarr", {"action": {"shape": [2], "dtype": "float32", "codec": bad}}, fps=10
            )
    assert not (tmp_path / "bad.zarr").exists()
