"""Checkpoints and resume (robot_rl/utils/checkpoints.py): a diffusion BC, residual PPO, IQL or
HIL-SERL (SAC) run killed with SIGKILL between checkpoints and resumed ends with the same weights,
bit for bit, as the run never killed (CPU, a fixed seed); `resume=` of a folder without a usable
checkpoint is one line and exit 2, and changes nothing in the folder."""

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from robot_rl.cli import main
from robot_rl.utils.checkpoints import Checkpoints

ROBOT_RL = str(Path(sys.executable).with_name("robot-rl"))
BC = [
    "learner=diffusion_bc",
    "env=reach",
    "learner.batch_size=8",
    "learner.policy.down_dims=[8,16]",
    "learner.policy.diffusion_step_embed_dim=8",
    "learner.steps=60",
    "learner.device=cpu",
]
IQL = [
    "learner=iql",
    "env=reach",
    "learner.batch_size=16",
    "learner.agent.hidden=[16,16]",
    "learner.steps=200",
    "learner.eval_episodes=0",
    "learner.device=cpu",
]

PPO = [  # over a frozen diffusion BC base; its envs are mid-episode at every checkpoint
    "learner=residual_ppo",
    "env=reach",
    "learner.num_envs=2",
    "learner.rollout_steps=15",  # episodes of 40 steps: checkpoints fall inside them
    "learner.iterations=12",
    "learner.update_epochs=2",
    "learner.hidden=16",
    "learner.device=cpu",
    "eval_episodes=0",
]
HIL = [  # SAC with demos from the scripted human's interventions; checkpoints at episode ends
    "learner=hil_serl",
    "env=reach",
    "env.cameras=[]",
    "learner.env_steps=200",
    "learner.batch_size=16",
    "learner.sac.hidden=[16,16]",
    "learner.training_starts=20",
    "learner.eval_every=0",
    "learner.eval_episodes=0",
    "learner.log_every=20",
    "learner.device=cpu",
]
EVERY = {id(BC): 10, id(PPO): 3, id(IQL): 10, id(HIL): 40}  # steps (PPO: iterations; HIL-SERL: env steps)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("bc") / "reach.zarr"
    assert (
        main(["collect", "env=reach", "episodes=3", "loop.rate_hz=null", "env.cameras=[]", f"out={path}"])
        == 0
    )
    return path


