"""WindowSampler against a hand-computed example and against a naive reference implementation."""

import numpy as np
import pytest

from robot_rl.datasets import EpisodeStore, WindowSampler
from robot_rl.datasets.sampler import OUT_OF_CORE_GROUP
from robot_rl.errors import ConfigError, DatasetError
from robot_rl.learners.diffusion_bc import DiffusionBCConfig


def make_store(path, lengths, image=False):
    schema = {"obs/state": ((1,), "float32"), "action": ((1,), "float32")}
    if image:
        schema["obs/image/cam"] = ((2, 2, 3), "uint8")
    store = EpisodeStore.create(path, schema, fps=10)
    t0 = 0
    for length in lengths:
        t = np.arange(t0, t0 + length)
        ep = {"obs/state": t[:, None].astype(np.float32), "action": (100 + t)[:, None].astype(np.float32)}
        if image:
            ep["obs/image/cam"] = np.broadcast_to((t % 251)[:, None, None, None], (length, 2, 2, 3)).astype(
                np.uint8
            )
        store.append_episode(ep)
        t0 += length
    return store


def test_hand_computed_windows(tmp_path):
    # One episode of 5 steps (state 0..4, action 100..104); horizon 4, n_obs 2, n_action 3,
    # so pad_before = 1 and pad_after = 2: five windows, starting at steps -1, 0, 1, 2, 3.
    sampler = WindowSampler(make_store(tmp_path / "s.zarr", [5]), horizon=4, n_obs=2, n_action=3)
    assert len(sampler) == 5
    expected = [
        ([0, 0], [100, 100, 101, 102], [True, False, False, False]),
        ([0, 1], [100, 101, 102, 103], [False, False, False, False]),
        ([1, 2], [101, 102, 103, 104], [False, False, False, False]),
        ([2, 3], [102, 103, 104, 104], [False, False, False, True]),
        ([3, 4], [103, 104, 104, 104], [False, False, True, True]),
    ]
    for i, (state, action, pad) in enumerate(expected):
        w = sampler[i]
        assert w["obs/state"][:, 0].tolist() == state
        assert w["action"][:, 0].tolist() == action
        assert w["is_pad"].tolist() == pad


def test_windows_never_cross_episodes(tmp_path):
    sampler = WindowSampler(make_store(tmp_path / "s.zarr", [3, 4]), horizon=4, n_obs=1, n_action=4)
    for i in range(len(sampler)):
        a = sampler[i]["action"][:, 0]
        assert (a < 103).all() or (a >= 103).all()


def naive_window(episodes, e, idx, horizon, n_obs):
    ep = episodes[e]
    positions = np.clip(np.arange(idx, idx + horizon), 0, len(ep) - 1)
    pad = (np.arange(idx, idx + horizon) < 0) | (np.arange(idx, idx + horizon) >= len(ep))
    return ep[positions], ep[positions[:n_obs]], pad


@pytest.mark.parametrize("horizon, n_obs, n_action", [(16, 2, 8), (8, 1, 8), (5, 3, 2)])
def test_matches_a_naive_reference_across_chunk_boundaries(tmp_path, horizon, n_obs, n_action):
    lengths = [70, 3, 45, 33]  # image chunks hold 32 steps: windows straddle chunk boundaries
    store = make_store(tmp_path / "s.zarr", lengths, image=True)
    sampler = WindowSampler(store, horizon=horizon, n_obs=n_obs, n_action=n_action, cache_mb=0.001)
    episodes, t0 = [], 0
    for length in lengths:
        episodes.append(np.arange(t0, t0 + length))
        t0 += length
    i = 0
    for e, length in enumerate(lengths):
        for idx in range(-(n_obs - 1), length - horizon + n_action):
            act, obs, pad = naive_window(episodes, e, idx, horizon, n_obs)
            w = sampler[i]
            np.testing.assert_array_equal(w["action"][:, 0], 100 + act)
            np.testing.assert_array_equal(w["obs/state"][:, 0], obs)
            np.testing.assert_array_equal(w["obs/image/cam"][:, 0, 0, 0], obs % 251)
            np.testing.assert_array_equal(w["is_pad"], pad)
            i += 1
    assert i == len(sampler)
    assert sampler.cache.bytes <= max(
        sampler.cache.max_bytes, max(c.nbytes for c in sampler.cache._chunks.values())
    )


