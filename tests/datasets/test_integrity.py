"""Damaged stores, built on real zarr on disk: every kind of damage is refused or reported with the
store, key and steps, never read as zeros or garbage, and never written over."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore, WindowSampler
from robot_rl.errors import DatasetError

SCHEMA = {"obs/state": ((4,), "float32"), "obs/image/cam": ((8, 8, 3), "uint8"), "action": ((2,), "float32")}
LENGTHS = [40, 30, 50]  # image chunks of 32 steps: episode 1 (steps 40-69) lies in chunks 1 and 2


def episode(length, seed):
    rng = np.random.default_rng(seed)
    return {
        "obs/state": rng.normal(size=(length, 4)).astype(np.float32),
        "obs/image/cam": rng.integers(0, 255, size=(length, 8, 8, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, size=(length, 2)).astype(np.float32),
    }


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s.zarr"
    with EpisodeStore.create(path, SCHEMA, fps=10, attrs={"task": "t"}) as store:
        for i, n in enumerate(LENGTHS):
            store.append_episode(episode(n, i))
    return path


def image_chunk(path, t):
    return path / "data/obs/image/cam/c" / str(t) / "0/0/0"


def damage(chunk, how):
    if how == "deleted":
        chunk.unlink()
    elif how == "truncated":
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    elif how == "random bytes":
        chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    elif how == "one flipped byte":  # Blosc may decode this without complaint: only the checksum sees it
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))


def test_every_chunk_carries_a_checksum_that_zarr_itself_verifies(store_path):
    import zarr

    meta = json.loads((store_path / "data/obs/image/cam/zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]][-1] == "crc32c"
    # zarr's own reader (not ours) decodes the chunks our writer wrote, checksums included
    np.testing.assert_array_equal(
        zarr.open_array(str(store_path / "data/action"), mode="r")[:40], episode(40, 0)["action"]
    )


@pytest.mark.parametrize("how", ["deleted", "truncated", "random bytes", "one flipped byte"])
def test_a_damaged_data_chunk_is_an_error_naming_the_key_and_steps(store_path, how):
    damage(image_chunk(store_path, 3), how)  # steps 96-119: the last episode's
    if how == "deleted":  # found on open, without reading any chunk
        with pytest.raises(DatasetError, match=r"obs/image/cam steps 96-119 are missing"):
            EpisodeStore.open(store_path)
        return
    store = EpisodeStore.open(store_path)
    np.testing.assert_array_equal(store.episode(1)["obs/image/cam"], episode(30, 1)["obs/image/cam"])
    with pytest.raises(DatasetError, match=r"data/obs/image/cam steps 96-119 are corrupt"):
        store.episode(2)
    # the sampler's reads, straight from the chunk files, see the same
    cam = store.array("obs/image/cam")
    np.testing.assert_array_equal(cam.chunk(64, 96), cam[64:96])
    with pytest.raises(DatasetError, match=r"data/obs/image/cam steps 96-119 are corrupt"):
        cam.chunk(96, 120)
    sampler = WindowSampler(store, horizon=4, n_obs=2, cache_mb=0)
    with pytest.raises(DatasetError, match=r"data/obs/image/cam steps 96-119 are corrupt"):
        sampler.windows(np.arange(len(sampler)))


@pytest.mark.parametrize("how", ["deleted", "reordered", "corrupt", "beyond the data"])
def test_damaged_episode_ends_are_refused_and_never_written_over(store_path, how):
    ends_chunk = store_path / "meta/episode_ends/c/0"
    if how == "deleted":
        ends_chunk.unlink()
    elif how == "corrupt":
        damage(ends_chunk, "random bytes")
    else:
        import zarr

        ends = zarr.open_array(str(store_path / "meta/episode_ends"), mode="r+")
        ends[:] = [70, 40, 120] if how == "reordered" else [40, 70, 500]
    before = {p: p.read_bytes() for p in store_path.rglob("*") if p.is_file() and p.name != ".writer.lock"}
    for mode in ("r", "a"):
        with pytest.raises(DatasetError, match="episode_ends"):
            EpisodeStore.open(store_path, mode=mode)
    with pytest.raises(DatasetError, match="episode_ends"):
        EpisodeStore.open_or_create(store_path, SCHEMA, fps=10)
    after = {p: p.read_bytes() for p in store_path.rglob("*") if p.is_file() and p.name != ".writer.lock"}
    assert after == before


def test_schema_and_arrays_must_agree(store_path):
    meta = json.loads((store_path / "meta/zarr.json").read_text())
    meta["attributes"]["schema"]["action"]["shape"] = [3]
    (store_path / "meta/zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="data/action does not match its schema"):
        EpisodeStore.open(store_path)
    shutil.rmtree(store_path / "data/action")
    with pytest.raises(DatasetError, match="data/action is missing"):
        EpisodeStore.open(store_path)
    (store_path / "meta/zarr.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read episode store"):
        EpisodeStore.open(store_path)


def test_collect_refuses_a_store_with_lost_metadata(store_path, tmp_path, capsys, monkeypatch):
    """The case that lost data: a missing episode_ends chunk read as 0 episodes, then written over."""
    monkeypatch.chdir(tmp_path)
    (store_path / "meta/episode_ends/c/0").unlink()
    before = sorted(p.name for p in store_path.rglob("*"))
    assert main(["collect", "env=reach", "episodes=1", f"out={store_path}", "env.cameras=[]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "episode_ends is missing" in err[0]
    assert sorted(p.name for p in store_path.rglob("*")) == before


CREATE_CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from robot_rl.datasets import EpisodeStore, WindowSampler
    schema = {f"obs/k{i}": ((4,), "float32") for i in range(400)}  # many arrays: creation takes a while
    print("creating", flush=True)
    with EpisodeStore.create(sys.argv[1], schema, fps=10) as store:
        store.append_episode({k: np.zeros((3, 4), np.float32) for k in schema})
    print("created", flush=True)
    """
)


