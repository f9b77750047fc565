"""Inverse-dynamics labels (SS-ORL): the IDM recovers the actions of a known linear system, the
windows are edge-padded within episodes, the split keeps actions only for low-return episodes,
label-actions writes a new key with provenance, and IQL reads the union of stores."""

import numpy as np
import pytest

from robot_rl.datasets import EpisodeStore
from robot_rl.datasets.split import split_action_free
from robot_rl.errors import DatasetError
from robot_rl.learners.inverse_dynamics import (
    IDMTrainConfig,
    label_actions,
    state_windows,
    train_inverse_dynamics,
)
from robot_rl.learners.iql import OfflineDataset

STATE, ACTION = 4, 2


def linear_store(path, episodes=24, length=30, seed=0, with_actions=True):
    """s' = A s + B a with random actions in [-1, 1]; reward = -|s|, so returns differ."""
    rng = np.random.default_rng(seed)
    A = np.eye(STATE) + 0.05 * np.random.default_rng(100).standard_normal((STATE, STATE))
    B = np.random.default_rng(101).standard_normal((STATE, ACTION)) * 0.3
    schema = {
        "obs/state": ((STATE,), "float32"),
        "reward": ((), "float32"),
        **({"action": ((ACTION,), "float32")} if with_actions else {}),
    }
    with EpisodeStore.create(path, schema, fps=10, attrs={"task": "linear"}) as store:
        for _ in range(episodes):
            s = rng.standard_normal(STATE)
            states, actions = [], []
            for _ in range(length):
                a = rng.uniform(-1, 1, ACTION)
                states.append(s)
                actions.append(a)
                s = A @ s + B @ a
            states = np.array(states, np.float32)
            episode = {"obs/state": states, "reward": -np.abs(states).sum(1).astype(np.float32)}
            if with_actions:
                episode["action"] = np.array(actions, np.float32)
            store.append_episode(episode)
    return path


def test_windows_are_edge_padded_inside_each_episode():
    states = np.arange(5, dtype=np.float32)[:, None]
    w = state_windows(states, np.array([2, 5]))
    assert w[:, :, 0].tolist() == [[0, 0, 1], [0, 1, 1], [2, 2, 3], [2, 3, 4], [3, 4, 4]]


def test_idm_recovers_the_actions_of_a_linear_system(tmp_path):
    store = linear_store(tmp_path / "lin.zarr", episodes=48)
    cfg = IDMTrainConfig(epochs=150, batch_size=128, lr=1e-3, hidden=(256, 256), seed=0)
    result = train_inverse_dynamics(store, tmp_path / "idm", cfg, progress=False)
    # a_t is determined by (s_t, s_{t+1}) except at an episode's last step (no s_{t+1}, 1 step in
    # 30), so R^2 is at most about 0.97; an IDM that did not read the transition would score 0.
    assert result["heldout_r2"] > 0.85, {k: result[k] for k in ("heldout_r2", "heldout_mse", "best_epoch")}
    assert result["heldout_episodes"] == 5 and 0 <= result["best_epoch"] < 150


def test_split_label_and_train_on_the_union(tmp_path):
    src = linear_store(tmp_path / "all.zarr", episodes=20)
    split = split_action_free(
        src, tmp_path / "labeled.zarr", tmp_path / "free.zarr", fraction=0.1, lowest=0.5, seed=0
    )
    assert (split["labeled"], split["unlabeled"]) == (2, 18)
    with EpisodeStore.open(src) as store:
        returns = np.add.reduceat(np.asarray(store.array("reward")[:]), np.r_[0, store.episode_ends[:-1]])
    assert split["labeled_mean_return"] <= np.median(returns)  # drawn from the lower half
    with EpisodeStore.open(tmp_path / "free.zarr") as free:
        assert "action" not in free.keys and free.attrs["split_of"] == str(src)
        before = np.asarray(free.array("obs/state")[:]).tobytes()

    cfg = IDMTrainConfig(epochs=3, hidden=(32,), seed=0)
    idm = train_inverse_dynamics(tmp_path / "labeled.zarr", tmp_path / "idm", cfg, progress=False)
    out = label_actions(tmp_path / "free.zarr", idm["checkpoint"])
    assert out["steps"] == 18 * 30
    with EpisodeStore.open(tmp_path / "free.zarr") as free:
        actions = np.asarray(free.array("action")[:])
        assert actions.shape == (540, ACTION) and np.all(np.abs(actions) <= 1.0)
        assert free.key_attrs("action")["inverse_dynamics"] == idm["checkpoint"]
        assert np.asarray(free.array("obs/state")[:]).tobytes() == before
    with pytest.raises(DatasetError, match="action-free"):
        label_actions(tmp_path / "free.zarr", idm["checkpoint"])

    union = OfflineDataset([tmp_path / "labeled.zarr", tmp_path / "free.zarr"], done_key=None)
    assert len(union) == 20 * 29  # every episode's last step has no next observation
    with EpisodeStore.open(src) as store:
        states = np.asarray(store.array("obs/state")[:])
    np.testing.assert_allclose(union.state_mean, states.mean(0), atol=1e-4)
    np.testing.assert_allclose(union.state_std, states.std(0) + 1e-3, atol=1e-3)


def test_union_of_mismatched_stores_is_a_clear_error(tmp_path):
    linear_store(tmp_path / "a.zarr", episodes=2)
    schema = {"obs/state": ((3,), "float32"), "reward": ((), "float32"), "action": ((ACTION,), "float32")}
    with EpisodeStore.create(tmp_path / "b.zarr", schema, fps=10) as store:
        store.append_episode(
            {
                "obs/state": np.zeros((3, 3), np.float32),
                "reward": np.zeros(3, np.float32),
                "action": np.zeros((3, ACTION), np.float32),
            }
        )
    with pytest.raises(DatasetError, match="does not match"):
        OfflineDataset([tmp_path / "a.zarr", tmp_path / "b.zarr"], done_key=None)


def test_split_and_label_from_the_command_line(tmp_path, capsys):
    import json

    from robot_rl.cli import main

    src = linear_store(tmp_path / "all.zarr", episodes=20)
    labeled, free = tmp_path / "l.zarr", tmp_path / "f.zarr"
    assert (
        main(["dataset", "split-actions", str(src), "--labeled", str(labeled), "--unlabeled", str(free)]) == 0
    )
    assert json.loads(capsys.readouterr().out)["labeled"] == 2
    assert (
        main(
            [
                "train",
                "learner=idm",
                f"dataset={labeled}",
                f"out={tmp_path / 'idm'}",
                "learner.epochs=1",
                "learner.hidden=[16]",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["dataset", "label-actions", str(free), "--model", str(tmp_path / "idm" / "checkpoint")]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 18 * 30
    assert main(["dataset", "label-actions", str(free), "--model", str(tmp_path / "idm" / "checkpoint")]) == 2
    assert "action-free" in capsys.readouterr().err
