"""Actor and learner apart on a real local Ray (2 CPUs): transitions reach the learner, weights
come back to the actor, and the run leaves a checkpoint and both buffers; a run killed mid-way
resumes with its buffers, its intervention count and its step counter."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robot_rl.learners.replay import ReplayBuffer

ray = pytest.importorskip("ray", reason="the dist extra (ray) is not installed")


@pytest.mark.timeout(600)
def test_a_killed_run_resumes_with_its_buffers_and_counters(tmp_path, killed_mid_run):
    """Transitions reach the learner and weights the actor. The driver is killed with SIGKILL (its
    actors die with it; the cluster stays, as a lab's would); resumed, the run goes on from the
    latest checkpoint, not from zero, and ends with a checkpoint, both buffers and an evaluation."""
    import torch

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        train = [
            str(Path(sys.executable).with_name("robot-rl")),
            "train",
            "learner=hil_serl",
            "env=reach",
            "env.cameras=[]",
            "learner.dist=ray",
            f"learner.ray_address={ray.get_runtime_context().gcs_address}",
            "learner.env_steps=200",
            "learner.batch_size=16",
            "learner.sac.hidden=[16,16]",
            "learner.training_starts=20",
            "learner.eval_every=0",
            "learner.checkpoint_every=40",
            "learner.weights_every=5",
            "learner.eval_episodes=1",
            "learner.eval_num_envs=1",
        ]
        run = tmp_path / "run"
        killed_mid_run([*train, f"out={run}"], run)
        saved = torch.load(max((run / "checkpoints").glob("step_*.pt")), weights_only=True)
        before = saved["actor"]["counts"]
        assert 80 <= before["env_steps"] < 200 and before["intervened_steps"] > 0
        start, end = saved["learner"]["buffers"]["online"][0]
        first = ReplayBuffer.load(
            run / "checkpoints" / "buffers" / "online" / f"{start:012d}-{end:012d}.zarr"
        )
        resumed = subprocess.run(
            [*train, f"learner.resume={run}"], capture_output=True, text=True, timeout=300
        )
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        result = json.loads(resumed.stdout)
        actor, learner = result["actor"], result["learner_stats"]
        assert actor["env_steps"] >= 200 and actor["episodes"] > before["episodes"]
        assert actor["intervened_steps"] >= before["intervened_steps"]  # counted on from the checkpoint
        assert learner["received"] == actor["env_steps"]  # none lost, none twice
        assert learner["learner_steps"] > saved["learner"]["steps"]
        assert actor["weights_version"] >= 1  # the actor acted on learned weights
        assert result["evaluation"]["episodes"] == 1 and (run / "curve.png").exists()
        online = ReplayBuffer.load(run / "buffers" / "online.zarr").contents()
        prior = ReplayBuffer.load(run / "buffers" / "prior.zarr")
        assert len(online["action"]) == actor["env_steps"] and len(prior) == actor["intervened_steps"]
        for key, values in first.contents().items():  # the killed run's transitions begin the buffer
            np.testing.assert_array_equal(online[key][: len(values)], values)
    finally:
        ray.shutdown()
