"""robosuite envs (Lift, NutAssemblySquare, PickPlaceCan) through RobotEnv and the ControlLoop."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("robosuite", reason="robosuite is the [sim] extra: pip install robot_rl[sim]")

from robot_rl.cli import compose  # noqa: E402
from robot_rl.core import ControlLoop  # noqa: E402
from robot_rl.factory import (
    make_sim_env,  # noqa: E402
    safety_from_config,  # noqa: E402
)
from robot_rl.sim.robosuite_adapter import LiftExpert, SquareExpert, make_robosuite_env  # noqa: E402
from robot_rl.tasks.teleops import ScriptedTeleop  # noqa: E402

OBJECT_STATE_DIM = {"Lift": 10, "NutAssemblySquare": 14, "PickPlaceCan": 14}
PANDA_STATE_DIM = 3 + 4 + 2 + 7 + 7 + 7  # ee_pos, ee_quat, gripper_qpos, joint_pos_cos/sin, joint_vel
SIZE = 48


@pytest.fixture(scope="module", params=list(OBJECT_STATE_DIM))
def env(request):
    env = make_robosuite_env(request.param, cameras=("agentview",), image_size=SIZE, max_steps=20)
    yield env
    env.close()


@pytest.fixture(scope="module")
def lift():
    """State only: no camera, so stepping runs at full physics speed."""
    env = make_robosuite_env("Lift", cameras=(), max_steps=100)
    yield env
    env.close()


def suite_of(env):
    return env.robot.env


def test_reset_and_step_follow_the_conventions(env):
    name = type(suite_of(env)).__name__
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["state"].shape == (PANDA_STATE_DIM + OBJECT_STATE_DIM[name],)
    assert obs["image/agentview"].shape == (SIZE, SIZE, 3) and obs["image/agentview"].dtype == np.uint8
    assert list(env.state_layout)[:3] == ["ee_pos", "ee_quat", "gripper_qpos"]
    assert list(env.state_layout)[-1] == "object_state"
    # robosuite's OSC_POSE + gripper action: 7 dims in [-1, 1], which normalized actions map onto.
    assert env.action_space.shape == (7,)
    low, high = env.robot.action_spec.bounds()
    np.testing.assert_array_equal(low, suite_of(env).action_spec[0])
    np.testing.assert_array_equal(high, suite_of(env).action_spec[1])
    eef_pos = suite_of(env)._get_observations(force_update=True)["robot0_eef_pos"]
    np.testing.assert_array_equal(obs["state"][:3], eef_pos.astype(np.float32))
    start = env.robot.time
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert env.robot.time == pytest.approx(start + 0.05)  # one command = one 20 Hz robosuite step
    assert env.raw_obs["timestamp/agentview"] == env.robot.time
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["success"] == suite_of(env)._check_success()


def test_stop_does_not_advance_physics(env):
    env.reset(seed=0)
    env.step(np.ones(7, np.float32))
    qpos, time = suite_of(env).sim.data.qpos.copy(), env.robot.time
    env.robot.stop()
    env.hold()  # what the loop does when the safety layer rejects an action
    np.testing.assert_array_equal(suite_of(env).sim.data.qpos, qpos)
    assert env.robot.time == time


def test_images_are_upright(env):
    obs, _ = env.reset(seed=0)
    camera = env.cameras[0]
    raw = camera.render_raw()
    np.testing.assert_array_equal(obs["image/agentview"], raw[::-1])
    if type(suite_of(env)).__name__ == "PickPlaceCan":
        return  # dark bins at the bottom: the brightness check below does not apply
    image = obs["image/agentview"].astype(float)
    assert image[:4].mean() < image[-4:].mean() - 50  # grey wall and robot above, white table below


def _pixel(sim, camera: str, point: np.ndarray, size: int) -> tuple[int, int]:
    """Where `point` (world) appears in an upright image of `camera`: row 0 is the top."""
    m, d = sim.model._model, sim.data._data
    cam = m.camera(camera).id
    p = d.cam_xmat[cam].reshape(3, 3).T @ (point - d.cam_xpos[cam])  # x right, y up, looking down -z
    f = size / 2 / np.tan(np.radians(m.cam_fovy[cam]) / 2)
    return int(round(size / 2 - f * p[1] / -p[2])), int(round(size / 2 + f * p[0] / -p[2]))


def test_the_red_cube_is_where_the_camera_geometry_puts_it():
    env = make_robosuite_env("Lift", cameras=("agentview",), image_size=64)
    try:
        for seed in (0, 1):
            obs, _ = env.reset(seed=seed)
            sim = suite_of(env).sim
            row, col = _pixel(sim, "agentview", sim.data.body_xpos[suite_of(env).cube_body_id], 64)
            red = lambda rgb: rgb[0] > rgb[1] + 30 and rgb[0] > rgb[2] + 30  # noqa: E731
            assert red(obs["image/agentview"][row, col].astype(int))
            assert not red(env.cameras[0].render_raw()[row, col].astype(int))
        # A second env makes its own GL context current; this camera must still render its scene.
        other = make_robosuite_env("PickPlaceCan", cameras=("agentview",), image_size=32)
        other.reset(seed=0)
        np.testing.assert_array_equal(env.cameras[0].read().image, obs["image/agentview"])
        other.close()
    finally:
        env.close()


def _teleport_to_success(suite) -> None:
    """Put the task's object where robosuite's success check wants it (no physics step)."""
    name = type(suite).__name__
    if name == "Lift":
        obj, pos = suite.cube, suite.sim.data.body_xpos[suite.cube_body_id] + [0.0, 0.0, 0.1]
    elif name == "NutAssemblySquare":
        obj = next(nut for nut in suite.nuts if nut.name == "SquareNut")
        pos = np.r_[suite.sim.data.body_xpos[suite.peg1_body_id][:2], suite.table_offset[2] + 0.02]
    else:
        index, obj = next((i, o) for i, o in enumerate(suite.objects) if o.name == "Can")
        pos = suite.target_bin_placements[index] + [0.0, 0.0, 0.05]
    suite.sim.data.set_joint_qpos(obj.joints[0], np.r_[pos, 1.0, 0.0, 0.0, 0.0])
    suite.sim.forward()


def test_success_is_robosuites_own_check(env):
    env.reset(seed=0)
    env.step(np.zeros(7, np.float32))
    _, success, terminated = env.task.evaluate(env.raw_obs)
    assert success is False and not suite_of(env)._check_success() and not terminated
    _teleport_to_success(suite_of(env))
    env.observe()
    reward, terminated, truncated, info = env.evaluate()
    assert info["success"] is True and suite_of(env)._check_success()
    assert (reward, terminated, truncated) == (1.0, True, False)


def test_episodes_truncate_at_max_steps(env):
    env.reset(seed=0)
    for _ in range(env.task.max_steps - 1):
        env.apply_action(np.zeros(7, np.float32))
    assert env.evaluate()[2] is False
    env.apply_action(np.zeros(7, np.float32))
    env.observe()
    assert env.evaluate()[2] is True


def test_reset_is_seeded(env, lift):
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a["state"], b["state"])
    np.testing.assert_array_equal(a["image/agentview"], b["image/agentview"])
    objects = slice(PANDA_STATE_DIM, None)
    assert not np.allclose(a["state"][objects], c["state"][objects])  # a new object placement
    if type(suite_of(env)).__name__ == "Lift":
        # Another env made with the same (default) seed starts the same episode from that seed.
        other, _ = lift.reset(seed=3)
        np.testing.assert_array_equal(other["state"], a["state"])


def test_lift_expert_lifts_the_cube_through_the_loop(lift):
    expert = LiftExpert(lift.robot, lift.task, noise=0.1, seed=0)
    loop = ControlLoop(lift, teleop=ScriptedTeleop(expert), rate_hz=None)
    results = loop.run(3, seed=0)
    assert all(r.success and r.reward == 1.0 and r.steps < 60 for r in results), results
    assert lift.task.success()  # the last episode ended lifted, on robosuite's own check


def test_square_expert_fits_the_nut_through_the_loop():
    env = make_robosuite_env("NutAssemblySquare", cameras=(), max_steps=400)  # state only: fast
    try:
        expert = SquareExpert(env.robot, env.task, noise=0.05, seed=0)
        env.reset(seed=4)
        assert expert.distance() > 0.5  # metres to go: to the handle, up, over and down the peg
        loop = ControlLoop(env, teleop=ScriptedTeleop(expert), rate_hz=None)
        # Seeds 4-6: the nut starts at random headings and goes on with its handle toward the
        # robot, to its side, toward it again (the wrist turning either way).
        results = loop.run(3, seed=4)
        assert all(r.success and r.reward == 1.0 and r.steps < 200 for r in results), results
        assert env.task.success()  # the last episode ended with the nut on the square peg
        assert expert.distance() < 0.05
    finally:
        env.close()


def test_configs_build_envs_and_experts():
    for name, expert_type in (
        ("robosuite_lift", LiftExpert),
        ("robosuite_square", SquareExpert),
        ("robosuite_can", type(None)),
    ):
        cfg = compose("collect", [f"env={name}", "env.cameras=[]"])
        assert cfg.env.kind == "robosuite" and cfg.env.robot == "Panda"
        assert safety_from_config(cfg.env.safety).workspace_low is None
        env, expert = make_sim_env(cfg.env, expert_noise=0.1, seed=0)
        assert isinstance(expert, expert_type) and env.task.max_steps == cfg.env.max_steps
        assert env.task.text == cfg.env.task_text
        env.close()
    cfg = compose("collect", ["env=robosuite_can"])
    assert cfg.env.robosuite_env == "PickPlaceCan" and list(cfg.env.cameras) == ["agentview"]


def test_collect_without_an_expert_is_a_clear_error(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "robot_rl.cli",
            "collect",
            "env=robosuite_can",
            "episodes=1",
            f"out={tmp_path / 'x.zarr'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2 and "has no scripted expert" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_camera_survives_close_and_reconnect_and_a_dead_env():
    env = make_robosuite_env("Lift", cameras=("agentview",), image_size=32)
    first = env.reset(seed=0)[0]["image/agentview"]
    doomed = make_robosuite_env("Lift", cameras=("agentview",), image_size=32)
    doomed.reset(seed=0)
    doomed.close()
    del doomed  # its GL objects were freed in its own context at close, not under ours now
    import gc

    gc.collect()
    np.testing.assert_array_equal(env.cameras[0].read().image, first)
    env.close()
    np.testing.assert_array_equal(env.reset(seed=0)[0]["image/agentview"], first)  # reconnects
    env.close()
