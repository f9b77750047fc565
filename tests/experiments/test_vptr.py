"""`robot-rl vptr` end to end at toy size: rendered mp4 videos -> imported video store -> ICVF ->
IQL from scratch, from the ICVF's encoder, and with it frozen. The measured run's command is in
results/vptr/."""

import json
import math

import torch

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore
from robot_rl.learners.icvf import ICVFAgent
from robot_rl.policies.iql import IQLAgent


def test_pipeline_end_to_end(tmp_path, capsys, printed_files, run_record):
    data, run = tmp_path / "data", tmp_path / "run"
    args = [
        "vptr",
        f"dataset={data}/robot.zarr",
        f"videos={data}/videos",
        f"video={data}/video.zarr",
        f"run_dir={run}",
        "seeds=[0]",
        "env.max_steps=10",
        "collect=[{teleop: scripted, expert_noise: 0.5, episodes: 2, seed: 0}]",
        "video_collect=[{teleop: random, episodes: 3, seed: 1}]",
        "icvf.steps=2",
        "icvf.batch_size=8",
        "icvf.agent.hidden=[16, 16]",
        "iql.steps=2",
        "iql.batch_size=8",
        "iql.agent.hidden=[16]",
        "iql.eval_episodes=2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    printed_files(out, run)
    run_record(run / "run.json", "vptr")
    assert "| seed | IQL scratch | IQL ICVF frozen | frozen - scratch | IQL ICVF fine-tuned |" in out
    assert sorted(p.name for p in (data / "videos").iterdir()) == [f"episode_000{i}.mp4" for i in range(3)]
    with EpisodeStore.open(data / "video.zarr") as video, EpisodeStore.open(data / "robot.zarr") as robot:
        assert (
            video.keys == ["obs/image/front"] and video.n_episodes == 3
        )  # frames only: no actions, no state
        assert (
            video.episode(0)["obs/image/front"].shape[1:]
            == (32, 32, 3)
            == robot.episode(0)["obs/image/front"].shape[1:]
        )
        assert (
            robot.n_episodes == 2 and robot.episode(0)["obs/state"].shape[1] == 9
        )  # the target is not in the state
    report = json.loads((run / "summary.json").read_text())["seeds"]["0"]
    results = json.loads((run / "results.json").read_text())
    assert results["per_seed"]["0"]["icvf_frozen_minus_scratch"] == report["icvf_frozen_minus_scratch"]
    assert results["video"] == str(data / "video.zarr") and results["complete"]
    assert (
        report["icvf_frozen_minus_scratch"]
        == report["iql_icvf_frozen_success"] - report["iql_scratch_success"]
    )
    assert set(report["target_probe_r2"]) == {"icvf", "random_init"}
    assert all(math.isfinite(r) and r <= 1.0 for r in report["target_probe_r2"].values())
    icvf = ICVFAgent.load(run / "seed0" / "icvf" / "checkpoint").encoder_state()
    frozen = IQLAgent.load(run / "seed0" / "iql_icvf_frozen" / "checkpoint").encoder.state_dict()
    scratch = IQLAgent.load(run / "seed0" / "iql_scratch" / "checkpoint").encoder.state_dict()
    assert all(torch.equal(frozen[k], icvf[k]) for k in icvf)
    assert not all(torch.equal(scratch[k], icvf[k]) for k in icvf)
