"""PPO pieces against small hand-computed cases."""

import numpy as np
import pytest
import torch

from robot_rl.config import compose
from robot_rl.errors import ConfigError
from robot_rl.learners.residual_ppo import (
    ResidualPPOConfig,
    ReturnStd,
    RolloutBuffers,
    check_rollout_length,
    collect_rollout,
    cosine_schedules,
    gae,
    make_policy,
    ppo_losses,
    ppo_update,
)
from robot_rl.policies.diffusion import STATE_KEY, DiffusionConfig, DiffusionPolicy
from robot_rl.policies.residual import BaseChunks, ResidualConfig, ResidualPolicy
from robot_rl.sim.vector import make_vector_env


def test_gae_by_hand():
    # Two steps, one env: r = [1, 2], V = [0.5, 1.0], bootstrap V = 3, no done; gamma 0.9, lambda 0.8.
    rewards = torch.tensor([[1.0], [2.0]])
    values = torch.tensor([[0.5], [1.0]])
    dones = torch.zeros(2, 1)
    adv, ret = gae(rewards, values, dones, torch.tensor([3.0]), gamma=0.9, lam=0.8)
    delta1 = 2 + 0.9 * 3 - 1.0  # 3.7
    delta0 = 1 + 0.9 * 1.0 - 0.5  # 1.4
    assert torch.allclose(adv[:, 0], torch.tensor([delta0 + 0.9 * 0.8 * delta1, delta1]))
    assert torch.allclose(ret, adv + values)
    # A done after step 0 cuts both the bootstrap and the trace.
    dones = torch.tensor([[1.0], [0.0]])
    adv, _ = gae(rewards, values, dones, torch.tensor([3.0]), gamma=0.9, lam=0.8)
    assert torch.allclose(adv[0, 0], torch.tensor(1 - 0.5))


def test_ppo_loss_by_hand():
    policy = ResidualPolicy(ResidualConfig(obs_dim=1, action_dim=1, log_std=0.0))  # mean 0, std 1
    x = torch.zeros(2, 2)
    actions = torch.tensor([[0.0], [1.0]])
    new_logp = policy.dist(x).log_prob(actions).sum(-1)
    old_logp = new_logp - torch.tensor([0.5, -0.5])  # ratios e^0.5 and e^-0.5
    advantages = torch.tensor([1.0, -1.0])  # normalized: [0.7071, -0.7071]
    returns = torch.tensor([1.0, 1.0])
    pg, value, kl = ppo_losses(policy, x, actions, old_logp, advantages, returns, clip=0.2)
    a = 1 / np.sqrt(2)
    # sample 0: A>0, ratio 1.65 clipped to 1.2 -> -a*1.2 ;
    # sample 1: A<0, ratio 0.61 -> max(a*0.61, a*0.8) = a*0.8
    expected_pg = (-a * 1.2 + a * 0.8) / 2
    assert abs(pg.item() - expected_pg) < 1e-5
    v = policy.value(x).detach()
    assert abs(value.item() - 0.5 * ((v - returns) ** 2).mean().item()) < 1e-6  # no value clipping
    expected_kl = np.mean([(np.exp(0.5) - 1) - 0.5, (np.exp(-0.5) - 1) + 0.5])
    assert abs(kl.item() - expected_kl) < 1e-5


def _update_batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    policy = ResidualPolicy(ResidualConfig(obs_dim=3, action_dim=2, hidden=16, log_std=0.0))
    x, actions = torch.randn(n, 5, generator=g), torch.randn(n, 2, generator=g)
    with torch.no_grad():
        old_logp = policy.dist(x).log_prob(actions).sum(-1)
    return policy, x, actions, old_logp, torch.randn(n, generator=g)


def _sgd(policy, lr=1.0):
    return torch.optim.SGD(policy.actor.parameters(), lr), torch.optim.SGD(policy.critic.parameters(), lr)


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