def test_a_kill_during_creation_leaves_nothing_or_a_valid_store(tmp_path):
    """SIGKILL at moments spread over a creation (~0.8 s for 400 arrays): the path holds nothing or
    a valid store, never a folder that later runs refuse; the next create clears the leftover."""
    outcomes = set()
    for i, delay_s in enumerate(np.linspace(0.0, 1.2, 7)):
        path = tmp_path / f"new{i}.zarr"
        child = subprocess.Popen(
            [sys.executable, "-c", CREATE_CHILD, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "creating"
        time.sleep(delay_s)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        leftover = [p for p in tmp_path.iterdir() if p.name.startswith(f".{path.name}.creating-")]
        if path.exists():
            assert EpisodeStore.open(path).n_episodes in (0, 1)
            outcomes.add("store")
        else:
            outcomes.add("leftover" if leftover else "nothing")
            EpisodeStore.create(path, {"obs/x": ((1,), "float32")}, fps=10).close()
            assert EpisodeStore.open(path).keys == ["obs/x"]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{path.name}.")]
    assert "leftover" in outcomes  # at least one kill landed inside the creation


def test_overwrite_replaces_the_store_whole(store_path):
    EpisodeStore.create(store_path, {"obs/x": ((1,), "float32")}, fps=5, overwrite=True).close()
    store = EpisodeStore.open(store_path)
    assert store.keys == ["obs/x"] and store.n_episodes == 0
    assert not [p for p in store_path.parent.iterdir() if p.name.startswith(".s.zarr.")]


def test_verify_lists_the_damage_and_repair_copies_the_intact_episodes(store_path, tmp_path, capsys):
    assert main(["dataset", "verify", str(store_path)]) == 0
    assert "whole" in capsys.readouterr().out
    damage(image_chunk(store_path, 1), "truncated")  # steps 32-63: episodes 0 and 1
    assert main(["dataset", "verify", str(store_path)]) == 1
    out = capsys.readouterr().out
    assert "obs/image/cam steps 32-63" in out and "episodes 0, 1" in out and "corrupt" in out

    repaired = tmp_path / "repaired.zarr"
    assert main(["dataset", "repair", str(store_path), str(repaired)]) == 0
    assert "kept 1 of 3 episodes" in capsys.readouterr().out
    with EpisodeStore.open(repaired) as store:
        assert store.n_episodes == 1 and store.attrs["task"] == "t" and store.fps == 10
        for key in SCHEMA:
            np.testing.assert_array_equal(store.episode(0)[key], episode(50, 2)[key])
        assert store.stats("action")["max"].shape == (2,)
    assert main(["dataset", "verify", str(repaired)]) == 0
    # never in place, never over an existing store
    assert main(["dataset", "repair", str(store_path), str(store_path)]) == 2
    assert main(["dataset", "repair", str(store_path), str(repaired)]) == 2


def test_verify_reports_missing_chunks_and_broken_metadata(store_path, capsys):
    image_chunk(store_path, 3).unlink()  # steps 96-119: episode 2
    assert main(["dataset", "verify", str(store_path)]) == 1
    out = capsys.readouterr().out
    assert "obs/image/cam steps 96-119" in out and "missing" in out and "episodes 2" in out
    (store_path / "meta/episode_ends/c/0").unlink()
    assert main(["dataset", "verify", str(store_path)]) == 1
    assert "episode_ends is missing" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["dataset", "info"], ["dataset", "show"]])
