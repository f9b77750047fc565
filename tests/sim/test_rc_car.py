"""The MuJoCo RC car on a generated course, through RobotEnv and the ControlLoop.

Real physics and rendering.
"""

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from robot_rl.core import ControlLoop
from robot_rl.errors import ConfigError
from robot_rl.factory import make_sim_env, safety_from_config
from robot_rl.sim.course import generate_course
from robot_rl.sim.rc_car import (
    MAX_SPEED,
    TRACK,
    WHEELBASE,
    RCCarExpert,
    ackermann,
    from_config,
    make_rc_car_env,
)
from robot_rl.tasks.teleops import ScriptedTeleop

CONFIG = Path(__file__).parents[2] / "robot_rl" / "conf" / "env" / "rc_car.yaml"


@pytest.fixture
def env():
    env = make_rc_car_env(course_seed=0, cameras=("fpv",), image_size=64)
    yield env
    env.close()


@pytest.fixture
def blind_env():
    env = make_rc_car_env(course_seed=0, cameras=())
    yield env
    env.close()


def test_spaces_and_observations(env):
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["state"].shape == (17,) and obs["image/fpv"].shape == (64, 64, 3)
    assert env.action_space.low.tolist() == [-1, -1] and env.action_space.high.tolist() == [1, 1]
    low, high = env.robot.action_spec.bounds()
    assert low.tolist() == [-0.35, -MAX_SPEED] and high.tolist() == [0.35, MAX_SPEED]
    names = env.state_names()
    assert names[:3] == ["pose[0]", "pose[1]", "pose[2]"]
    assert names[-3:] == ["collision", "checkpoint_rel[0]", "checkpoint_rel[1]"]
    # Physics at 500 Hz under a 20 Hz command: one step advances 50 ms of sim time in 25 substeps.
    assert env.robot.world.model.opt.timestep <= 0.002 and env.robot.substeps == 25
    raw = env.raw_obs
    assert raw["accel"][2] == pytest.approx(9.81, abs=0.05)  # an IMU at rest reads gravity
    assert raw["checkpoint_rel"][0] > 0.5  # the first checkpoint lies ahead of the car
    env.step(np.zeros(2, np.float32))
    assert env.robot.world.time == pytest.approx(0.05)


def test_reset_is_seeded(blind_env):
    a, _ = blind_env.reset(seed=3)
    b, _ = blind_env.reset(seed=3)
    c, _ = blind_env.reset(seed=4)
    np.testing.assert_array_equal(a["state"], b["state"])
    assert not np.array_equal(a["state"], c["state"])


def test_course_is_seeded():
    a, b, c = generate_course(5), generate_course(5), generate_course(6)
    np.testing.assert_array_equal(a.centerline, b.centerline)
    assert a.centerline.shape != c.centerline.shape or not np.allclose(a.centerline, c.centerline)
    # Closed and evenly spaced, with checkpoints evenly spread and the last one on the start line.
    steps = np.linalg.norm(np.diff(np.vstack([a.centerline, a.centerline[:1]]), axis=0), axis=1)
    assert np.allclose(steps, a.spacing, rtol=0.05)
    checkpoints = a.checkpoints(10)
    assert checkpoints.shape == (10, 2) and np.allclose(checkpoints[-1], a.centerline[0])
    gaps = np.linalg.norm(np.diff(checkpoints, axis=0), axis=1)
    assert gaps.min() > 0.8 * a.length / 10
    # The built scenes (walls included) follow the seed too.
    m1, m2, m3 = (make_rc_car_env(s, cameras=()).robot.world.model for s in (5, 5, 6))
    np.testing.assert_array_equal(m1.geom_pos, m2.geom_pos)
    assert m1.ngeom != m3.ngeom or not np.allclose(m1.geom_pos, m3.geom_pos)
    with pytest.raises(ValueError, match="track width"):
        generate_course(0, width=5.0)


def test_ackermann_inner_wheel_steers_more(blind_env):
    left, right = ackermann(0.3)
    assert left > right > 0
    # Both wheels aim at one turning centre on the rear axle line: cot(outer) - cot(inner) = W / L.
    assert 1 / math.tan(right) - 1 / math.tan(left) == pytest.approx(TRACK / WHEELBASE)
    assert ackermann(-0.3) == pytest.approx((-right, -left))
    blind_env.reset(seed=0)
    for _ in range(6):
        blind_env.step(np.array([1.0, 0.1], np.float32))  # full left lock, slowly
    measured_left, measured_right = blind_env.robot.steering_angles()
    assert measured_left > measured_right + 0.05
    assert (measured_left, measured_right) == pytest.approx(ackermann(0.35), abs=0.01)
    assert blind_env.raw_obs["gyro"][2] > 0.1  # and the car yaws left


