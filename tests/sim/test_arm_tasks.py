"""The 7-DoF arm tasks on real MuJoCo physics: experts succeed, and the peg obeys its clearance."""

import numpy as np
import pytest

from robot_rl.core import ControlLoop
from robot_rl.sim.arm import MAX_STEP_M
from robot_rl.sim.arm_tasks import HOLE_DEPTH, make_arm_env, make_expert
from robot_rl.tasks.teleops import ScriptedTeleop


@pytest.mark.parametrize("task", ["peg_insert", "cube_lift", "cube_place"])
def test_expert_at_noise_zero_succeeds(task):
    env = make_arm_env(task, cameras=())
    for seed in range(3):
        env.reset(seed=seed)
        expert = make_expert(env)
        for _ in range(env.task.max_steps):
            _, reward, terminated, truncated, info = env.step(expert())
            if terminated or truncated:
                break
        assert info["success"] and terminated and reward == 1.0, f"{task} seed {seed}"


def test_without_end_on_success_the_episode_runs_to_its_length():
    # Fixed-length recordings (vlm-iql's dataset): success is reported on every step it holds,
    # and only the time limit ends the episode.
    env = make_arm_env("cube_place", cameras=(), end_on_success=False)
    env.reset(seed=0)
    expert = make_expert(env)
    steps = []
    for _ in range(env.task.max_steps):
        _, reward, terminated, truncated, info = env.step(expert())
        steps.append((reward, terminated, info["success"]))
        if terminated or truncated:
            break
    rewards, terminals, successes = map(np.array, zip(*steps))
    assert truncated and len(steps) == env.task.max_steps and not terminals.any()
    first = int(np.argmax(successes))
    assert (
        0 < first < len(steps) - 10
        and successes[first:].all()
        and np.array_equal(rewards, successes.astype(float))
    )


@pytest.mark.parametrize("task, state_dim", [("peg_insert", 32), ("cube_lift", 34), ("cube_place", 37)])
def test_observations_actions_and_cameras(task, state_dim):
    env = make_arm_env(task, cameras=("front", "wrist"), image_size=32)
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (state_dim,) and env.observation_space.contains(obs)
    assert obs["image/front"].shape == obs["image/wrist"].shape == (32, 32, 3)
    assert env.action_space.shape == (5,)
    # Physics at 500 Hz under a 20 Hz command.
    assert env.robot.world.model.opt.timestep == pytest.approx(0.002) and env.robot.substeps == 25
    env.close()


def test_without_task_state_the_state_is_the_arms_own_and_success_is_still_the_tasks():
    env = make_arm_env("cube_lift", cameras=("front", "wrist"), image_size=32, task_state=False)
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (20,) and env.observation_space.contains(obs)
    assert not any("cube" in name for name in env.state_names())
    assert "image/wrist" in obs
    expert = make_expert(env)  # the expert reads the simulator, not the observation
    for _ in range(env.task.max_steps):
        _, reward, terminated, truncated, info = env.step(expert())
        if terminated or truncated:
            break
    assert terminated and info["success"] and reward == 1.0
    env.close()


def test_cube_observations_are_relative_to_the_gripper():
    env = make_arm_env("cube_lift", cameras=())
    env.reset(seed=3)
    obs = env.task.observe()
    offset = env.task.cube_pos - env.robot.ee_pos()
    np.testing.assert_allclose(obs["ee_to_cube"], offset, atol=1e-6)
    np.testing.assert_allclose(obs["ee_to_cube_fine"], np.tanh(offset / 0.02), atol=1e-6)
    # The yaw error is folded every 90 degrees: turning the cube by a quarter turn changes nothing.
    yaw = obs["yaw_to_cube"][0]
    assert -np.pi / 4 <= yaw < np.pi / 4
    joint = env.robot.world.model.body("cube").jntadr[0]
    adr = env.robot.world.model.jnt_qposadr[joint]
    quat = env.robot.world.data.qpos[adr + 3 : adr + 7].copy()
    quarter = np.array([np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)])
    w1, v1, w2, v2 = quat[0], quat[1:], quarter[0], quarter[1:]
    env.robot.world.data.qpos[adr + 3 : adr + 7] = [
        w1 * w2 - v1 @ v2,
        *(w1 * v2 + w2 * v1 + np.cross(v1, v2)),
    ]
    env.robot.world.forward()
    assert env.task.observe()["yaw_to_cube"][0] == pytest.approx(yaw, abs=1e-5)
    env.close()


def test_reset_randomizes_the_hole_and_is_seeded():
    env = make_arm_env("peg_insert", cameras=())
    env.reset(seed=1)
    first = (env.task.hole_pos, env.task.hole_yaw)
    env.reset(seed=1)
    assert np.allclose(env.task.hole_pos, first[0]) and env.task.hole_yaw == pytest.approx(first[1])
    env.reset(seed=2)
    assert not np.allclose(env.task.hole_pos, first[0])


def push_peg(offset_m: float) -> float:
    """Centre the peg over the hole shifted sideways by `offset_m`, push down; return tip depth."""
    env = make_arm_env("peg_insert", cameras=())
    env.reset(seed=0)
    task, arm = env.task, env.robot
    mocap = env.robot.world.model.body("hole").mocapid[0]
    env.robot.world.data.mocap_quat[mocap] = [1, 0, 0, 0]  # hole aligned with the world axes
    hole = task.hole_pos
    lateral = np.array([offset_m, 0.0])
    deepest, centred = 0.0, False
    for _ in range(120):
        tip = task.tip()
        target = np.array([*(hole[:2] + lateral), hole[2] + HOLE_DEPTH + 0.01])
        error = target - tip
        centred = centred or (np.abs(error[:2]).max() < 0.0003 and abs(arm.target_yaw) < 1e-3)
        dz = -0.25 if centred else 0.5 * error[2] / MAX_STEP_M
        turn = -arm.target_yaw / 0.15
        action = np.array(
            [*np.clip(0.5 * error[:2] / MAX_STEP_M, -0.5, 0.5), np.clip(dz, -0.5, 0.5), turn, 1.0]
        )
        env.step(action.astype(np.float32))
        deepest = max(deepest, hole[2] + HOLE_DEPTH - task.tip()[2])
    assert centred, "the peg never settled over its target"
    return deepest


@pytest.mark.parametrize("offset_m", [0.0, 0.0009])
def test_peg_enters_when_within_the_clearance(offset_m):
    assert push_peg(offset_m) > 0.03


@pytest.mark.parametrize("offset_m", [0.0015, 0.0025])
def test_peg_cannot_enter_when_misaligned_by_more_than_the_clearance(offset_m):
    # Clearance is 2 mm in all, 1 mm a side: 1.5 mm off puts the peg's edge 0.5 mm onto the rim.
    # (At 1.2 mm, 0.2 mm of overlap, the soft contacts let the pushed peg slip in.)
    assert push_peg(offset_m) < 0.001


def test_through_the_loop_with_the_scripted_teleop():
    env = make_arm_env("cube_place", cameras=())
    loop = ControlLoop(env, teleop=ScriptedTeleop(make_expert(env, noise=0.1, seed=0)), rate_hz=None)
    results = loop.run(3, seed=10)
    assert sum(r.success for r in results) >= 2
