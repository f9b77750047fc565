"""FastRLAP's pieces: checkpoints from a demo lap, the progress reward, stuck and flip detection
on the MuJoCo car, recovery kept out of the buffer, the action-rate limit, and a tiny run."""

import dataclasses
import json
import math
import shutil

import mujoco
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robot_rl.core import ControlLoop
from robot_rl.errors import DatasetError
from robot_rl.factory import env_source
from robot_rl.learners.fastrlap import FastRLAPConfig, PracticeStore, practice_env, train_fastrlap
from robot_rl.learners.replay import TransitionSink
from robot_rl.policies.sac import AgentPolicy, SACAgent, SACConfig
from robot_rl.tasks.course import CheckpointTracker, extract_checkpoints, progress_reward, world_velocity
from robot_rl.tasks.practice import FlipDetector, RecoveryTeleop, StuckDetector

ENV = OmegaConf.merge(OmegaConf.load("robot_rl/conf/env/rc_car.yaml"), {"cameras": [], "control_hz": 10})


def test_checkpoints_are_evenly_spaced_along_a_known_path():
    # A circle of radius 2 driven unevenly (slow at first: dense samples), from angle 0 round to 2 pi.
    t = np.linspace(0, 1, 400) ** 2 * 2 * math.pi
    path = 2.0 * np.stack([np.cos(t), np.sin(t)], axis=1)
    cps = extract_checkpoints(path, spacing=1.0)
    assert len(cps) == round(4 * math.pi)  # 12.57 m of lap -> 13 checkpoints
    np.testing.assert_allclose(np.linalg.norm(cps, axis=1), 2.0, atol=1e-3)  # on the path
    angles = np.unwrap(np.arctan2(cps[:, 1], cps[:, 0]) % (2 * math.pi))
    np.testing.assert_allclose(np.diff(angles), 2 * math.pi / 13, atol=2e-3)  # equal arc between them
    np.testing.assert_allclose(cps[-1], path[-1], atol=1e-6)  # the last is the finish line
    with pytest.raises(DatasetError, match="too short"):
        extract_checkpoints(path[:5], spacing=1.0)
    with pytest.raises(DatasetError, match="non-finite"):
        extract_checkpoints(np.full((5, 2), np.nan), spacing=1.0)


def test_reward_is_velocity_projected_toward_the_next_checkpoint():
    xy, target = np.zeros(2), np.array([3.0, 0.0])
    assert progress_reward(xy, np.array([2.0, 0.0]), target) == pytest.approx(2.0)  # straight at it
    assert progress_reward(xy, np.array([0.0, 2.0]), target) == pytest.approx(0.0)  # across
    assert progress_reward(xy, np.array([-1.0, 0.0]), target) == pytest.approx(-1.0)  # away: negative
    assert progress_reward(xy, np.array([1.0, 1.0]), target) == pytest.approx(1.0)  # |v| cos 45 deg
    np.testing.assert_allclose(world_velocity(np.array([1.0, 0.0, 0.0]), math.pi / 2), [0.0, 1.0], atol=1e-12)


def test_checkpoints_advance_in_order_and_laps_are_timed():
    tracker = CheckpointTracker(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]]), radius=0.3)
    assert tracker.advance(np.array([2.0, 0.0]), 1.0) == (0, None)  # out of order: nothing
    assert tracker.advance(np.array([1.0, 0.1]), 2.0) == (1, None)
    assert tracker.advance(np.array([2.0, 0.0]), 3.0) == (1, None)
    assert tracker.advance(np.array([0.0, 0.0]), 4.5) == (1, 4.5) and tracker.laps_completed == 1


def test_stuck_detection():
    stuck = StuckDetector(window=30, radius=0.3)
    assert not any(stuck.update(np.array([0.01 * i, 0.0])) for i in range(29))
    assert stuck.update(np.array([0.29, 0.0]))  # 30 positions within 0.3 m of their mean
    moving = StuckDetector(window=30, radius=0.3)
    assert not any(moving.update(np.array([0.1 * i, 0.0])) for i in range(100))  # 1 m/s at 10 Hz


def test_flip_detection_on_the_mujoco_car():
    env = practice_env(env_source(ENV), {}, FastRLAPConfig(), extract_checkpoints(_circle(), 1.0), 100)
    car = env.robot
    env.reset(seed=0)
    upright = FlipDetector()
    assert not any(upright.update(_settle(car)) for _ in range(8))
    x, y, yaw = car.pose()
    car.place(x, y, yaw)
    qpos = car.world.data.qpos
    qpos[car._qpos + 2] = 0.3
    qpos[car._qpos + 3 : car._qpos + 7] = [0.0, 1.0, 0.0, 0.0]  # rolled 180 degrees: on its roof
    mujoco.mj_forward(car.world.model, car.world.data)
    flipped = FlipDetector()
    assert any(flipped.update(_settle(car)) for _ in range(8))


