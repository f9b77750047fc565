"""A writer SIGKILLed mid-episode: earlier episodes intact, the partial one absent, appends go on.

Real processes, real zarr on disk: the child appends three episodes, announces the fourth (a
large one, so the kill lands inside its write), and the parent kills it with SIGKILL.
"""

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

from robot_rl.datasets import EpisodeStore
from robot_rl.datasets.store import IMAGE_CHUNK_STEPS

CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from robot_rl.datasets import EpisodeStore

    def episode(length, seed):
        rng = np.random.default_rng(seed)
        return {"obs/state": rng.normal(size=(length, 9)).astype(np.float32),
                "obs/image/cam": rng.integers(0, 255, size=(length, 84, 84, 3), dtype=np.uint8),
                "action": rng.normal(size=(length, 7)).astype(np.float32)}

    path = sys.argv[1]
    schema = {
        "obs/state": ((9,), "float32"),
        "obs/image/cam": ((84, 84, 3), "uint8"),
        "action": ((7,), "float32"),
    }
    store = EpisodeStore.open_or_create(path, schema, fps=10)
    start = store.n_episodes
    for i in range(start, start + 3):
        store.append_episode(episode(50 + i, i))
    big = episode(8000, 999)
    print("writing", flush=True)
    store.append_episode(big)  # killed during this
    print("finished", flush=True)
    """
)


def episode(length, seed):
    rng = np.random.default_rng(seed)
    return {
        "obs/state": rng.normal(size=(length, 9)).astype(np.float32),
        "obs/image/cam": rng.integers(0, 255, size=(length, 84, 84, 3), dtype=np.uint8),
        "action": rng.normal(size=(length, 7)).astype(np.float32),
    }


def run_and_kill(path, delay_s):
    """Kill after `delay_s`, or (delay None) as soon as the first chunk of the new episode is on disk."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    if delay_s is None:
        committed = EpisodeStore.open(path).n_steps
        first_new = path / "data/obs/image/cam/c" / str(committed // IMAGE_CHUNK_STEPS + 1)
        deadline = time.monotonic() + 10
        while not first_new.exists() and time.monotonic() < deadline:
            time.sleep(0.0005)
    else:
        time.sleep(delay_s)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("delays", [(None, 0.1), (0.02, None)])
def test_sigkill_mid_episode_loses_only_that_episode(tmp_path, delays):
    path = tmp_path / "crash.zarr"
    committed = 0
    for delay in delays:  # two crashes in a row: the store must survive both
        run_and_kill(path, delay)
        committed += 3
        store = EpisodeStore.open(path)
        # The kill landed inside the write: data of the partial episode is on disk, uncommitted.
        assert zarr.open_array(str(path / "data/obs/state"), mode="r").shape[0] > store.n_steps
        assert store.n_episodes == committed
        lengths = [50 + i for i in range(committed)]
        np.testing.assert_array_equal(store.episode_lengths, lengths)
        for i in range(committed):
            expected = episode(50 + i, i)
            got = store.episode(i)
            for key in expected:
                np.testing.assert_array_equal(got[key], expected[key])

    # Appending continues where the committed data ends, over whatever the crash left behind.
    with EpisodeStore.open(path, mode="a") as store:
        assert not list(path.rglob("*.partial"))
        store.append_episode(episode(10, 123))
    store = EpisodeStore.open(path)
    assert store.n_episodes == committed + 1
    np.testing.assert_array_equal(store.episode(-1)["obs/image/cam"], episode(10, 123)["obs/image/cam"])
    np.testing.assert_array_equal(store.episode(0)["action"], episode(50, 0)["action"])
