"""ICVF: the goal/intent mixture, the loss weighted by the sign of the intent's advantage (not the
error's), and on random walks in a grid world a learned V(s, g, g) that falls with the distance
to the goal (rank correlation)."""

import numpy as np
import pytest
import torch

from robot_rl.datasets import EpisodeStore
from robot_rl.factory import env_source
from robot_rl.learners.icvf import (
    GoalSampler,
    ICVFAgent,
    ICVFConfig,
    ICVFTrainConfig,
    frame_batch,
    frame_rows,
    pretrained_encoder,
    train_icvf,
)


def test_goal_sampler_mixture():
    ends = np.arange(1, 11) * 100
    sampler = GoalSampler(ends)
    s = sampler.sample(40_000, np.random.default_rng(0))
    episode = np.searchsorted(ends, s["idx"], side="right")
    same_future = (np.searchsorted(ends, s["goal"], side="right") == episode) & (s["goal"] > s["idx"])
    assert np.mean(s["goal"] == s["idx"]) == pytest.approx(0.2, abs=0.01)
    # 0.5 from the trajectory's future, plus random goals that happen to land there (about 0.3 * 5 %).
    assert np.mean(same_future) == pytest.approx(0.5 + 0.3 * 0.05, abs=0.02)
    assert np.mean(s["intent"] == s["goal"]) > 0.5
    assert (
        np.all(s["next"] == s["idx"] + 1) and not np.isin(s["idx"], ends - 1).any()
    )  # no step across episodes
    np.testing.assert_array_equal(s["reward"], (s["idx"] == s["goal"]) - 1.0)
    np.testing.assert_array_equal(s["mask"], 1.0 - (s["idx"] == s["goal"]))
    np.testing.assert_array_equal(s["intent_mask"], 1.0 - (s["idx"] == s["intent"]))


def role_batch(x: dict) -> dict:
    """A batch that encodes each role's inputs separately (no frame shared): online/ holds obs, goal
    and intent one after another, next/ the next observations."""
    n = len(x["obs"])
    rows = torch.arange(n)
    return {
        "online/state": torch.cat([x["obs"], x["goal"], x["intent"]]),
        "next/state": x["next_obs"],
        "obs_at": rows,
        "goal_at": rows + n,
        "intent_at": rows + 2 * n,
        "next_at": rows + 3 * n,
    }


def test_each_frame_encoded_once_gives_the_same_loss_and_gradients():
    """frame_rows dedups the frames of a sample; the loss and its gradients equal those of encoding
    every role's frames separately, and every role's rows point at its own frames."""
    torch.manual_seed(0)
    ends = np.array([30, 50, 90])
    frames = torch.randn(90, 3)
    s = GoalSampler(ends).sample(64, np.random.default_rng(1))
    rows = frame_rows(s)
    online, extra = frames[rows["online"]], frames[rows["next"]]
    both = torch.cat([online, extra])
    for role, key in (("obs", "idx"), ("next", "next"), ("goal", "goal"), ("intent", "intent")):
        torch.testing.assert_close(both[rows[f"{role}_at"]], frames[s[key]])
    assert len(rows["online"]) + len(rows["next"]) < 4 * 64 * 0.85  # goals and intents repeat frames
    deduped = frame_batch(s, lambda index: {"state": frames[index]})
    separate = role_batch(
        {
            r: frames[s[k]]
            for r, k in (("obs", "idx"), ("next_obs", "next"), ("goal", "goal"), ("intent", "intent"))
        }
    )
    grads = []
    for batch in (deduped, separate):
        torch.manual_seed(0)
        agent = ICVFAgent(ICVFConfig(state_dim=3, hidden=(16, 16)))
        batch.update({k: torch.as_tensor(s[k]) for k in ("reward", "mask", "intent_reward", "intent_mask")})
        loss = agent.losses(batch)["loss"]
        loss.backward()
        grads.append(
            (loss.detach(), [p.grad.clone() for p in agent.value.parameters() if p.grad is not None])
        )
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


def test_loss_is_weighted_by_the_sign_of_the_intent_advantage():
    torch.manual_seed(0)
    agent = ICVFAgent(ICVFConfig(state_dim=2, hidden=(8, 8), expectile=0.9, discount=0.9))
    with torch.no_grad():
        for p in agent.target.parameters():
            p.add_(0.2 * torch.randn_like(p))
    n = 16
    x = {name: torch.randn(n, 2) for name in ("obs", "next_obs", "goal", "intent")}
    batch = role_batch(x)
    batch.update(
        reward=-torch.ones(n), mask=torch.ones(n), intent_reward=-torch.ones(n), intent_mask=torch.ones(n)
    )
    batch["reward"][:3], batch["mask"][:3] = 0.0, 0.0
    batch["intent_reward"][8:], batch["intent_mask"][8:] = 0.0, 0.0  # intent reached: A = -V(s, z, z)
    out = agent.losses(batch)
    with torch.no_grad():
        t, v = agent.target, agent.value
        q = batch["reward"] + 0.9 * batch["mask"] * t(x["next_obs"], x["goal"], x["intent"])
        adv = (
            batch["intent_reward"]
            + 0.9 * batch["intent_mask"] * t(x["next_obs"], x["intent"], x["intent"]).min(0).values
            - t(x["obs"], x["intent"], x["intent"]).mean(0)
        )
        pred = v(x["obs"], x["goal"], x["intent"])
        w = torch.where(adv >= 0, 0.9, 0.1)
        expected = (w * (q - pred) ** 2).mean(-1).sum()
        wrong = (torch.where(q - pred >= 0, 0.9, 0.1) * (q - pred) ** 2).mean(-1).sum()  # IQL's rule
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(out["loss"].item() - wrong.item()) > 1e-4
    assert 0 < (adv >= 0).sum() < n  # both weights occur in this batch


