import numpy as np

from robot_rl.learners.evaluate import evaluate_diffusion
from robot_rl.policies.diffusion import DiffusionConfig, DiffusionPolicy


class TimedOutcomeEnvs:
    """A stand-in vector env (the property under test is counting, not physics): env i's episodes
    succeed after 2 steps when i is even and fail after 10 steps when i is odd; reward 1 per step."""

    def __init__(self, n: int):
        self.n, self.t = n, np.zeros(n, int)

    def reset(self, seed=None):
        return np.zeros((self.n, 4), np.float32), {}

    def step(self, actions):
        assert np.isfinite(actions).all()
        self.t += 1
        succeed = np.arange(self.n) % 2 == 0
        done = np.where(succeed, self.t >= 2, self.t >= 10)
        self.t[done] = 0
        return (
            np.zeros((self.n, 4), np.float32),
            np.ones(self.n),
            done & succeed,
            done & ~succeed,
            {"success": done & succeed},
        )

    def close(self):
        pass


def test_short_successful_episodes_are_not_over_counted():
    config = DiffusionConfig(
        state_dim=4,
        action_dim=2,
        obs_horizon=1,
        pred_horizon=4,
        action_horizon=2,
        down_dims=(8, 16),
        diffusion_step_embed_dim=8,
        n_groups=2,
    )
    base = DiffusionPolicy(config, -np.ones(4), np.ones(4), -np.ones(2), np.ones(2)).eval()
    result = evaluate_diffusion(TimedOutcomeEnvs, base, episodes=40, num_envs=4, ddim_steps=2, progress=False)
    # Counting the first 40 episodes to finish would give 5 successes per failure (rate 0.83).
    assert result["episodes"] == 40 and result["successes"] == 20 and result["success_rate"] == 0.5
    assert result["mean_return"] == result["mean_length"] == 6.0  # returns summed per episode, reset between
