"""`robot-rl idm-iql`: IQL on inverse-dynamics labels for action-free episodes (SS-ORL's split),
measured against IQL on the fully labeled data, once per seed. See conf/idm_iql.yaml."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import OmegaConf

from robot_rl.experiments.seeds import Figure, SeedResults


def run_seed(cfg, seed: int, run: Path) -> dict:
    from robot_rl.commands.train import train_idm, train_iql_learner
    from robot_rl.datasets.split import split_action_free
    from robot_rl.learners.inverse_dynamics import label_actions

    start = time.monotonic()
    labeled, action_free = run / "labeled.zarr", run / "action_free.zarr"
    split = split_action_free(
        cfg.dataset, labeled, action_free, cfg.fraction, cfg.lowest, cfg.reward_key, seed, overwrite=True
    )
    idm = train_idm(cfg.idm, labeled, run / "idm", seed)
    label_actions(action_free, idm["checkpoint"])
    variants = {
        "iql_full_labels": [cfg.dataset],
        "iql_idm_labels": [labeled, action_free],
        "iql_labeled_only": [labeled],
    }
    iql = OmegaConf.merge(cfg.iql, {"reward_key": cfg.reward_key})
    evaluation = {
        name: train_iql_learner(iql, stores if len(stores) > 1 else stores[0], cfg.env, run / name, seed)[
            "evaluation"
        ]
        for name, stores in variants.items()
    }
    full = evaluation["iql_full_labels"][
        "mean_return"
    ]  # the bar is a ratio of returns (on sparse tasks: of successes)
    report = {
        "seed": seed,
        **{f"{k}_success": v["success_rate"] for k, v in evaluation.items()},
        **{f"{k}_return": v["mean_return"] for k, v in evaluation.items()},
        "idm_over_full": evaluation["iql_idm_labels"]["mean_return"] / full if full > 0 else None,
        "split": split,
        "idm": {k: idm[k] for k in ("heldout_nll", "heldout_mse", "heldout_r2", "best_epoch")},
        "seconds": time.monotonic() - start,
    }
    (run / "report.json").write_text(json.dumps(report, indent=2))
    return report


FIGURES = (
    Figure("iql_full_labels_success", "IQL all actions"),
    Figure("iql_idm_labels_success", "IQL IDM labels"),
    Figure("iql_labeled_only_success", "IQL labeled only"),
    Figure("idm_over_full", "IDM / all (return)", ".2f"),
)


def idm_iql(cfg) -> SeedResults:
    from robot_rl.experiments.vlm_iql import mixed_data_seeds

    return mixed_data_seeds(
        cfg,
        "idm-iql",
        run_seed,
        FIGURES,
        ("iql_full_labels_success", "iql_idm_labels_success", "iql_labeled_only_success"),
        lambda r: r["idm_over_full"] is not None and r["idm_over_full"] >= 0.8,
        fraction=cfg.fraction,
        lowest=cfg.lowest,
    )