def test_value_falls_with_distance_to_the_goal(tmp_path):
    spearmanr = pytest.importorskip("scipy.stats", reason="scipy comes with the [sim] extra").spearmanr

    rng = np.random.default_rng(0)
    size, moves = 7, np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])
    path = tmp_path / "grid.zarr"
    with EpisodeStore.create(path, {"obs/state": ((2,), "float32")}, fps=10) as store:
        for _ in range(60):
            p, states = rng.integers(0, size, 2), []
            for _ in range(40):
                states.append(p.copy())
                p = np.clip(p + moves[rng.integers(4)], 0, size - 1)
            store.append_episode({"obs/state": np.array(states, np.float32)})
    result = train_icvf(
        path,
        tmp_path / "icvf",
        ICVFTrainConfig(steps=3000, batch_size=256, seed=0, agent={"hidden": [64, 64], "discount": 0.9}),
        progress=False,
    )
    agent = ICVFAgent.load(result["checkpoint"])
    grid = torch.tensor([[i, j] for i in range(size) for j in range(size)], dtype=torch.float32)
    correlations = []
    for goal in ([3, 3], [0, 0], [6, 2]):
        g = torch.tensor(goal, dtype=torch.float32).expand(len(grid), 2)
        values = agent.values({"state": grid}, {"state": g}).numpy()
        distance = np.abs(grid.numpy() - np.array(goal)).sum(1)
        correlations.append(spearmanr(values, -distance).statistic)
    assert min(correlations) > 0.8, correlations


def image_store(path, size=32, episodes=3, length=6):
    rng = np.random.default_rng(0)
    schema = {
        "obs/state": ((2,), "float32"),
        "obs/image/front": ((size, size, 3), "uint8"),
        "action": ((2,), "float32"),
        "reward": ((), "float32"),
        "terminated": ((), "bool"),
    }
    with EpisodeStore.create(path, schema, fps=10) as store:
        for _ in range(episodes):
            store.append_episode(
                {
                    "obs/state": rng.standard_normal((length, 2)).astype(np.float32),
                    "obs/image/front": rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8),
                    "action": rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                    "reward": np.zeros(length, np.float32),
                    "terminated": np.zeros(length, bool),
                }
            )
    return path


def test_vptr_encoder_init_hands_the_icvf_cnn_to_iql(tmp_path):
    from robot_rl.errors import ConfigError
    from robot_rl.learners.iql import IQLTrainConfig, train_iql
    from robot_rl.policies.iql import IQLAgent

    store = image_store(tmp_path / "data.zarr")
    icvf = train_icvf(
        store,
        tmp_path / "icvf",
        ICVFTrainConfig(steps=2, batch_size=4, use_state=False, agent={"hidden": [16, 16]}),
        progress=False,
    )
    assert icvf["agent"]["state_dim"] == 0 and tuple(icvf["agent"]["image_keys"]) == ("image/front",)
    pretrained = ICVFAgent.load(icvf["checkpoint"]).encoder_state()
    agent_cfg = {"image_keys": ["image/front"], "image_size": 32, "hidden": [16, 16]}

    def run(name, freeze):
        cfg = IQLTrainConfig(
            steps=3,
            batch_size=4,
            eval_episodes=0,
            encoder_init=icvf["checkpoint"],
            encoder_freeze=freeze,
            agent=agent_cfg,
        )
        return IQLAgent.load(
            train_iql(store, None, tmp_path / name, cfg, progress=False)["checkpoint"]
        ).encoder.state_dict()

    frozen, tuned = run("frozen", True), run("tuned", False)
    assert all(torch.equal(frozen[k], pretrained[k]) for k in pretrained)
    assert not all(torch.equal(tuned[k], pretrained[k]) for k in pretrained)
    with pytest.raises(ConfigError, match="pretrained on"):
        pretrained_encoder(icvf["checkpoint"], ("image/front",), 84)
    cfg = IQLTrainConfig(steps=1, batch_size=4, eval_episodes=0, agent={**agent_cfg, "image_size": 84})
    with pytest.raises(ConfigError, match="store's images are 32 px"):
        train_iql(store, None, tmp_path / "bad", cfg, progress=False)
    with pytest.raises(
        ConfigError, match="the env's image_size says 84"
    ):  # before training, not at evaluation
        train_iql(
            store,
            env_source({"name": "reach", "image_size": 84}),
            tmp_path / "bad_env",
            IQLTrainConfig(steps=1, agent=agent_cfg),
            progress=False,
        )
    cfg = IQLTrainConfig(
        steps=1, batch_size=4, eval_episodes=0, agent={"image_keys": ["image/front"], "hidden": [16]}
    )
    assert (
        train_iql(store, None, tmp_path / "sized", cfg, progress=False)["agent"]["image_size"] == 32
    )  # from the store
