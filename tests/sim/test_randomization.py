"""Domain randomization hooks: model parameters per reset, observation noise, action latency."""

import numpy as np
import pytest

from robot_rl.core import RobotEnv
from robot_rl.core.noop import NoopRobot, NullTask
from robot_rl.errors import ConfigError
from robot_rl.sim.arm_tasks import make_arm_env
from robot_rl.sim.randomization import ActionLatency, ActionNoise, ObservationNoise, RandomizationConfig


def test_model_parameters_are_resampled_around_nominal():
    env = make_arm_env(
        "cube_lift",
        cameras=(),
        randomization={
            "friction": [0.5, 0.6],
            "mass": [1.5, 2.0],
            "actuator_gain": [0.9, 0.95],
            "camera_pos_m": 0.01,
        },
    )
    nominal = make_arm_env("cube_lift", cameras=())
    m0, m = nominal.robot.world.model, env.robot.world.model
    samples = []
    for seed in range(5):  # repeated resets do not compound: always within range of the nominal
        env.reset(seed=seed)
        ratio = m.geom_friction[:, 0] / m0.geom_friction[:, 0]
        assert np.all((ratio >= 0.5) & (ratio <= 0.6))
        has_mass = m0.body_mass > 0
        mass = m.body_mass[has_mass] / m0.body_mass[has_mass]
        assert np.all((mass >= 1.5) & (mass <= 2.0))
        assert np.all(np.abs(m.cam_pos - m0.cam_pos) < 0.06)
        samples.append(m.geom_friction[:, 0].copy())
    assert not np.allclose(samples[0], samples[1])
    kp = m.actuator_gainprm[:7, 0] / m0.actuator_gainprm[:7, 0]
    assert np.all((kp >= 0.9) & (kp <= 0.95))
    np.testing.assert_allclose(m.actuator_biasprm[:7, 1], -m.actuator_gainprm[:7, 0])  # still a servo


def test_randomized_env_still_works_with_the_expert():
    from robot_rl.sim.arm_tasks import make_expert

    env = make_arm_env(
        "cube_lift",
        cameras=(),
        randomization={"friction": [0.8, 1.2], "mass": [0.8, 1.2], "light": [0.5, 1.0]},
    )
    env.reset(seed=0)
    expert = make_expert(env)
    for _ in range(env.task.max_steps):
        *_, terminated, truncated, info = env.step(expert())
        if terminated or truncated:
            break
    assert info["success"]


def test_observation_noise():
    env = RobotEnv(NoopRobot(2), NullTask(), hooks=[ObservationNoise(0.1)])
    env.reset(seed=0)
    states = np.stack([env.observe()["state"] for _ in range(2000)])
    assert states.std() == pytest.approx(0.1, rel=0.1) and abs(states.mean()) < 0.01


def test_action_latency_delays_commands():
    env = RobotEnv(NoopRobot(1), NullTask(), hooks=[ActionLatency(2)])
    env.reset(seed=0)
    for a in [0.1, 0.2, 0.3, 0.4, 0.5]:
        env.step(np.array([a], np.float32))
    sent = [float(c[0]) for c in env.robot.commands]
    np.testing.assert_allclose(sent, [0.1, 0.1, 0.1, 0.2, 0.3], atol=1e-6)
    env.reset(seed=1)  # a new episode starts with an empty pipeline
    env.step(np.array([0.9], np.float32))
    assert env.robot.commands[-1][0] == pytest.approx(0.9)


def test_action_noise_perturbs_what_is_executed_within_limits():
    env = RobotEnv(NoopRobot(2), NullTask(), hooks=[ActionNoise(0.1)])
    env.reset(seed=0)
    for _ in range(2000):
        env.step(np.array([0.0, 1.0], np.float32))
    sent = np.stack(env.robot.commands)
    assert sent[:, 0].std() == pytest.approx(0.1, rel=0.1) and abs(sent[:, 0].mean()) < 0.01
    assert np.all(sent[:, 1] <= 1.0) and sent[:, 1].min() < 0.95  # clipped at the limit, not beyond


def test_action_noise_demos_record_the_commanded_action(tmp_path):
    """DART: the recorder stores the expert's command while the arm executes it noisily."""
    from robot_rl.cli import compose
    from robot_rl.commands.collect import collect
    from robot_rl.datasets import EpisodeStore

    def record(name: str, *extra: str) -> dict:
        collect(
            compose(
                "collect",
                [
                    "env=peg_insert",
                    "env.cameras=[]",
                    "episodes=1",
                    "expert_noise=0",
                    "seed=0",
                    f"out={tmp_path}/{name}.zarr",
                    "loop.rate_hz=null",
                    *extra,
                ],
            )
        )
        with EpisodeStore.open(tmp_path / f"{name}.zarr") as store:
            return store.episode(0)

    noisy, clean = record("noisy", "env.randomization.action_noise=0.03"), record("clean")
    actions = noisy["action"]
    assert np.all(np.abs(actions) <= 1.0)
    # The recorded gripper command is the expert's constant 1.0 (the executed one was noisy) ...
    np.testing.assert_array_equal(actions[:, 4], 1.0)
    np.testing.assert_array_equal(actions[0], clean["action"][0])  # same seed, same first state: same command
    # ... and the noise was executed: from the same start, the arm went elsewhere than without it.
    np.testing.assert_array_equal(noisy["obs/state"][0], clean["obs/state"][0])
    n = min(len(noisy["obs/state"]), len(clean["obs/state"]))
    assert np.abs(noisy["obs/state"][1:n] - clean["obs/state"][1:n]).max() > 1e-3


@pytest.mark.parametrize(
    "bad", [{"friction": [1.2, 0.8]}, {"mass": [0, 1]}, {"action_latency": -1}, {"nonsense": 1}]
)
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(ConfigError):
        RandomizationConfig.from_dict(bad)
