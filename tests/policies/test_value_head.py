"""The value heads every critic shares: regression (MSE) and classification over value bins
(HL-Gauss, "Stop Regressing")."""

import numpy as np
import pytest
import torch

from robot_rl.errors import ConfigError
from robot_rl.policies.value_head import ValueHead

HL = {"loss": "hl_gauss", "bins": 51, "v_min": -1.0, "v_max": 2.0, "sigma_ratio": 0.75}


def test_the_target_distribution_sums_to_one_and_its_mean_is_the_clipped_target():
    head = ValueHead(HL)
    targets = torch.tensor([-3.0, -1.0, -0.37, 0.0, 0.5, 1.234, 2.0, 7.0])
    p = head.target_distribution(targets)
    assert p.shape == (8, 51) and torch.all(p >= 0)
    torch.testing.assert_close(p.sum(-1), torch.ones(8))
    width = 3.0 / 51
    mean = p @ head.centres
    clipped = targets.clamp(-1.0, 2.0)
    interior = (clipped > -1.0 + 2 * width) & (clipped < 2.0 - 2 * width)
    assert torch.all((mean - clipped)[interior].abs() < 0.01 * width)  # exact away from the ends
    assert torch.all((mean - clipped).abs() < width)  # within a bin at the ends (the mass is cut there)
    # sigma = 0.75 bin widths: most of the mass within two bins of the target
    centre = int(torch.argmin((head.centres - 0.5).abs()))
    assert p[4, centre - 2 : centre + 3].sum() > 0.95


def test_the_loss_gradient_vanishes_at_the_target():
    head = ValueHead(HL)
    target = torch.tensor([0.3, 1.7])
    logits = head.target_distribution(target).log().requires_grad_(True)
    head.loss(logits, target).sum().backward()
    assert logits.grad.abs().max() < 1e-6
    torch.testing.assert_close(head.value(logits.detach()), target, atol=1e-3, rtol=0)
    moved = (logits.detach() + torch.randn(2, 51)).requires_grad_(True)
    head.loss(moved, target).sum().backward()
    assert moved.grad.abs().max() > 1e-3


def test_mse_head_is_the_squared_error_of_a_scalar():
    head = ValueHead()
    out = torch.tensor([[0.5], [2.0]])
    assert head.outputs == 1
    torch.testing.assert_close(head.value(out), torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(head.loss(out, torch.tensor([1.0, 2.0])), torch.tensor([0.25, 0.0]))


@pytest.mark.parametrize("loss", ["mse", "hl_gauss"])
def test_a_critic_trained_by_either_loss_fits_the_same_regression(loss):
    """A fixed noisy regression problem: both heads converge to the conditional mean."""
    torch.manual_seed(0)
    head = ValueHead({**HL, "loss": loss})
    net = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.ReLU(), torch.nn.Linear(64, head.outputs))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    truth = lambda x: 1.5 * torch.sin(2 * x)  # noqa: E731  values within [-1.5, 1.5]
    for _ in range(400):
        x = torch.rand(128, 1) * 3 - 1.5
        y = (truth(x) + 0.3 * torch.randn_like(x)).squeeze(-1)  # noisy targets, mean = truth
        loss_value = head.loss(net(x), y.clamp(-1.0, 2.0) if loss == "mse" else y).mean()
        opt.zero_grad()
        loss_value.backward()
        opt.step()
    x = torch.linspace(-1.2, 1.2, 50)[:, None]
    with torch.no_grad():
        error = (head.value(net(x)) - truth(x).squeeze(-1).clamp(-1.0, 2.0)).abs()
    assert error.mean() < 0.08, f"{loss}: mean error {error.mean():.3f}"


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="value loss"):
        ValueHead({"loss": "l1"})
    with pytest.raises(ConfigError, match="v_max > v_min"):
        ValueHead({"loss": "hl_gauss", "v_min": 1.0, "v_max": 0.0})
    with pytest.raises(ConfigError, match="bad value head settings"):
        ValueHead({"loss": "hl_gauss", "bins_count": 3})


def test_every_critic_takes_the_head():
    from robot_rl.policies.iql import IQLAgent, IQLConfig
    from robot_rl.policies.residual import ResidualConfig, ResidualPolicy
    from robot_rl.policies.sac import SACAgent, SACConfig

    sac = SACAgent(SACConfig(state_dim=4, action_dim=2, value=HL))
    q = sac.critic(torch.randn(3, 4), torch.rand(3, 2))
    assert q.shape == (2, 3) and torch.all((q >= -1) & (q <= 2))
    iql = IQLAgent(IQLConfig(state_dim=4, action_dim=2, value=HL))
    assert iql.q1[-1].out_features == 51 and iql.v[-1].out_features == 1  # V stays an expectile regression
    batch = {
        "obs/state": torch.randn(8, 4),
        "next_obs/state": torch.randn(8, 4),
        "action": torch.rand(8, 2) * 2 - 1,
        "reward": torch.rand(8),
        "mask": torch.ones(8),
    }
    assert np.isfinite(iql.update(batch)["q_loss"])
    residual = ResidualPolicy(ResidualConfig(obs_dim=4, action_dim=2, value=HL))
    x = torch.randn(5, 6)
    assert residual.value(x).shape == (5,)
    torch.testing.assert_close(
        residual.value(x), torch.full((5,), 0.25), atol=0.1, rtol=0
    )  # starts at critic_bias
    assert residual.value_loss(x, torch.ones(5)).shape == (5,)
