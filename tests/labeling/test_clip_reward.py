"""VLM-RM's CLIP reward formula on synthetic embeddings (no CLIP weights can be downloaded here;
`CLIPReward` loads an open_clip checkpoint from a local path on machines that have one)."""

import pytest
import torch

from robot_rl.errors import ConfigError
from robot_rl.labeling.clip_reward import CLIPReward, goal_baseline_projection, vlm_rm_reward


def unit(v):
    return v / v.norm(dim=-1, keepdim=True)


def test_alpha_zero_is_the_distance_to_the_goal():
    g = torch.Generator().manual_seed(0)
    x, goal, base = torch.randn(5, 8, generator=g), torch.randn(8, generator=g), torch.randn(8, generator=g)
    expected = 1 - 0.5 * ((unit(x) - unit(goal)) ** 2).sum(-1)
    torch.testing.assert_close(vlm_rm_reward(x, goal, base, alpha=0.0), expected)
    torch.testing.assert_close(goal_baseline_projection(goal, base, 0.0), torch.eye(8))


def test_alpha_one_keeps_only_the_baseline_to_goal_direction():
    g = torch.Generator().manual_seed(1)
    x, goal, base = torch.randn(5, 8, generator=g), torch.randn(8, generator=g), torch.randn(8, generator=g)
    d = unit(goal) - unit(base)
    expected = 1 - 0.5 * (((unit(x) - unit(goal)) @ d) ** 2) / (d @ d)
    torch.testing.assert_close(vlm_rm_reward(x, goal, base, alpha=1.0), expected)
    # Moving an embedding orthogonally to the direction changes nothing; along it, it does.
    ortho = torch.randn(8, generator=g)
    ortho -= (ortho @ d) / (d @ d) * d
    P = goal_baseline_projection(unit(goal), unit(base), 1.0)
    torch.testing.assert_close(ortho @ P, torch.zeros(8), atol=1e-6, rtol=0)
    torch.testing.assert_close(d @ P, d)


def test_goal_scores_highest_and_alpha_is_checked():
    goal, base = unit(torch.tensor([1.0, 0.0, 0.0])), unit(torch.tensor([0.0, 1.0, 0.0]))
    r = vlm_rm_reward(torch.stack([goal, base, unit(goal + base)]), goal, base, 0.5)
    assert r[0] == pytest.approx(1.0) and r[0] > r[2] > r[1]
    with pytest.raises(ConfigError, match="alpha"):
        goal_baseline_projection(goal, base, 1.5)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no CLIP checkpoint"):
        CLIPReward(str(tmp_path / "missing.bin"), goal="insert the peg")
