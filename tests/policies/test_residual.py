"""ResiP's defining properties: a zero-initialized residual reproduces the base exactly; checkpoints
round-trip to identical actions."""

import numpy as np
import torch

from robot_rl.policies.diffusion import DiffusionActor, DiffusionConfig, DiffusionPolicy
from robot_rl.policies.residual import ResidualActor, ResidualConfig, ResidualPolicy, residual_input


def tiny_base(seed=0) -> DiffusionPolicy:
    torch.manual_seed(seed)
    config = DiffusionConfig(
        state_dim=4,
        action_dim=2,
        obs_horizon=1,
        pred_horizon=8,
        action_horizon=4,
        down_dims=(16, 32),
        diffusion_step_embed_dim=16,
        inference_steps=4,
    )
    return DiffusionPolicy(config, -np.ones(4), np.ones(4), -0.5 * np.ones(2), 0.5 * np.ones(2)).eval()


def observations(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return [{"state": rng.uniform(-1, 1, 4).astype(np.float32)} for _ in range(n)]


def test_zero_initialized_residual_equals_the_base_exactly():
    base = tiny_base()
    residual = ResidualPolicy(ResidualConfig(obs_dim=4, action_dim=2))
    combined = ResidualActor(base, residual, ddim_steps=4, seed=3)
    alone = ResidualActor(base, None, ddim_steps=4, seed=3)
    for obs in observations():
        np.testing.assert_array_equal(combined(obs), alone(obs))
    x = residual_input(base, torch.randn(5, 4), torch.randn(5, 2))
    assert torch.equal(residual.dist(x).mean, torch.zeros(5, 2))
    assert torch.allclose(residual.dist(x).stddev, torch.full((5, 2), float(np.exp(-1.0))))


def test_base_actor_matches_the_residual_actor_without_residual():
    base = tiny_base()
    diffusion = DiffusionActor(base, steps=4, seed=3)
    residual_free = ResidualActor(base, None, ddim_steps=4, seed=3)
    obs = observations(1)[0]
    chunk = diffusion(obs)  # the executable chunk, action_horizon long
    steps = [residual_free(obs) for _ in range(len(chunk))]
    np.testing.assert_allclose(np.stack(steps), chunk, atol=1e-6)


def test_checkpoints_round_trip_to_identical_actions(tmp_path):
    base = tiny_base()
    residual = ResidualPolicy(ResidualConfig(obs_dim=4, action_dim=2))
    with torch.no_grad():
        for p in residual.actor.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a trained-looking residual
    base.save(tmp_path / "base")
    residual.save(tmp_path / "residual", tmp_path / "base")
    loaded_base = DiffusionPolicy.load(tmp_path / "base")
    loaded_residual, base_path = ResidualPolicy.load(tmp_path / "residual")
    assert base_path == str(tmp_path / "base")
    before = ResidualActor(base, residual, seed=5)
    after = ResidualActor(loaded_base, loaded_residual, seed=5)
    for obs in observations():
        np.testing.assert_array_equal(before(obs), after(obs))


def test_evaluation_samples_the_base_as_the_residual_was_trained(tmp_path):
    """A residual trained on DDIM-2 plans is evaluated and deployed on DDIM-2 plans."""
    from robot_rl.commands.train import _checkpoint_policy

    base = tiny_base()
    base.save(tmp_path / "base")
    ResidualPolicy(ResidualConfig(obs_dim=4, action_dim=2, base_ddim_steps=2)).save(
        tmp_path / "r2", tmp_path / "base"
    )
    assert _checkpoint_policy(tmp_path / "r2", None, 0)[2] == {"ddim_steps": 2}
    assert _checkpoint_policy(tmp_path / "r2", 8, 0)[2] == {"ddim_steps": 8}  # asked for explicitly
    residual, _ = ResidualPolicy.load(tmp_path / "r2")
    assert ResidualActor(base, residual).chunks.steps == 2
    from robot_rl.learners.residual_ppo import ResidualPPOConfig, make_policy

    assert (
        make_policy(4, 2, ResidualPPOConfig(base_ddim_steps=2)).config.base_ddim_steps == 2
    )  # the learner's


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    tiny_base().save(tmp_path / "base")
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["config.json", "model.safetensors"]
