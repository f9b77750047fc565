"""Preference reward model: Bradley-Terry by hand, recovery of a known ordering from labels, and
relabeling that adds a key with provenance while every original key stays byte-identical."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore
from robot_rl.errors import ConfigError, DatasetError
from robot_rl.labeling.vlm import PairConfig, sample_pairs
from robot_rl.learners.reward_model import (
    PreferenceRewardModel,
    RewardModelConfig,
    RewardModelTrainConfig,
    bradley_terry_loss,
    train_reward_model,
)


def test_bradley_terry_by_hand():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    labels = torch.tensor([0, 1])  # first pair: a preferred; second: b preferred
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-2.0))) / 2
    assert bradley_terry_loss(a, b, labels).item() == pytest.approx(expected, rel=1e-6)


@pytest.fixture
def store(tmp_path):
    """20 episodes of a 2-D state whose first coordinate is the (hidden) progress."""
    path = tmp_path / "s.zarr"
    rng = np.random.default_rng(0)
    s = EpisodeStore.create(
        path,
        {
            "obs/state": ((2,), "float32"),
            "action": ((1,), "float32"),
            "reward": ((), "float32"),
            "terminated": ((), "bool"),
        },
        fps=10,
        attrs={"task": "go right"},
    )
    for _ in range(20):
        n = int(rng.integers(20, 40))
        x = np.cumsum(rng.uniform(-0.05, 0.15, n)) + rng.uniform(-1, 1)
        s.append_episode(
            {
                "obs/state": np.stack([x, rng.normal(size=n)], 1).astype(np.float32),
                "action": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
                "reward": np.zeros(n, np.float32),
                "terminated": np.zeros(n, bool),
            }
        )
    s.close()
    return path


def write_labels(store_path, out, pairs=600, flip=0.0, segment=1):
    with EpisodeStore.open(store_path) as s:
        state, ends = np.asarray(s.array("obs/state")[:]), s.episode_ends
    cfg = PairConfig(pairs=pairs, segment=segment, seed=0)
    starts = sample_pairs(ends, cfg)
    value = state[:, 0]
    sums = np.stack([[value[p : p + segment].sum() for p in pair] for pair in starts])
    labels = (sums[:, 1] > sums[:, 0]).astype(int)
    flipped = np.random.default_rng(1).random(len(labels)) < flip
    labels[flipped] = 1 - labels[flipped]
    out.write_text(
        json.dumps(
            {
                "pairs": starts.tolist(),
                "labels": labels.tolist(),
                "pair_config": {"segment": segment},
                "model": "hand",
                "prompt_id": "none",
            }
        )
    )
    return out


@pytest.mark.parametrize("segment", [1, 3])
def test_recovers_a_known_ordering_from_noisy_labels(store, tmp_path, segment):
    labels = write_labels(store, tmp_path / "labels.json", flip=0.2, segment=segment)
    torch.set_num_threads(1)
    result = train_reward_model(
        store, tmp_path / "rm", RewardModelTrainConfig(labels=str(labels), epochs=40, seed=0), progress=False
    )
    assert result["heldout_accuracy"]["ensemble"] > 0.7  # against labels of which a fifth are wrong
    model, meta = PreferenceRewardModel.load(result["checkpoint"])
    assert meta["label_count"] == 600 and len(model.members) == 3
    with EpisodeStore.open(store) as s:
        state = np.asarray(s.array("obs/state")[:])
    reward = model.reward(state)
    assert np.abs(reward).max() < 1.0  # tanh-bounded
    order = np.argsort(np.argsort(reward)), np.argsort(np.argsort(state[:, 0]))
    assert np.corrcoef(*order)[0, 1] > 0.9  # rank correlation with the hidden progress


def digest_keys(path, keys):
    out = {}
    for key in keys:
        h = hashlib.sha256()
        for f in sorted((path / "data" / key).rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(path)).encode() + f.read_bytes())
        out[key] = h.hexdigest()
    return out


def test_relabel_adds_a_key_and_leaves_the_data_byte_identical(store, tmp_path, capsys):
    labels = write_labels(store, tmp_path / "labels.json")
    torch.set_num_threads(1)
    result = train_reward_model(
        store, tmp_path / "rm", RewardModelTrainConfig(labels=str(labels), epochs=5), progress=False
    )
    with EpisodeStore.open(store) as s:
        keys, state, ends = s.keys, np.asarray(s.array("obs/state")[:]), s.episode_ends
    before = digest_keys(store, keys)
    assert (
        main(["dataset", "relabel", str(store), "--model", result["checkpoint"], "--key", "reward_vlm"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["key"] == "reward_vlm" and printed["label_count"] == 600
    assert digest_keys(store, keys) == before
    with EpisodeStore.open(store) as s:
        assert s.keys == keys + ["reward_vlm"]
        new = np.asarray(s.array("reward_vlm")[:])
        attrs = s.key_attrs("reward_vlm")
        assert s.stats("reward_vlm")["max"] == pytest.approx(new.max())
    assert (
        attrs["label_count"] == 600
        and attrs["reward_model"] == result["checkpoint"]
        and attrs["vlm_model"] == "hand"
    )
    # Step t's reward is the model at the next observation; an episode's last step, at its own.
    model, _ = PreferenceRewardModel.load(result["checkpoint"])
    r = model.reward(state)
    np.testing.assert_allclose(new[: ends[0] - 1], r[1 : ends[0]], rtol=1e-5, atol=1e-6)
    assert new[ends[0] - 1] == pytest.approx(r[ends[0] - 1], abs=1e-6)
    # A second relabel into the same key is refused; the store is unchanged.
    relabeled = digest_keys(store, keys + ["reward_vlm"])
    assert (
        main(["dataset", "relabel", str(store), "--model", result["checkpoint"], "--key", "reward_vlm"]) == 2
    )
    assert "already has 'reward_vlm'" in capsys.readouterr().err
    assert digest_keys(store, keys + ["reward_vlm"]) == relabeled


def test_labels_of_another_store_are_refused(store, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"pairs": [[0, 10**6]], "labels": [0], "pair_config": {"segment": 1}}))
    with pytest.raises(DatasetError, match="beyond"):
        train_reward_model(
            store, tmp_path / "rm", RewardModelTrainConfig(labels=str(labels), epochs=1), progress=False
        )


def test_the_camera_reward_model_scores_frames():
    """RL-VLM-F's CNN variant: frames in, one ensemble-mean reward per frame, in (-1, 1)."""
    model = PreferenceRewardModel(RewardModelConfig(input_key="obs/image/front", input_shape=(64, 64, 3)))
    frames = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    rewards = model.reward(frames)
    assert rewards.shape == (5,) and np.all(np.abs(rewards) < 1) and len(np.unique(rewards)) > 1


def test_frames_too_small_for_the_camera_reward_model_are_refused():
    """Below 47 pixels RL-VLM-F's CNN has nothing left after its last layer: a clear error, not torch's."""
    PreferenceRewardModel(RewardModelConfig(input_key="obs/image/front", input_shape=(47, 47, 3)))
    with pytest.raises(ConfigError, match="at least 47x47"):
        PreferenceRewardModel(RewardModelConfig(input_key="obs/image/front", input_shape=(46, 46, 3)))
