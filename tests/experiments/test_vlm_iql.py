"""`robot-rl vlm-iql` end to end at toy size: collection, labels over loopback HTTP, reward model,
relabeled copy, three learners, summary. The measured run's command is in results/vlm-iql/."""

import json

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore


def test_pipeline_end_to_end(tmp_path, capsys, printed_files, run_record):
    dataset, run = tmp_path / "mixed.zarr", tmp_path / "run"
    args = [
        "vlm-iql",
        f"dataset={dataset}",
        f"run_dir={run}",
        "seeds=[0]",
        "env.max_steps=25",
        "env.image_size=32",
        "collect=[{teleop: scripted, episodes: 2, seed: 0}, {teleop: random, episodes: 2, seed: 1}]",
        "label.pairs=20",
        "reward_model.epochs=2",
        "iql.steps=3",
        "iql.batch_size=8",
        "iql.eval_episodes=2",
        "iql.eval_num_envs=2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    printed_files(out, run)
    run_record(run / "run.json", "vlm-iql")
    assert "| seed | IQL true reward | IQL VLM reward | BC | VLM / true |" in out and "\n| 0 | " in out
    assert "| mean ± std |" not in out  # one seed: no spread to show
    summary = json.loads((run / "summary.json").read_text())
    report = summary["seeds"]["0"]
    results = json.loads((run / "results.json").read_text())
    assert (
        results["complete"] and results["command"] == "robot-rl vlm-iql" and results["config"]["seeds"] == [0]
    )
    assert results["per_seed"]["0"]["bc_success"] == report["bc_success"] == results["mean"]["bc_success"]
    assert results["bar_met_every_seed"] == summary["bar_met_every_seed"]
    assert report["labels"]["labels"] > 0 and report["labels"]["requests"] > 0
    for key in ("iql_true_reward_success", "iql_vlm_reward_success", "bc_success"):
        assert 0.0 <= report[key] <= 1.0
    with EpisodeStore.open(dataset) as original, EpisodeStore.open(run / "seed0" / "data.zarr") as copy:
        assert original.n_episodes == 4 and "reward_vlm" not in original.keys  # the original is left alone
        assert (original.episode_lengths == 25).all()  # collect_env: success does not end an episode
        assert copy.keys == original.keys + ["reward_vlm"]
    checkpoint = run / "seed0" / "iql_vlm_reward" / "checkpoint"
    assert (
        main(
            [
                "eval",
                f"checkpoint={checkpoint}",
                "env=cube_place",
                "env.max_steps=10",
                "episodes=2",
                "num_envs=2",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["kind"] == "iql_agent"
