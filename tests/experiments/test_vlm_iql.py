"""`robot-rl vlm-iql` end to end at toy size: collection, labels over loopback HTTP, the two reward
models (state MLP, camera CNN), relabeled copy, four learners, summary. The measured run's command
is in results/vlm-iql/."""

import json

import numpy as np

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
        "env.image_size=48",  # the smallest RL-VLM-F's reward CNN takes is 47
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
    assert (
        "| seed | IQL true reward | IQL VLM reward (state) | IQL VLM reward (image) | BC | state / true "
        "| image / true | RM held-out (state) | RM held-out (image) |" in out
    )
    assert "\n| 0 | " in out
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
    for key in ("iql_true_reward_success", "iql_vlm_state_success", "iql_vlm_image_success", "bc_success"):
        assert 0.0 <= report[key] <= 1.0
    assert set(report["bar_met"]) == {"state", "image"}
    models = report["reward_models"]
    assert models["state"]["input_key"] == "obs/state" and models["image"]["input_key"] == "obs/image/front"
    for arm in ("state", "image"):
        assert 0.0 <= report[f"reward_model_{arm}_heldout_accuracy"] <= 1.0
    with EpisodeStore.open(dataset) as original, EpisodeStore.open(run / "seed0" / "data.zarr") as copy:
        assert original.n_episodes == 4 and not any(k.startswith("reward_vlm") for k in original.keys)
        assert (original.episode_lengths == 25).all()  # collect_env: success does not end an episode
        assert copy.keys == original.keys + ["reward_vlm_state", "reward_vlm_image"]
        assert copy.key_attrs("reward_vlm_image")["input_key"] == "obs/image/front"
        state, image = (np.asarray(copy.array(f"reward_vlm_{arm}")[:]) for arm in ("state", "image"))
    assert state.shape == image.shape == (100,) and not np.allclose(state, image)
    checkpoint = run / "seed0" / "iql_vlm_image" / "checkpoint"
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
