"""`robot-rl idm-iql` end to end at toy size: split, IDM, action labels, three IQL runs, summary.
The measured run's command is in results/idm-iql/."""

import json

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore


def test_pipeline_end_to_end(tmp_path, capsys, printed_files, run_record):
    dataset, run = tmp_path / "mixed.zarr", tmp_path / "run"
    args = [
        "idm-iql",
        f"dataset={dataset}",
        f"run_dir={run}",
        "seeds=[0]",
        "env.max_steps=12",
        "cameras=[]",
        "collect=[{teleop: scripted, episodes: 2, seed: 0}, {teleop: random, episodes: 2, seed: 1}]",
        "fraction=0.5",
        "lowest=1.0",
        "idm.epochs=2",
        "idm.hidden=[32]",
        "iql.steps=3",
        "iql.batch_size=8",
        "iql.eval_episodes=2",
        "iql.eval_num_envs=2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    printed_files(out, run)
    run_record(run / "run.json", "idm-iql")
    assert "| seed | IQL all actions | IQL IDM labels | IQL labeled only | IDM / all (return) |" in out
    report = json.loads((run / "summary.json").read_text())["seeds"]["0"]
    results = json.loads((run / "results.json").read_text())
    assert results["per_seed"]["0"] == {
        k: report[k]
        for k in (
            "iql_full_labels_success",
            "iql_idm_labels_success",
            "iql_labeled_only_success",
            "idm_over_full",
        )
    }
    assert (results["fraction"], results["lowest"]) == (0.5, 1.0)
    assert (report["split"]["labeled"], report["split"]["unlabeled"]) == (2, 2)
    for key in ("iql_full_labels_success", "iql_idm_labels_success", "iql_labeled_only_success"):
        assert 0.0 <= report[key] <= 1.0
    full, idm = report["iql_full_labels_return"], report["iql_idm_labels_return"]
    assert report["idm_over_full"] == (idm / full if full > 0 else None)  # the bar: a ratio of returns
    with (
        EpisodeStore.open(dataset) as original,
        EpisodeStore.open(run / "seed0" / "action_free.zarr") as free,
    ):
        assert (original.episode_lengths == 12).all()  # recorded without ending on success
        assert free.key_attrs("action")["source"] == "robot-rl dataset label-actions"
        assert "action" in original.keys and free.n_steps == 24
    assert (
        json.loads((run / "seed0" / "iql_idm_labels" / "results.json").read_text())["transitions"] == 4 * 11
    )