@pytest.mark.parametrize("course_seed", [0, 1, 2])
def test_expert_completes_a_lap(course_seed):
    env = make_rc_car_env(course_seed=course_seed, cameras=(), n_checkpoints=12)
    expert = RCCarExpert(env.task, noise=0.0)
    env.reset(seed=course_seed)
    reached, total = [], 0.0
    for _ in range(env.task.max_steps):
        _, reward, terminated, truncated, info = env.step(expert())
        total += reward
        if reward:
            reached.append(env.task.next_checkpoint)
        if terminated or truncated:
            break
    assert terminated and info["success"] and total == 12
    # Checkpoints were reached one at a time and in order (index 0 again when the lap closes).
    assert reached == [*range(1, 12), 0]
    assert np.all(np.diff(env.task.checkpoint_times) > 0)
    (lap,) = env.task.lap_times
    length = env.task.course.length
    assert length / MAX_SPEED < lap < length / 1.0  # faster than 1 m/s, not faster than top speed
    assert env.task.collisions == 0 and expert.distance() < 0.3


def test_lap_logic_counts_checkpoints_in_order():
    task = make_rc_car_env(course_seed=3, cameras=(), n_checkpoints=5, laps=2).task
    task.reset(np.random.default_rng(0))
    car, data = task.car, task.world.data

    def visit(i: int):
        x, y = task.checkpoints[i]
        car.place(x, y, 0.0)
        data.time += 1.0
        return task.evaluate({})

    assert visit(3) == (0.0, False, False)  # out of order: nothing
    x, y = task.checkpoints[0]
    car.place(x, y, 0.0)  # on checkpoint 0: the observation already points at checkpoint 1
    np.testing.assert_allclose(
        task.observe()["checkpoint_rel"], task.checkpoints[1] - task.checkpoints[0], atol=1e-5
    )
    for i in range(4):
        assert visit(i) == (1.0, False, False)
    assert visit(4) == (1.0, True, False) and task.lap_times == [pytest.approx(6.0)]
    for i in range(4):
        visit(i)
    assert visit(4) == (1.0, True, True) and task.lap_times[1] == pytest.approx(5.0)


def test_driving_into_a_wall_is_detected(blind_env):
    blind_env.reset(seed=0)
    x, y, yaw = blind_env.task.course.start_pose
    blind_env.robot.place(x, y, yaw + math.pi / 2)  # facing the left wall, 0.6 m away
    hits = []
    for _ in range(20):
        blind_env.step(np.array([0.0, 0.5], np.float32))
        hits.append(blind_env.raw_obs["collision"][0])
    assert hits[0] == 0.0 and max(hits) == 1.0
    assert blind_env.task.collisions >= 1 and blind_env.robot.max_contacts >= 1


def test_stop_brakes_to_a_standstill(blind_env):
    blind_env.reset(seed=0)
    for _ in range(8):
        blind_env.step(np.array([0.0, 0.6], np.float32))
    assert blind_env.robot.forward_speed() > 1.0
    blind_env.robot.stop()
    blind_env.robot.world.step(500)  # 1 s of physics with no further commands
    assert abs(blind_env.robot.forward_speed()) < 0.02


def test_fpv_image_is_upright(env):
    obs, _ = env.reset(seed=0)
    image = obs["image/fpv"].astype(float)
    assert image[:8].mean() < 30 < image[-8:].mean()  # black sky above, lit floor below


def test_overview_camera():
    env = make_rc_car_env(course_seed=0, cameras=("fpv", "overview"), image_size=48)
    obs, _ = env.reset(seed=0)
    assert obs["image/overview"].shape == (48, 48, 3) and obs["image/overview"].std() > 5
    env.close()


def test_expert_drives_through_the_loop():
    env = make_rc_car_env(course_seed=4, cameras=("fpv",), image_size=32)
    expert = RCCarExpert(env.task, noise=0.1, seed=0)
    loop = ControlLoop(env, teleop=ScriptedTeleop(expert), rate_hz=None)
    (result,) = loop.run(1, seed=0)
    assert result.success and result.reward == env.task.checkpoints.shape[0]
    assert result.steps < env.task.max_steps


def test_from_config():
    cfg = OmegaConf.load(CONFIG)
    assert cfg.kind == "rc_car" and safety_from_config(cfg.safety).workspace_low is None
    cfg.cameras, cfg.image_size = [], 32
    env, expert = make_sim_env(cfg, expert_noise=0.1, seed=0)
    assert isinstance(expert, RCCarExpert) and env.task.checkpoints.shape == (cfg.n_checkpoints, 2)
    assert env.task.max_steps == cfg.max_steps and env.task.course.seed == cfg.course_seed
    cfg.n_checkpoints = 1
    with pytest.raises(ConfigError, match="n_checkpoints"):
        from_config(cfg)