def test_recovery_steps_are_not_stored_and_practice_needs_no_reset():
    checkpoints = extract_checkpoints(_circle(), 1.0)
    env = practice_env(env_source(ENV), {}, FastRLAPConfig(stuck_window=10), checkpoints, 120)
    stored = []
    store = PracticeStore(stored.append)
    teleop = RecoveryTeleop(env.task, steps=5)

    class IntoTheWall:  # full throttle straight ahead: into the wall of the first bend, stuck against it
        starts = []

        def reset(self):  # the loop calls it right after the env's reset
            self.starts.append(env.robot.pose())

        def __call__(self, obs):
            return np.array([0.0, 1.0], np.float32)

    policy = IntoTheWall()
    loop = ControlLoop(
        env, policy, teleop, rate_hz=None, execute_k=1, recorder=TransitionSink(store, keep_prev=True)
    )
    with env:
        first = loop.run_episode(seed=0)
        end_of_first = env.robot.pose()
        second = loop.run_episode(seed=1)  # a second stretch of the drive
    loop.close()
    assert teleop.manoeuvres >= 1 and env.task.counts["stuck"] >= 1
    assert store.skipped == first.intervened_steps + second.intervened_steps > 0
    assert store.stored + store.skipped == 240 and not any(t["intervened"] for t in stored)
    np.testing.assert_array_equal(stored[0]["prev_action"], np.zeros(2))  # the drive starts from rest
    # No reset between stretches: the second began where the first ended, not at the start line.
    np.testing.assert_allclose(policy.starts[1], end_of_first, atol=1e-4)
    assert np.linalg.norm(policy.starts[1][:2] - policy.starts[0][:2]) > 0.5


def test_action_rate_limit_in_acting_and_in_the_update():
    torch.manual_seed(0)
    agent = SACAgent(
        SACConfig(state_dim=4, action_dim=2, action_rate_limit=0.2, critic_ensemble=4, critic_subsample=2)
    )
    obs = {"state": torch.randn(64, 4)}
    prev = torch.rand(64, 2) * 2 - 1
    for deterministic in (True, False):
        action = agent.act(obs, deterministic=deterministic, prev_action=prev)
        assert torch.all((action - prev).abs() <= 0.2 + 1e-6) and torch.all(action.abs() <= 1)
    a, _ = agent.sample_action(agent.encoder(obs), prev)  # what the actor loss and the target use
    assert torch.all((a - prev).abs() <= 0.2 + 1e-6)
    # The actor reads the previous action: the same state with another one acts differently.
    assert not torch.allclose(
        agent.act(obs, deterministic=True, prev_action=prev),
        agent.act(obs, deterministic=True, prev_action=-prev),
    )
    # The update runs on batches carrying prev_action (the target limits a' around the batch's action).
    batch = {
        "obs": obs,
        "next_obs": {"state": torch.randn(64, 4)},
        "action": agent.act(obs, prev_action=prev),
        "prev_action": prev,
        "reward": torch.randn(64),
        "mask": torch.ones(64),
    }
    info = agent.update([batch] * agent.cfg.cta_ratio)
    assert np.isfinite(info["critic_loss"]) and np.isfinite(info["actor_loss"])
    # Through the loop: the policy moves at most 0.2 from what was executed last.
    policy = AgentPolicy(agent, deterministic=True, keep_prev=True)
    policy.executed(np.array([0.9, -0.9], np.float32))
    out = policy({"state": np.zeros(4, np.float32)})
    assert np.all(np.abs(out - [0.9, -0.9]) <= 0.2 + 1e-6)


