"""Actor and learner apart on a real local Ray (2 CPUs): transitions reach the learner, weights
come back to the actor, and the run leaves a checkpoint and both buffers."""

import pytest
from omegaconf import OmegaConf

from robot_rl.factory import env_source
from robot_rl.learners.hil_serl import HILSERLConfig
from robot_rl.learners.replay import ReplayBuffer

ray = pytest.importorskip("ray", reason="the dist extra (ray) is not installed")


@pytest.mark.timeout(600)  # ~15 s on an idle machine; Ray workers starve when the cores are busy
def test_actor_and_learner_exchange_transitions_and_weights(tmp_path):
    from robot_rl.cli import CONF_DIR
    from robot_rl.learners.hil_serl_ray import train_hil_serl_ray

    env_cfg = OmegaConf.load(CONF_DIR / "env" / "cube_lift.yaml")
    env_cfg.cameras = []
    cfg = HILSERLConfig(
        env_steps=300,
        batch_size=32,
        training_starts=50,
        human="schedule",
        human_until=300,
        eval_episodes=2,
        eval_num_envs=2,
        rate_hz=None,
        sac={"hidden": [32, 32]},
    )
    result = train_hil_serl_ray(env_source(env_cfg), tmp_path, cfg, weights_every=5, progress=False)
    actor, learner = result["actor"], result["learner_stats"]
    assert actor["env_steps"] >= 300
    assert learner["received"] == actor["env_steps"]  # every transition arrived, once
    assert learner["learner_steps"] > 0 and actor["weights_version"] >= 1  # the actor ran on learned weights
    online = ReplayBuffer.load(tmp_path / "buffers" / "online.zarr")
    prior = ReplayBuffer.load(tmp_path / "buffers" / "prior.zarr")
    assert len(online) == actor["env_steps"] and len(prior) == actor["intervened_steps"]
    assert (tmp_path / "checkpoint" / "model.safetensors").exists() and (tmp_path / "curve.png").exists()