def test_cli_readers_stop_at_damage_with_one_line(store_path, tmp_path, capsys, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    damage(image_chunk(store_path, 0), "random bytes")
    code = main([*command, str(store_path)])
    err = capsys.readouterr().err.strip().splitlines()
    if command[1] == "info":  # info reads metadata only: the store opens and says what it holds
        assert code == 0
    else:
        assert code == 2 and len(err) == 1 and "obs/image/cam steps 0-31 are corrupt" in err[0]
    os.remove(image_chunk(store_path, 0))
    assert main([*command, str(store_path)]) == 2
    assert "missing" in capsys.readouterr().err


def test_stores_without_checksums_still_open_and_read(tmp_path, capsys):
    """Stores written before checksums: zarr skipped all-zero chunks there, which read as zeros
    rightly, so a chunk that is not on disk is not damage in them; verify says what it cannot see."""
    path = tmp_path / "old.zarr"
    with EpisodeStore.create(path, {**SCHEMA, "reward": ((), "float32")}, fps=10, checksums=False) as store:
        store.append_episode({**episode(40, 0), "reward": np.zeros(40, np.float32)})
    (path / "data/reward/c/0").unlink()  # what zarr's write_empty_chunks=False left out
    with EpisodeStore.open(path) as store:
        assert not store.checksums and store.array("reward")[:].tolist() == [0.0] * 40
        np.testing.assert_array_equal(store.episode(0)["action"], episode(40, 0)["action"])
    assert main(["dataset", "verify", str(path)]) == 0
    assert "predates checksums" in capsys.readouterr().out


def test_a_create_racing_another_never_replaces_its_store(tmp_path, monkeypatch):
    """Two processes creating the same new store: the second rename fails instead of replacing the
    first one's store (whose writer would then write, by path, into the other's)."""
    import robot_rl.datasets.store as store_module

    path = tmp_path / "race.zarr"
    real = store_module.remove_dead_leftovers

    def the_other_process_wins(p):  # runs after create's "already exists?" check
        monkeypatch.setattr(store_module, "remove_dead_leftovers", real)
        with EpisodeStore.create(path, SCHEMA, fps=10) as other:
            other.append_episode(episode(5, 0))
        real(p)

    monkeypatch.setattr(store_module, "remove_dead_leftovers", the_other_process_wins)
    with pytest.raises(DatasetError, match="created by another process meanwhile"):
        EpisodeStore.create(path, {"obs/x": ((1,), "float32")}, fps=10)
    with EpisodeStore.open(path) as store:
        assert store.keys == list(SCHEMA) and store.n_episodes == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".race.zarr.")]
