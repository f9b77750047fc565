"""VectorEnv: batched stepping, same-step auto-reset, determinism, equivalence with single envs."""

import gymnasium as gym
import numpy as np
import pytest
from omegaconf import OmegaConf

from robot_rl.sim.arm_tasks import make_arm_env
from robot_rl.sim.vector import VectorEnv, make_vector_env


def make(max_steps=6):
    return lambda: make_arm_env("cube_lift", cameras=(), max_steps=max_steps)


def random_actions(n_steps, n_envs, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(n_steps, n_envs, 5)).astype(np.float32)


def rollout(vec, actions, seed):
    obs, _ = vec.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, *_ = vec.step(a)
        out.append(obs)
    return np.stack(out)


def test_spaces_and_batching():
    vec = VectorEnv(make(), 4)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (4, 34) and obs.dtype == np.float32
    assert vec.action_space.shape == (4, 5) and vec.single_action_space.shape == (5,)
    obs, rewards, terminated, truncated, infos = vec.step(vec.action_space.sample())
    assert obs.shape == (4, 34) and rewards.shape == terminated.shape == truncated.shape == (4,)
    vec.close()


def test_same_step_auto_reset():
    vec = VectorEnv(make(max_steps=3), 3)
    obs0, _ = vec.reset(seed=0)
    zero = np.zeros((3, 5), np.float32)
    for _ in range(2):
        _, _, _, truncated, infos = vec.step(zero)
        assert not truncated.any()
    obs, _, _, truncated, infos = vec.step(zero)
    assert truncated.all() and infos["_final_obs"].all()
    # The returned observation starts the next episode; the last one is kept in final_obs.
    assert not np.allclose(obs, infos["final_obs"])
    assert all(env.steps == 0 for env in vec.envs)
    vec.close()


def test_determinism_under_a_seed():
    actions = random_actions(12, 3)
    a = rollout(VectorEnv(make(max_steps=5), 3), actions, seed=7)
    b = rollout(VectorEnv(make(max_steps=5), 3), actions, seed=7)
    c = rollout(VectorEnv(make(max_steps=5), 3), actions, seed=8)
    np.testing.assert_array_equal(a, b)  # auto-resets included: steps 5 and 10 restart episodes
    assert not np.allclose(a, c)


@pytest.mark.parametrize("threads", [1, 2])
def test_each_env_matches_the_same_env_stepped_alone(threads):
    actions = random_actions(8, 3, seed=1)
    batched = rollout(VectorEnv(make(max_steps=50), 3, threads=threads), actions, seed=3)
    for i in range(3):
        env = make(max_steps=50)()
        obs, _ = env.reset(seed=3 + i)
        alone = [obs["state"]] + [env.step(a)[0]["state"] for a in actions[:, i]]
        np.testing.assert_array_equal(batched[:, i], np.stack(alone))


def test_restored_envs_go_on_as_the_originals():
    """episode_state() mid-episode, restored into fresh envs (checkpoint and resume): the episodes
    continue bit for bit, with what no array holds (a latency queue, noise RNGs, randomized
    physics, the solver's warm start from the episode before) rebuilt by replay."""
    randomized = lambda: make_arm_env(  # noqa: E731
        "cube_lift",
        cameras=(),
        max_steps=7,
        randomization={"obs_noise": 0.01, "action_noise": 0.05, "action_latency": 2, "friction": [0.5, 1.5]},
    )
    actions = random_actions(30, 3, seed=2)
    original = VectorEnv(randomized, 3)
    rollout(original, actions[:18], seed=4)  # the third episodes, 4 steps in
    copy = VectorEnv(randomized, 3)
    np.testing.assert_array_equal(copy.restore(original.episode_state()), original._obs)
    for a in actions[18:]:
        for x, y in zip(original.step(a)[:4], copy.step(a)[:4]):
            np.testing.assert_array_equal(x, y)


def test_gymnasium_vector_api():
    vec = gym.wrappers.vector.RecordEpisodeStatistics(VectorEnv(make(max_steps=2), 2))
    vec.reset(seed=0)
    for _ in range(2):
        *_, infos = vec.step(np.zeros((2, 5), np.float32))
    assert "episode" in infos and (infos["episode"]["l"] == 2).all()
    sync = gym.vector.SyncVectorEnv([make(), make()])  # single RobotEnvs also work in gymnasium's own
    obs, _ = sync.reset(seed=0)
    assert obs["state"].shape == (2, 34)


def test_from_config_drops_cameras():
    vec = make_vector_env(OmegaConf.load("robot_rl/conf/env/peg_insert.yaml"), 2)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 32)
    vec.close()
