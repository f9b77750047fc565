"""IQL: each loss term against a hand computation on one batch, the properties that define it
(expectile V without a target network, advantage weights clipped at 100, beta 0 is BC), the
offline dataset's masks, and a learning check where advantage weighting must beat cloning."""

import os
import shutil

import numpy as np
import pytest
import torch

from robot_rl.datasets import EpisodeStore
from robot_rl.errors import ConfigError, DatasetError
from robot_rl.factory import env_source
from robot_rl.learners.iql import OfflineDataset, available_memory_bytes
from robot_rl.policies.iql import EXP_ADV_MAX, IQLAgent, IQLConfig, expectile_loss


def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])
    # Positive differences weigh tau, negative ones 1 - tau.
    expected = (0.7 * 4.0 + 0.3 * 1.0 + 0.7 * 0.25 + 0.3 * 9.0) / 4
    assert expectile_loss(diff, 0.7).item() == pytest.approx(expected)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (diff**2).mean().item())


def batch(n=8, state_dim=3, action_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "obs/state": torch.randn(n, state_dim, generator=g),
        "next_obs/state": torch.randn(n, state_dim, generator=g),
        "action": torch.rand(n, action_dim, generator=g) * 1.8 - 0.9,
        "reward": torch.rand(n, generator=g),
        "mask": torch.tensor([1.0, 0.0] * (n // 2)),
    }


def test_losses_match_a_hand_computation():
    torch.manual_seed(0)
    cfg = IQLConfig(state_dim=3, action_dim=2, hidden=(16, 16), beta=3.0, expectile=0.7, discount=0.9)
    mean, std = np.array([0.1, -0.2, 0.3]), np.array([2.0, 1.0, 0.5])
    agent = IQLAgent(cfg, mean, std)
    with torch.no_grad():  # targets away from the online nets, so a mix-up would show
        for p in [*agent.target_q1.parameters(), *agent.target_q2.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    b = batch()
    out = agent.losses(b)
    with torch.no_grad():
        s = (b["obs/state"] - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(
            std, dtype=torch.float32
        )
        s2 = (b["next_obs/state"] - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(
            std, dtype=torch.float32
        )
        sa = torch.cat([s, b["action"]], -1)
        target_q = torch.minimum(agent.target_q1(sa), agent.target_q2(sa)).squeeze(-1)
        v = agent.v(s).squeeze(-1)
        adv = target_q - v
        w = torch.where(adv < 0, 0.3, 0.7)
        v_loss = (w * adv**2).mean()
        y = b["reward"] + 0.9 * b["mask"] * agent.v(s2).squeeze(-1)  # V itself: no target network for V
        q_loss = (
            ((agent.q1(sa).squeeze(-1) - y) ** 2).mean() + ((agent.q2(sa).squeeze(-1) - y) ** 2).mean()
        ) / 2
        mu, sigma = torch.tanh(agent.actor(s)), agent.log_std.exp()
        nll = -torch.distributions.Normal(mu, sigma).log_prob(b["action"]).sum(-1)
        actor_loss = (torch.exp(3.0 * adv).clamp(max=100.0) * nll).mean()
    assert out["v_loss"].item() == pytest.approx(v_loss.item(), rel=1e-5)
    assert out["q_loss"].item() == pytest.approx(q_loss.item(), rel=1e-5)
    assert out["actor_loss"].item() == pytest.approx(actor_loss.item(), rel=1e-5)
    assert not hasattr(agent, "target_v")


def test_weights_clip_at_100_and_beta_zero_is_cloning():
    torch.manual_seed(0)
    agent = IQLAgent(IQLConfig(state_dim=3, action_dim=2, hidden=(8,), beta=10.0, deterministic=True))
    b = batch()
    with torch.no_grad():
        agent.target_q1[-1].bias.fill_(50.0)  # huge advantages everywhere
        agent.target_q2[-1].bias.fill_(50.0)
    s = b["obs/state"]
    bc = ((torch.tanh(agent.actor(s)) - b["action"]) ** 2).sum(-1)
    out = agent.losses(b)
    assert out["actor_loss"].item() == pytest.approx(EXP_ADV_MAX * bc.mean().item(), rel=1e-5)
    assert out["clipped"].item() == 1.0  # every weight at the clip, and the update reports it
    agent.cfg.beta = 0.0
    out = agent.losses(b)
    assert out["actor_loss"].item() == pytest.approx(bc.mean().item(), rel=1e-5)
    assert out["clipped"].item() == 0.0
    logged = agent.update(b)
    assert logged["weights_clipped"] == 0.0 and logged["adv_std"] == pytest.approx(
        out["adv"].std().item(), rel=1e-5
    )


def test_soft_update_moves_targets_by_tau_and_only_q_has_targets():
    torch.manual_seed(0)
    agent = IQLAgent(IQLConfig(state_dim=3, action_dim=2, hidden=(8,), tau=0.1))
    before = [p.clone() for p in agent.target_q1.parameters()]
    agent.update(batch())
    for old, target, online in zip(before, agent.target_q1.parameters(), agent.q1.parameters()):
        torch.testing.assert_close(target, old + 0.1 * (online - old))


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="expectile"):
        IQLConfig(state_dim=1, action_dim=1, expectile=1.0)


def write_store(path, episodes, terminated_last):
    store = EpisodeStore.create(
        path,
        {
            "obs/state": ((1,), "float32"),
            "action": ((1,), "float32"),
            "reward": ((), "float32"),
            "terminated": ((), "bool"),
        },
        fps=10,
    )
    for states, actions, rewards, done in zip(*episodes, terminated_last):
        n = len(states)
        term = np.zeros(n, bool)
        term[-1] = done
        store.append_episode(
            {
                "obs/state": np.asarray(states, np.float32)[:, None],
                "action": np.asarray(actions, np.float32)[:, None],
                "reward": np.asarray(rewards, np.float32),
                "terminated": term,
            }
        )
    store.close()


def test_dataset_masks_and_next_indices(tmp_path):
    path = tmp_path / "d.zarr"
    write_store(
        path, ([[0, 1, 2], [10, 11]], [[0.1, 0.2, 0.3], [0.4, 0.5]], [[0, 0, 1], [0, 0]]), [True, False]
    )
    data = OfflineDataset(path)
    # Episode 1 terminated: all 3 steps, the last with mask 0. Episode 2 hit a time limit: its last
    # step has no next observation and is left out.
    assert data.index.tolist() == [0, 1, 2, 3]
    assert data.mask.tolist() == [1, 1, 0, 1]
    assert data.next_index.tolist() == [1, 2, 2, 4]
    no_done = OfflineDataset(path, done_key=None)
    assert no_done.index.tolist() == [0, 1, 3] and no_done.mask.tolist() == [1, 1, 1]


def write_camera_store(path, lengths):
    """Terminated episodes with an 8 x 8 camera: 8 + 8 + 4 + 1 + 192 = 213 bytes a step."""
    with EpisodeStore.create(
        path,
        {
            "obs/state": ((2,), "float32"),
            "action": ((2,), "float32"),
            "reward": ((), "float32"),
            "terminated": ((), "bool"),
            "obs/image/front": ((8, 8, 3), "uint8"),
        },
        fps=10,
    ) as store:
        for n in lengths:
            store.append_episode(
                {
                    "obs/state": np.zeros((n, 2), np.float32),
                    "action": np.zeros((n, 2), np.float32),
                    "reward": np.zeros(n, np.float32),
                    "terminated": np.arange(n) == n - 1,
                    "obs/image/front": np.full((n, 8, 8, 3), 7, np.uint8),
                }
            )


def test_dataset_knows_its_size_before_loading_and_refuses_past_the_limit(tmp_path):
    path = tmp_path / "cam.zarr"
    write_camera_store(path, [3, 2])
    data = OfflineDataset(path, image_keys=("image/front",))  # the default limit: a share of the free memory
    # 5 steps x (213 stored + 24 for index, next index, mask and float32 reward), by hand; and what it holds.
    held = sum(a.nbytes for a in [*data.data.values(), data.index, data.next_index, data.mask, data.rewards])
    assert data.nbytes == 5 * 237 == held
    at_limit = OfflineDataset(path, image_keys=("image/front",), max_bytes=5 * 237)
    assert at_limit.index.tolist() == data.index.tolist() and at_limit.mask.tolist() == data.mask.tolist()
    with pytest.raises(DatasetError):
        OfflineDataset(path, image_keys=("image/front",), max_bytes=5 * 237 - 1)  # one byte short
    with pytest.raises(
        DatasetError, match=r"needs 1\.2 KiB in memory, over 1000 B \(the configured limit\)"
    ) as info:
        OfflineDataset(path, image_keys=("image/front",), max_bytes=1000)
    assert "\n" not in str(info.value) and "max_memory_gb" in str(
        info.value
    )  # one line, saying what to change
    # A union is joined key by key: its largest key (the camera, 192 bytes a step) is held twice for a moment.
    write_camera_store(tmp_path / "more.zarr", [4])
    union = OfflineDataset([path, tmp_path / "more.zarr"], image_keys=("image/front",))
    assert union.nbytes == 9 * 237 + 9 * 192 and len(union) == 9
    assert 0 < available_memory_bytes() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_a_containers_reclaimable_cache_is_available(tmp_path, monkeypatch):
    """Under a cgroup v2 limit, memory.current includes page cache the kernel reclaims: a container
    that has read big stores looks full. Only its working set (less inactive file pages) counts."""
    from robot_rl.learners import iql

    mib = 2**20
    (tmp_path / "memory.max").write_text(f"{1000 * mib}\n")
    (tmp_path / "memory.current").write_text(f"{990 * mib}\n")
    (tmp_path / "memory.stat").write_text(
        f"anon {100 * mib}\ninactive_file {800 * mib}\nactive_file {90 * mib}\n"
    )
    monkeypatch.setattr(iql, "CGROUP", tmp_path)
    host = available_memory_bytes()
    monkeypatch.setattr(iql, "CGROUP", tmp_path / "none")  # no cgroup limit: the host's figure
    assert host == min(available_memory_bytes(), 810 * mib)


def test_training_refuses_a_store_over_max_memory_gb_before_it_starts(tmp_path):
    from robot_rl.learners.iql import IQLTrainConfig, train_iql

    write_camera_store(tmp_path / "cam.zarr", [3])
    shutil.rmtree(
        tmp_path / "cam.zarr" / "data" / "obs" / "image" / "front" / "c"
    )  # reading a frame would fail
    cfg = IQLTrainConfig(steps=1, max_memory_gb=1e-9, agent={"image_keys": ["image/front"]})
    with pytest.raises(
        DatasetError, match="the configured limit"
    ):  # the size is known without reading a step
        train_iql(tmp_path / "cam.zarr", None, tmp_path / "run", cfg, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_advantage_weighting_picks_the_rewarded_action_where_cloning_averages(tmp_path):
    """One-step episodes, half with action +0.8 (reward 1), half with -0.8 (reward 0): BC's mean
    sits between them, IQL's moves to the rewarded one."""
    rng = np.random.default_rng(0)
    n = 400
    actions = np.where(rng.random(n) < 0.5, 0.8, -0.8)
    states = rng.normal(size=n)
    path = tmp_path / "bandit.zarr"
    write_store(
        path, ([[s] for s in states], [[a] for a in actions], [[float(a > 0)] for a in actions]), [True] * n
    )
    data = OfflineDataset(path)
    torch.set_num_threads(1)  # as the learners run (utils.training.seed_everything)
    means = {}
    for beta in (0.0, 3.0):
        torch.manual_seed(0)
        agent = IQLAgent(
            IQLConfig(state_dim=1, action_dim=1, hidden=(32, 32), beta=beta, lr=1e-3, steps=400),
            data.state_mean,
            data.state_std,
        )
        g = np.random.default_rng(1)
        for _ in range(400):
            agent.update(data.sample(128, g))
        means[beta] = agent.act({"state": torch.linspace(-1, 1, 9)[:, None]}).mean().item()
    assert abs(means[0.0]) < 0.25
    assert means[3.0] > 0.5


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    from robot_rl.cli import compose
    from robot_rl.commands.collect import collect

    path = tmp_path_factory.mktemp("iql") / "peg.zarr"
    collect(
        compose(
            "collect",
            [
                "env=peg_insert",
                "env.cameras=[front]",
                "env.image_size=64",
                "env.max_steps=30",
                "loop.rate_hz=null",
                "episodes=2",
                f"out={path}",
            ],
        )
    )
    return path


def test_train_from_images_and_state_end_to_end(image_store, tmp_path):
    from omegaconf import OmegaConf

    from robot_rl.cli import compose
    from robot_rl.learners.iql import IQLTrainConfig, train_iql

    env_cfg = compose(
        "train", ["env=peg_insert", "env.cameras=[front]", "env.image_size=64", "env.max_steps=10"]
    ).env
    cfg = IQLTrainConfig(
        steps=4,
        batch_size=8,
        eval_episodes=2,
        eval_num_envs=2,
        log_every=1,
        agent={"image_keys": ["image/front"], "image_size": 64, "hidden": [32]},
    )
    result = train_iql(image_store, env_source(env_cfg), tmp_path / "img", cfg, progress=False)
    assert result["evaluation"]["episodes"] == 2 and (tmp_path / "img" / "curve.png").exists()
    agent = IQLAgent.load(result["checkpoint"])
    assert agent.encoder is not None and agent.updates == 4
    # The encoder learns through Q only: V's and the actor's losses leave it without gradient.
    data = OfflineDataset(image_store, image_keys=("image/front",))
    loss = agent.losses(data.sample(4, np.random.default_rng(0)))
    agent.zero_grad()
    (loss["v_loss"] + loss["actor_loss"]).backward()
    assert all(p.grad is None for p in agent.encoder.parameters())
    state = train_iql(
        image_store,
        env_source(OmegaConf.merge(env_cfg, {"cameras": []})),
        tmp_path / "state",
        IQLTrainConfig(steps=3, batch_size=8, eval_episodes=2, eval_num_envs=2),
        progress=False,
    )
    assert 0.0 <= state["evaluation"]["success_rate"] <= 1.0