def test_batches(tmp_path):
    sampler = WindowSampler(make_store(tmp_path / "s.zarr", [20, 30], image=True), horizon=6, n_obs=2)
    batch = sampler.sample(7, np.random.default_rng(0))
    assert batch["obs/state"].shape == (7, 2, 1)
    assert batch["obs/image/cam"].shape == (7, 2, 2, 2, 3)
    assert batch["action"].shape == (7, 6, 1) and batch["is_pad"].shape == (7, 6)


def test_a_batch_is_its_windows_and_decodes_each_chunk_once(tmp_path):
    """Reading windows by batch gives what reading them one by one gives, and with no cache a
    batch decodes each chunk it touches once, not once per window."""
    lengths = [70, 3, 45, 33]
    sampler = WindowSampler(
        make_store(tmp_path / "s.zarr", lengths, image=True), horizon=8, n_obs=2, cache_mb=0
    )
    everything = np.random.default_rng(0).permutation(len(sampler))
    batch = sampler.windows(everything)
    for row, i in enumerate(everything):
        for key, value in sampler[int(i)].items():
            np.testing.assert_array_equal(batch[key][row], value)
    sampler.decodes = 0
    sampler.windows(everything)
    steps = sum(lengths)
    keys = ("obs/state", "action", "obs/image/cam")
    chunks = sum(-(-steps // sampler.store.array(k).chunks[0]) for k in keys)
    assert sampler.decodes == chunks  # every chunk is touched, each decoded once


def test_windows_drawn_by_chunk_are_uniform_over_the_dataset(tmp_path):
    """windows_per_chunk = 8: groups of 8 windows share the camera chunk their first step is in,
    fewer chunks are decoded per batch, and every window is still drawn equally often (a
    chi-square test over 96,000 draws)."""
    store = make_store(tmp_path / "s.zarr", [70, 3, 45, 33] * 10, image=True)  # 47 camera chunks
    grouped = WindowSampler(store, horizon=8, n_obs=2, cache_mb=0, windows_per_chunk=8)
    plain = WindowSampler(store, horizon=8, n_obs=2, cache_mb=0, windows_per_chunk=1)
    rng = np.random.default_rng(0)
    size = store.array("obs/image/cam").chunks[0]
    counts = np.zeros(len(grouped))
    for _ in range(1500):
        idx = grouped.draw(64, rng)
        np.add.at(counts, idx, 1)
        chunk_of = (grouped.indices[idx, 0] // size).reshape(8, 8)
        assert (chunk_of == chunk_of[:, :1]).all()
    expected = counts.sum() / len(counts)
    chi2, dof = ((counts - expected) ** 2 / expected).sum(), len(counts) - 1
    assert abs(chi2 / dof - 1) < 5 * np.sqrt(2 / dof), chi2 / dof  # within about 5 standard deviations
    for sampler in (grouped, plain):
        for _ in range(20):
            assert sampler.sample(64, rng)["action"].shape == (64, 8, 1)
    assert grouped.decodes < plain.decodes / 2


def test_windows_are_drawn_by_chunk_only_when_the_data_outgrow_the_cache(tmp_path):
    """The default ("auto"): i.i.d. draws while every sampled key fits the cache of decoded chunks,
    OUT_OF_CORE_GROUP windows to a chunk once they do not; a wrong value is refused."""
    store = make_store(tmp_path / "s.zarr", [70, 3, 45, 33], image=True)
    assert WindowSampler(store, horizon=8, n_obs=2).windows_per_chunk == 1
    assert WindowSampler(store, horizon=8, n_obs=2, cache_mb=0.001).windows_per_chunk == OUT_OF_CORE_GROUP
    assert WindowSampler(store, horizon=8, n_obs=2, cache_mb=0, windows_per_chunk=3).windows_per_chunk == 3
    for wrong in (0, "eight", 2.5, True):
        with pytest.raises(ValueError, match="windows_per_chunk"):
            WindowSampler(store, horizon=8, n_obs=2, windows_per_chunk=wrong)
        with pytest.raises(ConfigError, match="windows_per_chunk"):  # diffusion BC's setting, before any work
            DiffusionBCConfig(windows_per_chunk=wrong)


def test_episodes_too_short_for_any_window_are_one_clear_error(tmp_path):
    # horizon 8, n_action 4: pad_after 3, so an episode needs 5 steps for a window
    store = make_store(tmp_path / "s.zarr", [2, 4])
    with pytest.raises(DatasetError, match="no 8-step window fits .* an episode needs at least 5 steps"):
        WindowSampler(store, horizon=8, n_obs=1, n_action=4)
    assert len(WindowSampler(make_store(tmp_path / "t.zarr", [5]), horizon=8, n_obs=1, n_action=4)) == 1
