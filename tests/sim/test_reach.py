"""The MuJoCo reach arm through RobotEnv and the ControlLoop: real physics, real rendering."""

import numpy as np
import pytest

from robot_rl.core import ControlLoop
from robot_rl.sim.reach import ReachExpert, make_reach_env
from robot_rl.tasks.teleops import ScriptedTeleop


@pytest.fixture
def env():
    env = make_reach_env(cameras=("front",), image_size=64)
    yield env
    env.close()


def test_spaces_and_observations(env):
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["state"].shape == (12,) and obs["image/front"].shape == (64, 64, 3)
    assert env.action_space.low.tolist() == [-1, -1, -1] and env.action_space.high.tolist() == [1, 1, 1]
    assert env.state_names()[6:9] == ["ee_pos[0]", "ee_pos[1]", "ee_pos[2]"]
    # Physics at 500 Hz under a 20 Hz command: one step advances 50 ms of sim time in 25 substeps.
    assert env.robot.world.model.opt.timestep == pytest.approx(0.002) and env.robot.substeps == 25
    env.step(np.zeros(3, np.float32))
    assert env.robot.world.time == pytest.approx(0.05)


def test_image_is_upright(env):
    obs, _ = env.reset(seed=0)
    image = obs["image/front"].astype(float)
    assert image[:8].mean() < image[-8:].mean()  # dark sky above, lit table below


def test_reset_is_seeded(env):
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a["state"], b["state"])
    assert not np.array_equal(a["state"], c["state"])


def test_cartesian_steps_move_the_end_effector(env):
    env.reset(seed=0)
    start = env.robot.ee_pos()
    for _ in range(5):
        env.step(np.array([0.0, 0.0, 1.0], np.float32))  # +2 cm per step upward
    moved = env.robot.ee_pos() - start
    assert moved[2] == pytest.approx(0.10, abs=0.02) and np.abs(moved[:2]).max() < 0.02


def test_stop_holds_still(env):
    env.reset(seed=0)
    env.step(np.array([1.0, 0.0, 0.0], np.float32))
    env.robot.stop()
    before = env.robot.ee_pos()
    env.robot.world.step(100)  # 0.2 s of physics with the hold target
    assert np.linalg.norm(env.robot.ee_pos() - before) < 0.005


def test_scripted_expert_succeeds_through_the_loop(env):
    expert = ReachExpert(env.task, noise=0.1, seed=0)
    loop = ControlLoop(env, teleop=ScriptedTeleop(expert), rate_hz=None)
    results = loop.run(10, seed=0)
    assert sum(r.success for r in results) >= 9
    assert all(r.reward == 1.0 for r in results if r.success)


def test_drift_teleop_takes_over_from_a_bad_policy(env):
    expert = ReachExpert(env.task, seed=0)
    teleop = ScriptedTeleop(expert, mode="drift", drift_m=0.04)
    away = lambda obs: -expert()  # a policy that moves away from the target  # noqa: E731
    distances = []
    loop = ControlLoop(
        env,
        policy=away,
        teleop=teleop,
        rate_hz=None,
        execute_k=1,
        on_step=lambda loop, result: distances.append(env.task.distance()),
    )
    (result,) = loop.run(1, seed=1)
    # The operator keeps taking over whenever the policy drags the arm away, so the arm never
    # ends up much farther than the drift margin (plus one step) from the best it had reached.
    assert 0 < result.intervened_steps < result.steps
    assert max(distances) <= distances[0] + 0.04 + 0.021


def test_visual_variant_shows_the_target_only_in_the_camera():
    from robot_rl.cli import compose
    from robot_rl.errors import ConfigError
    from robot_rl.factory import make_sim_env

    env, expert = make_sim_env(compose("train", ["env=reach_visual"]).env, seed=0)
    with env:
        heights, pictures = set(), []
        for seed in range(3):
            obs, _ = env.reset(seed=seed)
            assert obs["state"].shape == (9,) and "target_pos" not in env.state_layout  # the arm's own state
            heights.add(round(float(env.task.target[2]), 6))
            pictures.append(obs["image/front"])
        assert heights == {0.15} and obs["image/front"].shape == (32, 32, 3)
        red = [(p[..., 0] > 150) & (p[..., 1] < 80) for p in pictures]  # the target's pixels
        assert all(r.any() for r in red) and not np.array_equal(red[0], red[1])  # it moves with the seed
        assert any(
            env.step(expert())[2] for _ in range(80)
        )  # the scripted expert (reading the target) reaches it
    with pytest.raises(ConfigError, match="target_height"):
        make_reach_env(target_height=1.0)


def test_without_end_on_success_the_episode_runs_on_and_rewards_each_step_on_target():
    env = make_reach_env(cameras=(), max_steps=40, end_on_success=False)
    expert = ReachExpert(env.task)
    with env:
        env.reset(seed=0)
        steps = [env.step(expert()) for _ in range(40)]
    rewards = [s[1] for s in steps]
    assert not any(s[2] for s in steps) and steps[-1][3]  # never terminated; truncated at the time limit
    assert rewards[0] == 0.0 and sum(rewards) > 20 and all(s[4]["success"] == bool(s[1]) for s in steps)