@pytest.mark.parametrize("joint", [True, False])
def test_the_gradient_norm_is_clipped_per_network_or_over_both_together(joint):
    # A critic far off its targets: clipped together (the reference), it takes the whole norm and
    # the actor's step shrinks with it; clipped apart, the actor keeps a step of its own.
    policy, x, actions, old_logp, advantages = _update_batch()
    actor0, critic0 = _flat(policy.actor), _flat(policy.critic)
    cfg = ResidualPPOConfig(
        update_epochs=1, num_minibatches=1, max_grad_norm=1.0, target_kl=1e9, joint_grad_clip=joint
    )
    ppo_update(policy, *_sgd(policy), cfg, x, actions, old_logp, advantages, torch.full((64,), 1e4))
    actor_step, critic_step = (_flat(policy.actor) - actor0).norm(), (_flat(policy.critic) - critic0).norm()
    assert critic_step == pytest.approx(1.0, rel=1e-3)  # SGD, lr 1: the step is the clipped gradient
    if joint:
        assert torch.hypot(actor_step, critic_step) <= 1.0 + 1e-4
        assert 0 < actor_step < 1e-3
    else:
        assert 1e-2 < actor_step <= 1.0 + 1e-4


def test_the_kl_early_stop_ends_the_update_at_the_minibatch_that_crossed_it():
    policy, x, actions, old_logp, advantages = _update_batch()
    actor_opt, critic_opt = _sgd(policy, lr=1e-3)
    cfg = ResidualPPOConfig(update_epochs=5, num_minibatches=4, target_kl=-1.0)  # any KL crosses it
    steps = []
    actor_opt.register_step_post_hook(lambda *_: steps.append(1))
    out = ppo_update(policy, actor_opt, critic_opt, cfg, x, actions, old_logp, advantages, advantages)
    assert (out["epochs"], len(steps)) == (1, 1)
    cfg = ResidualPPOConfig(update_epochs=5, num_minibatches=4, target_kl=1e9)
    out = ppo_update(policy, actor_opt, critic_opt, cfg, x, actions, old_logp, advantages, advantages)
    assert (out["epochs"], len(steps)) == (5, 1 + 20)


def test_rewards_are_divided_by_the_return_std_then_clipped():
    gamma, clip = 0.5, 5.0
    scaler = ReturnStd(num_envs=2, gamma=gamma, clip=clip)
    steps = [
        (np.array([1.0, 0.0]), np.array([False, False])),
        (np.array([2.0, 4.0]), np.array([False, True])),
    ]  # env 1's return ends here
    steps += [(np.array([0.5, 1.0]), np.array([False, False]))] * 20 + [
        (np.array([1.0, 100.0]), np.array([False, False]))
    ]
    returns, ret = [], np.zeros(2)
    for (rewards, dones), got in zip(steps, [scaler.scale(r, d) for r, d in steps]):
        ret = ret * gamma + rewards  # by hand: the discounted returns so far, every env's in one pool
        returns.extend(ret)
        std = np.std(returns)  # the running std (population), no mean removed from the rewards
        ret[dones] = 0.0
        np.testing.assert_allclose(got, np.clip(rewards / std, -clip, clip), rtol=1e-4)
    # The last step: env 1's 100 is past 5 stds and clipped to +5; env 0's 1.0 is only divided.
    assert got[1] == clip and 0 < got[0] < clip


def test_rewards_are_scaled_not_centered():
    scaler = ReturnStd(num_envs=2, gamma=0.99, clip=5.0)
    rng = np.random.default_rng(0)
    out = [scaler.scale(rng.exponential(1.0, 2), np.zeros(2, bool)) for _ in range(500)]
    assert np.all(np.concatenate(out) >= 0)  # positive rewards stay positive: no mean subtracted


def test_cosine_horizon_keeps_the_rate_near_its_peak():
    def final_lr(**kw):
        cfg = ResidualPPOConfig(iterations=120, **kw)
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.actor_lr)
        (schedule,) = cosine_schedules([opt], cfg)
        for _ in range(cfg.iterations):
            opt.step()
            schedule.step()
        return opt.param_groups[0]["lr"] / cfg.actor_lr

    assert final_lr() < 1e-6  # no horizon: annealed to zero by the last iteration
    assert 0.96 < final_lr(lr_horizon=1000) < 1.0  # the reference's regime: barely decayed