@pytest.fixture(scope="module")
def base(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    assert (
        main(
            [
                "train",
                *BC,
                "learner.steps=5",
                "learner.policy.obs_horizon=1",
                f"dataset={store}",
                f"out={out}",
            ]
        )
        == 0
    )
    return out / "checkpoint"


@pytest.mark.parametrize(
    "learner", [BC, PPO, IQL, HIL], ids=["diffusion_bc", "residual_ppo", "iql", "hil_serl"]
)
def test_a_killed_run_resumes_to_the_same_weights(store, base, tmp_path, learner, killed_mid_run):
    every = EVERY[id(learner)]
    train = ["train", *learner, f"dataset={store}", f"base={base}"]
    assert main([*train, f"out={tmp_path / 'whole'}"]) == 0
    killed = tmp_path / "killed"
    killed_mid_run([ROBOT_RL, *train, f"learner.checkpoint_every={every}", f"out={killed}"], killed)
    assert not (killed / "checkpoint").exists()  # it never finished
    if learner is HIL:  # a damaged replay buffer segment: refused in one line, the folder untouched
        (segment, *_) = sorted((killed / "checkpoints" / "buffers" / "online").glob("*.zarr"))
        meta = segment / "zarr.json"
        good, before = meta.read_bytes(), digest(killed)
        meta.write_bytes(good[: len(good) // 2])
        refused = subprocess.run(
            [ROBOT_RL, *train, f"learner.resume={killed}"], capture_output=True, text=True
        )
        assert refused.returncode == 2 and "replay buffer" in refused.stderr, refused.stderr[-2000:]
        assert len(refused.stderr.strip().splitlines()) == 1
        meta.write_bytes(good)
        assert digest(killed) == before
    assert main([*train, f"learner.checkpoint_every={every}", f"learner.resume={killed}"]) == 0
    whole, resumed = (load_file(p / "checkpoint" / "model.safetensors") for p in (tmp_path / "whole", killed))
    assert whole.keys() == resumed.keys() and all(whole[k].equal(resumed[k]) for k in whole)
    results = [json.loads((p / "results.json").read_text()) for p in (tmp_path / "whole", killed)]
    for result in results:
        result["history"].pop("updates_per_s", None)  # a speed, not a result
    assert results[0]["history"] == results[1]["history"]  # the logged curve too, from step 0
    counters = ("env_steps", "episodes", "intervened_steps", "intervened_episodes", "learner_steps")
    assert {k: results[0].get(k) for k in counters} == {k: results[1].get(k) for k in counters}
    assert len(list((killed / "checkpoints").glob("step_*.pt"))) <= 3  # the last three kept


def digest(folder: Path) -> dict:
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_resume_without_a_usable_checkpoint_is_one_line_and_changes_nothing(store, tmp_path, capsys):
    train = ["train", *BC, "learner.steps=10", f"dataset={store}"]
    run = tmp_path / "run"
    assert main([*train, "learner.checkpoint_every=5", f"out={run}"]) == 0
    capsys.readouterr()
    cases = {
        "no checkpoint": (tmp_path, "no checkpoint in"),
        "another config": (run, "the run had other batch_size"),
    }
    for what, (folder, says) in cases.items():
        before = digest(folder)
        extra = ["learner.batch_size=4"] if what == "another config" else []
        assert main([*train, *extra, f"learner.resume={folder}"]) == 2, what
        assert says in capsys.readouterr().err, what
        assert digest(folder) == before, what
    latest = run / "checkpoints" / "step_000000005.pt"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    before = digest(run)
    assert main([*train, f"learner.resume={run}"]) == 2
    assert "step_000000005.pt is damaged" in capsys.readouterr().err and digest(run) == before
    other = tmp_path / "other"
    Checkpoints(other, "iql").save(5, {"config": {}})
    assert main([*train, f"learner.resume={other}"]) == 2
    assert "is a iql checkpoint, not diffusion_bc" in capsys.readouterr().err


def test_sigterm_writes_a_checkpoint_at_the_step_reached_and_stops(store, tmp_path):
    """SIGTERM (what `ros2 launch`, Ray and job schedulers send) waits for the step to end, writes a
    checkpoint of it, off the schedule, and the run stops with 130; resumed, it ends as the whole run."""
    train = ["train", *IQL, f"dataset={store}"]
    assert main([*train, f"out={tmp_path / 'whole'}"]) == 0
    stopped = tmp_path / "stopped"
    run = subprocess.Popen(
        [ROBOT_RL, *train, "learner.checkpoint_every=50", f"out={stopped}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while not (stopped / "checkpoints" / "step_000000050.pt").exists():  # training is under way
            assert run.poll() is None, "the run ended before it could be stopped"
            time.sleep(0.002)
        run.send_signal(signal.SIGTERM)
    finally:
        _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "interrupted" in err.decode(), err.decode()[-2000:]
    steps = sorted(int(p.stem.split("_")[1]) for p in (stopped / "checkpoints").glob("step_*.pt"))
    assert 50 < steps[-1] < 200, steps  # the step the signal reached
    assert not (stopped / "checkpoint").exists()  # it stopped before the end
    assert main([*train, "learner.checkpoint_every=50", f"learner.resume={stopped}"]) == 0
    whole, resumed = (
        load_file(p / "checkpoint" / "model.safetensors") for p in (tmp_path / "whole", stopped)
    )
    assert all(whole[k].equal(resumed[k]) for k in whole)


def test_residual_selection_keeps_the_best_evaluated_policy_and_leaves_training_unchanged(
    store, base, tmp_path
):
    """With select_every the result is the best of the periodic evaluations (its own checkpoint);
    the last policy is kept as well, bit-identical to a run without selection."""
    train = ["train", *PPO, "learner.iterations=4", f"dataset={store}", f"base={base}"]
    assert main([*train, f"out={tmp_path / 'plain'}"]) == 0
    select = ["learner.select_every=2", "learner.select_episodes=3"]
    assert main([*train, *select, f"out={tmp_path / 'selected'}"]) == 0
    plain, last = (
        load_file(p / "model.safetensors")
        for p in (tmp_path / "plain/checkpoint", tmp_path / "selected/checkpoint")
    )
    assert all(plain[k].equal(last[k]) for k in plain)
    result = json.loads((tmp_path / "selected/results.json").read_text())
    assert result["selected_iteration"] in (2, 4) and 0.0 <= result["selected_success_rate"] <= 1.0
    assert result["checkpoint"] == str(tmp_path / "selected/best_checkpoint")
    assert result["last_checkpoint"] == str(tmp_path / "selected/checkpoint")
    assert len(result["history"]["selection_success_rate"]) == 2
    assert "selected_iteration" not in json.loads((tmp_path / "plain/results.json").read_text())
