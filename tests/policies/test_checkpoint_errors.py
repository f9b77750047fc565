"""Damaged checkpoints are one line and exit 2 wherever a checkpoint is read: `eval`, `train
base=`, the ROS policy node's loader; never a traceback."""

import json

import numpy as np
import pytest
import torch

from robot_rl.cli import main
from robot_rl.errors import DatasetError
from robot_rl.policies.diffusion import DiffusionConfig, DiffusionPolicy
from robot_rl.policies.loading import load_policy


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    config = DiffusionConfig(
        state_dim=4,
        action_dim=2,
        obs_horizon=1,
        pred_horizon=8,
        action_horizon=4,
        down_dims=(16, 32),
        diffusion_step_embed_dim=16,
        inference_steps=4,
    )
    policy = DiffusionPolicy(config, -np.ones(4), np.ones(4), -0.5 * np.ones(2), 0.5 * np.ones(2))
    return policy.save(tmp_path / "ckpt")


def break_it(checkpoint, how):
    config, weights = checkpoint / "config.json", checkpoint / "model.safetensors"
    if how == "config not JSON":
        config.write_text('{"kind": "diffusion_policy", "config": {')
    elif how == "config of another version":
        meta = json.loads(config.read_text())
        meta["config"]["no_such_field"] = 1
        config.write_text(json.dumps(meta))
    elif how == "config a list":
        config.write_text("[1, 2]")
    elif how == "weights truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "weights random bytes":
        weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))
    elif how == "weights missing":
        weights.unlink()


CASES = [
    "config not JSON",
    "config of another version",
    "config a list",
    "weights truncated",
    "weights random bytes",
    "weights missing",
]


@pytest.mark.parametrize("how", CASES)
def test_loaders_raise_one_dataset_error(checkpoint, how):
    break_it(checkpoint, how)
    with pytest.raises(DatasetError, match="ckpt") as info:
        load_policy(checkpoint)  # what the ROS policy node loads
    assert "\n" not in str(info.value)
    with pytest.raises(DatasetError):
        DiffusionPolicy.load(checkpoint)


@pytest.mark.parametrize("how", CASES)
@pytest.mark.parametrize(
    "command",
    [["eval", "env=reach", "episodes=1", "num_envs=1"], ["train", "learner=residual_ppo", "env=peg_insert"]],
)
def test_cli_on_a_damaged_checkpoint_is_one_line(checkpoint, how, command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    break_it(checkpoint, how)
    key = "checkpoint" if command[0] == "eval" else "base"
    assert main([*command, f"{key}={checkpoint}", f"out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(checkpoint) in err[0], err
