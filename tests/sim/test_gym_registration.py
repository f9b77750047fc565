"""Every sim task is a registered gymnasium env (`gym.make("robot_rl/PegInsert-v0")` once robot_rl
is imported), passes gymnasium's own env checker and renders rgb_array frames."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import robot_rl  # noqa: F401  (registers the envs)
from robot_rl.config import CONF_DIR
from robot_rl.errors import ConfigError
from robot_rl.factory import make_gym_env

IDS = sorted(i for i in gym.registry if i.startswith("robot_rl/"))


def test_one_id_per_env_config():
    configs = sorted(p.stem for p in (CONF_DIR / "env").glob("*.yaml"))
    assert [gym.spec(i).kwargs["env"] for i in IDS] == configs
    assert {"robot_rl/PegInsert-v0", "robot_rl/RcCar-v0", "robot_rl/RobosuiteLift-v0"} <= set(IDS)


@pytest.mark.parametrize("env_id", IDS)
def test_the_env_passes_gymnasiums_checker_and_renders(env_id):
    if "Robosuite" in env_id:
        pytest.importorskip("robosuite")
    env = gym.make(env_id, render_mode="rgb_array", cameras=[])  # state observations
    try:
        check_env(env.unwrapped, skip_render_check=False)
        env.reset(seed=0)
        frame = env.render()
        assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8 and frame.std() > 1.0  # a scene
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and isinstance(reward, float)
    finally:
        env.close()


def test_the_configs_cameras_and_the_module_prefix():
    """`robot_rl:` makes gymnasium import robot_rl first; without overrides the config's cameras are
    observations; without a render_mode nothing renders."""
    env = gym.make("robot_rl:robot_rl/Reach-v0")
    try:
        check_env(env.unwrapped)
        obs, _ = env.reset(seed=0)
        assert obs["image/front"].shape == (84, 84, 3)
        assert env.render() is None
    finally:
        env.close()
    with pytest.raises(ConfigError, match="render_mode 'human'"):
        make_gym_env("reach", render_mode="human")
    with pytest.raises(ConfigError, match="has no setting camreas"):  # a typo is not ignored
        make_gym_env("reach", camreas=[])


def test_rendering_connects_only_the_render_camera():
    env = make_gym_env("reach", render_mode="rgb_array", cameras=[])
    env.reset(seed=0)
    first = env.render()
    env.close()
    assert not env._connected
    assert env.render().shape == first.shape and not env._connected  # rendering moves no robot
    env.close()
    assert not env._render_live  # its GL context released