class StaggeredEpisodes:
    """A stand-in vector env (the property under test is the base's plan schedule, not physics):
    env i's episodes last i + 2 steps, so they end at different steps."""

    def __init__(self, n: int):
        self.n, self.t, self.resets = n, np.zeros(n, int), 0

    def reset(self, seed=None):
        self.t[:], self.resets = 0, self.resets + 1
        return np.zeros((self.n, 4), np.float32), {}

    def step(self, actions):
        self.t += 1
        done = self.t >= np.arange(self.n) + 2
        self.t[done] = 0
        obs = np.random.default_rng(int(self.t.sum())).uniform(-1, 1, (self.n, 4)).astype(np.float32)
        return obs, done.astype(float), done, np.zeros(self.n, bool), {"success": done}


def plan_batches(monkeypatch, rollouts=1, **settings) -> tuple[list[int], BaseChunks, StaggeredEpisodes]:
    """The batch size of every base call in `rollouts` 10-step rollouts of 4 envs (action horizon 4)."""
    torch.manual_seed(0)
    config = DiffusionConfig(
        state_dim=4, action_dim=2, obs_horizon=1, pred_horizon=8, action_horizon=4, down_dims=(8, 16),
        diffusion_step_embed_dim=8, n_groups=2,
    )  # fmt: skip
    base = DiffusionPolicy(config, -np.ones(4), np.ones(4), -np.ones(2), np.ones(2)).eval()
    batches, predict = [], base.predict_normalized
    monkeypatch.setattr(
        base, "predict_normalized", lambda obs, *a: batches.append(len(obs[STATE_KEY])) or predict(obs, *a)
    )
    cfg = ResidualPPOConfig(num_envs=4, rollout_steps=10, **settings)
    chunks, vec = BaseChunks(base, 4, ddim_steps=2), StaggeredEpisodes(4)
    buffers, returns = RolloutBuffers(10, 4, 4, 2, "cpu"), ReturnStd(4, 0.99, 5.0)
    state, policy = torch.as_tensor(vec.reset()[0]), make_policy(4, 2, cfg)
    for _ in range(rollouts):
        state, _ = collect_rollout(vec, base, policy, chunks, returns, state, buffers, cfg)
    return batches, chunks, vec


def test_without_replan_on_reset_the_base_plans_every_env_together_as_the_reference_does(monkeypatch):
    """One batched call plans all envs every action_horizon steps, whatever episodes ended between
    (an env finishes its chunk in its next episode, as the reference's shared queue has it); with
    replan_on_reset (the default) an env plans afresh at its reset, in smaller calls."""
    together, chunks, _ = plan_batches(monkeypatch, replan_on_reset=False)
    assert together == [4, 4, 4] and len(set(chunks.index)) == 1
    per_env, chunks, _ = plan_batches(monkeypatch)
    assert len(per_env) > 3 and min(per_env) < 4 and len(set(chunks.index)) > 1


def test_reset_every_iteration_starts_every_rollout_with_fresh_episodes_and_plans(monkeypatch):
    """10 steps are 2 chunks and a half: without the reset the second rollout plans at steps 2 and 6;
    with it, every rollout resets the envs and plans at its steps 0, 4 and 8."""
    reference = {"replan_on_reset": False}
    batches, _, vec = plan_batches(monkeypatch, rollouts=2, reset_every_iteration=True, **reference)
    assert batches == [4] * 6 and vec.resets == 3  # the learner's first reset, then one per rollout
    batches, _, vec = plan_batches(monkeypatch, rollouts=2, **reference)
    assert batches == [4] * 5 and vec.resets == 1


def test_reset_every_iteration_refuses_a_rollout_shorter_than_an_episode():
    vec = make_vector_env(compose("collect", ["env=reach", "env.cameras=[]"]).env, 2)
    try:
        limit = vec.envs[0].task.max_steps
        check_rollout_length(vec, ResidualPPOConfig(rollout_steps=limit, reset_every_iteration=True))
        check_rollout_length(vec, ResidualPPOConfig(rollout_steps=limit - 1))  # episodes run on: fine
        with pytest.raises(ConfigError, match=f"rollout_steps of at least the episode's {limit} steps"):
            check_rollout_length(vec, ResidualPPOConfig(rollout_steps=limit - 1, reset_every_iteration=True))
    finally:
        vec.close()


@pytest.mark.parametrize("bad", [{"select_every": -1}, {"select_episodes": 0}])
def test_bad_selection_settings_are_refused(bad):
    with pytest.raises(ConfigError, match="select_every must be at least 0"):
        ResidualPPOConfig(**bad)
