"""Camera keys stored as video (`codec: video`): frames come back within the codec's loss, every
window reads the same frames as the whole array (frame-accurate seeking), a kill mid-append
loses only that episode, and a damaged or missing video is one line naming it."""

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


def camera_like(length: int, seed: int, size: int = 48) -> np.ndarray:
    """A moving smooth scene with sensor noise: what a real camera gives (not flat frames)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    t = np.arange(length)[:, None, None] / 20
    base = np.stack([np.sin(6 * x + t + c) * np.cos(4 * y - t) for c in (0, 1, 2)], -1)
    return np.clip(128 + 80 * base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def episode(length: int, seed: int, size: int = 48) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "obs/state": rng.normal(size=(length, 4)).astype(np.float32),
        "obs/image/cam": camera_like(length, seed, size),
        "action": rng.normal(size=(length, 2)).astype(np.float32),
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB: above 30 dB is what video codecs call good quality (the
    codec also smooths away part of the sensor noise, which counts as error here)."""
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b) ** 2)))


SCHEMA = {
    "obs/state": ((4,), "float32"),
    "obs/image/cam": {"shape": (48, 48, 3), "dtype": "uint8", "codec": "video"},
    "action": ((2,), "float32"),
}


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "video.zarr"
    with EpisodeStore.create(path, SCHEMA, fps=10) as store:
        for i in range(3):
            store.append_episode(episode(30 + 7 * i, i))
    return path


def test_frames_come_back_within_the_codecs_loss_and_windows_match(store_path):
    store = EpisodeStore.open(store_path)
    assert store.schema["obs/image/cam"]["codec"] == "video"
    assert not (store_path / "data" / "obs" / "image" / "cam").exists()  # no raw frames beside
    for i in range(3):
        original, got = episode(30 + 7 * i, i), store.episode(i)
        np.testing.assert_array_equal(got["obs/state"], original["obs/state"])  # other keys exact
        assert got["obs/image/cam"].shape == original["obs/image/cam"].shape
        assert psnr(got["obs/image/cam"], original["obs/image/cam"]) > 30
    whole = store.array("obs/image/cam")[:]
    sampler = WindowSampler(store, horizon=8, n_obs=3, n_action=4)
    for i in range(len(sampler)):  # every window: the frames at its steps, padding included
        window, (start, stop, first, _) = sampler[i], sampler.indices[i]
        frames = whole[start:stop][: 3 - first]
        np.testing.assert_array_equal(window["obs/image/cam"][first : first + len(frames)], frames)
    assert store.verify() == []


def test_odd_sized_frames_and_the_cli_reader(tmp_path, capsys):
    path = tmp_path / "odd.zarr"
    schema = {"obs/image/cam": {"shape": (33, 45, 3), "dtype": "uint8", "codec": "video"}}
    frames = camera_like(20, 5, size=45)[:, :33]
    with EpisodeStore.create(path, schema, fps=15) as store:  # 4:2:0 needs even sides: 4:4:4 here
        store.append_episode({"obs/image/cam": frames})
    got = EpisodeStore.open(path).episode(0)["obs/image/cam"]
    assert got.shape == frames.shape and psnr(got, frames) > 30
    assert main(["dataset", "info", str(path)]) == 0
    assert "uint8  (video)" in capsys.readouterr().out


CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from test_video_store import SCHEMA, episode
    from robot_rl.datasets import EpisodeStore

    store = EpisodeStore.open_or_create(sys.argv[1], SCHEMA, fps=10)
    for i in range(3):
        store.append_episode(episode(30 + 7 * i, i))
    print("writing", flush=True)
    store.append_episode(episode(1500, 99))  # killed during this
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize("when", ["encoding", "video written"])
def test_a_kill_mid_append_loses_only_that_episode(tmp_path, when):
    path = tmp_path / "crash.zarr"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(__import__("pathlib").Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "writing"
    new_video = path / "video" / "obs" / "image" / "cam" / "000000003.mp4"
    deadline = time.monotonic() + 30
    while when == "video written" and not new_video.exists() and time.monotonic() < deadline:
        time.sleep(0.0005)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    store = EpisodeStore.open(path)
    assert store.n_episodes == 3 and store.verify() == []
    for i in range(3):
        frames = store.episode(i)["obs/image/cam"]
        assert psnr(frames, episode(30 + 7 * i, i)["obs/image/cam"]) > 30
    with EpisodeStore.open(path, mode="a") as writer:  # the next append replaces the leftovers
        writer.append_episode(episode(12, 7))
    store = EpisodeStore.open(path)
    assert store.n_episodes == 4 and len(store.episode(3)["obs/image/cam"]) == 12 and store.verify() == []


def test_a_damaged_or_missing_video_is_one_line_naming_it(store_path, tmp_path, capsys):
    video = store_path / "video" / "obs" / "image" / "cam" / "000000001.mp4"
    data = bytearray(video.read_bytes())
    data[len(data) // 2] ^= 0xFF
    video.write_bytes(bytes(data))
    store = EpisodeStore.open(store_path)
    np.testing.assert_array_equal(store.episode(0)["obs/state"], episode(30, 0)["obs/state"])
    with pytest.raises(DatasetError, match="obs/image/cam episode 1 fails its checksum"):
        store.episode(1)
    (damage,) = store.verify()
    assert damage["key"] == "obs/image/cam" and damage["episodes"] == [1]
    assert main(["dataset", "repair", str(store_path), str(tmp_path / "ok.zarr")]) == 0
    assert EpisodeStore.open(tmp_path / "ok.zarr").n_episodes == 2
    video.unlink()
    with pytest.raises(DatasetError, match="obs/image/cam steps 30-66 are missing"):
        EpisodeStore.open(store_path)


def test_codec_video_is_for_camera_keys_only(tmp_path):
    with pytest.raises(DatasetError, match="only camera keys"):
        EpisodeStore.create(
            tmp_path / "x.zarr", {"action": {"shape": [2], "dtype": "float32", "codec": "video"}}, fps=10
        )