def test_a_tiny_fastrlap_run_writes_results_and_the_course_plot(tmp_path):
    cfg = FastRLAPConfig(
        env_steps=60,
        checkpoint_every=30,
        training_starts=32,
        batch_size=32,
        eval_laps=1,
        eval_max_steps=40,
        episode_steps=30,
        sac={"hidden": [32, 32], "critic_ensemble": 4},
    )
    result = train_fastrlap(env_source(ENV), tmp_path, cfg, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["demo"]["lap_time"] == pytest.approx(20.0, abs=1.0)  # the slow 1 m/s demo lap of course 0
    assert saved["checkpoints"] == 20 and saved["env_steps"] >= 60 and saved["learner_steps"] > 0
    assert (
        saved["sac"]["critic_ensemble"] == 4
        and saved["sac"]["critic_subsample"] == 2
        and saved["sac"]["cta_ratio"] == 8
    )
    assert (tmp_path / "course.png").stat().st_size > 10_000 and result["evaluation"]["steps"] > 0
    assert SACAgent.load(tmp_path / "checkpoint").cfg.action_rate_limit == 0.2
    # Resumed from its checkpoint at the end of the first practice episode (as after a crash there),
    # practice goes on with the learner, its buffers and the counts where they were.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "checkpoints", resumed / "checkpoints")
    [mid] = (resumed / "checkpoints").glob("step_*.pt")
    assert mid.name == "step_000000030.pt"
    again = train_fastrlap(
        env_source(ENV), resumed, dataclasses.replace(cfg, resume=str(resumed)), progress=False
    )
    assert again["env_steps"] == saved["env_steps"] and again["learner_steps"] > 0
    assert again["stored"] + again["recovery_steps"] == again["env_steps"]  # none lost, none twice
    first = {k: [p for p in v if p[0] <= 30] for k, v in saved["history"].items()}
    history = json.loads((resumed / "results.json").read_text())["history"]
    assert all(history[k][: len(v)] == v for k, v in first.items() if v)  # its curve, from step 0


def _circle():
    t = np.linspace(0, 2 * math.pi, 200)
    return 3.0 * np.stack([np.cos(t), np.sin(t)], axis=1)


def _settle(car):
    car.command(np.zeros(2))
    return car.observe()["accel"]


def test_a_frozen_pretrained_cnn_encodes_images_and_stays_frozen(tmp_path):
    """FastRLAP's image variant: the CNN of an offline IQL, loaded into SAC, frozen through updates."""
    import gymnasium as gym

    from robot_rl.errors import ConfigError
    from robot_rl.learners.hil_serl import HILSERLConfig, make_agent
    from robot_rl.learners.icvf import pretrained_encoder
    from robot_rl.policies.iql import IQLAgent, IQLConfig

    torch.manual_seed(0)
    iql = IQLAgent(IQLConfig(state_dim=3, action_dim=2, image_keys=("image/fpv",), image_size=32))
    agent = SACAgent(
        SACConfig(
            state_dim=3,
            action_dim=2,
            image_keys=("image/fpv",),
            image_size=32,
            frozen_cnn=True,
            action_rate_limit=0.2,
            critic_ensemble=4,
            critic_subsample=2,
            cta_ratio=2,
        )
    )
    iql.save(tmp_path / "iql")
    agent.init_camera_encoder(pretrained_encoder(tmp_path / "iql", agent.cfg.image_keys, 32))
    pretrained = {k: v.clone() for k, v in iql.encoder.state_dict().items()}
    with pytest.raises(ConfigError, match="at 32 px"):
        pretrained_encoder(tmp_path / "iql", ("image/fpv",), 48)
    # HIL-SERL's SAC takes the same hand-over (V-PTR): encoder_init sets the frozen CNN.
    spaces = {
        "state": gym.spaces.Box(-1, 1, (3,)),
        "image/fpv": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
    }
    hil = make_agent(
        spaces,
        2,
        HILSERLConfig(
            encoder_init=str(tmp_path / "iql"), sac={"image_keys": ["image/fpv"], "image_size": 32}
        ),
    )
    assert hil.cfg.frozen_cnn
    torch.testing.assert_close(
        hil.encoder.cnn.state_dict()["convs.0.head.weight"], pretrained["convs.0.head.weight"]
    )

    def obs(n):
        return {"state": torch.randn(n, 3), "image/fpv": torch.rand(n, 3, 32, 32)}

    batch = {
        "obs": obs(16),
        "next_obs": obs(16),
        "action": torch.rand(16, 2) * 2 - 1,
        "prev_action": torch.rand(16, 2) * 2 - 1,
        "reward": torch.randn(16),
        "mask": torch.ones(16),
    }
    for _ in range(3):
        agent.update([batch, batch])
    for k, v in agent.encoder.cnn.state_dict().items():
        torch.testing.assert_close(v, pretrained[k])  # the critic's gradients never reach it
    agent.save(tmp_path / "sac")
    loaded = SACAgent.load(tmp_path / "sac")  # the CNN travels with the agent: no IQL needed to deploy
    torch.testing.assert_close(
        loaded.encoder.cnn.state_dict()["convs.0.head.weight"], pretrained["convs.0.head.weight"]
    )
    x = obs(4)
    torch.testing.assert_close(loaded.act(x, deterministic=True), agent.act(x, deterministic=True))
    # V-PTR's other arm (encoder_freeze=false): the same CNN trained on through the critic,
    # its target copy following.
    tuned = make_agent(
        spaces,
        2,
        HILSERLConfig(
            encoder_init=str(tmp_path / "iql"),
            encoder_freeze=False,
            sac={"image_keys": ["image/fpv"], "image_size": 32},
        ),
    )
    assert tuned.cfg.finetune_cnn and not hil.cfg.finetune_cnn
    with pytest.raises(ValueError, match="finetune_cnn"):
        SACConfig(state_dim=3, action_dim=2, finetune_cnn=True)  # nothing pretrained to fine-tune
    key = "convs.0.head.weight"
    for _ in range(3):
        tuned.update([batch] * tuned.cfg.cta_ratio)
    moved, target = tuned.encoder.cnn.state_dict()[key], tuned.target_encoder.cnn.state_dict()[key]
    assert not torch.allclose(moved, pretrained[key]) and not torch.allclose(target, pretrained[key])
    assert (target - pretrained[key]).abs().sum() < (moved - pretrained[key]).abs().sum()  # soft: it lags
