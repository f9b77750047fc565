"""`robot-rl vlm-iql`: offline RL from VLM feedback (RL-VLM-F's labels, IQL), measured against
IQL on the true reward and BC on the same data, once per seed. See conf/vlm_iql.yaml."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from omegaconf import OmegaConf

from robot_rl.errors import ConfigError
from robot_rl.experiments.seeds import Figure, SeedResults, run_seeds


def collect_parts(env_cfg, parts, out) -> None:
    """Record `parts` (collect settings each: teleop, expert_noise, episodes, seed) in order with
    `env_cfg`, into a temporary store that becomes `out` only once every part is in (an
    interrupted run leaves no partial dataset that a later run would take for the whole one)."""
    from robot_rl.commands.collect import collect
    from robot_rl.config import compose

    final = Path(out)
    partial = final.with_name(final.name + ".collecting")
    shutil.rmtree(partial, ignore_errors=True)
    for part in parts:
        base = compose("collect", [f"env={env_cfg.name}", f"out={partial}", "loop.rate_hz=null"])
        OmegaConf.set_struct(base, False)  # env_cfg may name keys an env config leaves to their defaults
        collect(OmegaConf.merge(base, {"env": env_cfg}, part))
    partial.rename(final)


def collect_mixed(cfg) -> None:
    """cfg.dataset from cfg.collect's parts, with cfg.collect_env over the env and cfg.cameras."""
    env = OmegaConf.merge(
        OmegaConf.to_container(cfg.env, resolve=True),
        cfg.get("collect_env") or {},
        {"cameras": list(cfg.cameras)},
    )
    collect_parts(env, cfg.collect, cfg.dataset)


def reward_arms(cfg) -> dict[str, str]:
    """The learned-reward arms, name -> the store key its reward model reads (cfg.reward_inputs)."""
    arms = dict(cfg.reward_inputs or {})
    if not arms:
        raise ConfigError(
            "vlm-iql needs at least one reward model in reward_inputs (e.g. {state: obs/state})"
        )
    return arms


def run_seed(cfg, seed: int, run: Path) -> dict:
    """One seed: labels, then per arm of cfg.reward_inputs a reward model, its relabeled key
    reward_vlm_<arm> and IQL on it, beside IQL on the true reward and BC, all on one copy of the store."""
    from robot_rl.commands.label import label_vlm
    from robot_rl.commands.train import train_iql_learner, train_preference_reward
    from robot_rl.config import CONF_DIR
    from robot_rl.learners.reward_model import relabel_store

    start = time.monotonic()
    arms = reward_arms(cfg)
    data = run / "data.zarr"  # a copy per seed: the relabeled keys are this seed's alone
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(cfg.dataset, data, ignore=shutil.ignore_patterns(".writer.lock"))
    label_cfg = OmegaConf.merge(
        OmegaConf.load(CONF_DIR / "label.yaml"),
        cfg.label,
        {"store": str(data), "out": str(run / "labels.json"), "seed": seed},
    )
    labels = label_vlm(label_cfg)
    reward_models = {}
    for arm, input_key in arms.items():  # every arm learns from the same labels
        arm_start = time.monotonic()
        model = train_preference_reward(
            OmegaConf.merge(cfg.reward_model, {"labels": str(run / "labels.json"), "input_key": input_key}),
            data,
            run / f"reward_model_{arm}",
            seed,
        )
        relabel = relabel_store(data, model["checkpoint"], f"reward_vlm_{arm}")
        reward_models[arm] = {
            "input_key": input_key,
            "heldout_accuracy": model["heldout_accuracy"],
            "kept_epoch": model["kept_epoch"],
            "relabel": {k: relabel[k] for k in ("mean", "min", "max")},
            "seconds": time.monotonic() - arm_start,
        }
    variants = {
        "iql_true_reward": {"reward_key": "reward", "done_key": "terminated"},
        **{f"iql_vlm_{arm}": {"reward_key": f"reward_vlm_{arm}", "done_key": None} for arm in arms},
        "bc": {"agent": {"beta": 0.0}},
    }
    results = {}
    for name, override in variants.items():
        results[name] = train_iql_learner(OmegaConf.merge(cfg.iql, override), data, cfg.env, run / name, seed)
    success = {k: r["evaluation"]["success_rate"] for k, r in results.items()}
    true = success["iql_true_reward"]
    report = {"seed": seed, **{f"{k}_success": v for k, v in success.items()}}
    for arm, model in reward_models.items():
        accuracy = model["heldout_accuracy"]
        report[f"vlm_{arm}_over_true"] = success[f"iql_vlm_{arm}"] / true if true else None
        report[f"reward_model_{arm}_heldout_accuracy"] = accuracy["ensemble"] if accuracy else None
    report["bar_met"] = {arm: arm_bar_met(report, arm) for arm in arms}
    report |= {
        "labels": labels["report"],
        "reward_models": reward_models,
        "seconds": time.monotonic() - start,
    }
    (run / "report.json").write_text(json.dumps(report, indent=2))
    return report


def arm_bar_met(report: dict, arm: str) -> bool:
    """One learned-reward arm's target: IQL on it at least 0.8 of IQL on the true reward, and above BC."""
    ratio = report[f"vlm_{arm}_over_true"]
    return ratio is not None and ratio >= 0.8 and report[f"iql_vlm_{arm}_success"] > report["bc_success"]


def mixed_data_seeds(
    cfg, command: str, run_seed, figures, keys: tuple[str, ...], bar_met, **extra
) -> SeedResults:
    """The shared frame of vlm-iql, idm-iql and vptr: the mixed dataset (recorded if absent), then
    `run_seed(cfg, seed, folder)` once per seed into <run_dir>/seed<N> through the shared seed runner
    (results.json and table.md, columns `figures`), and <run_dir>/summary.json with each of `keys`'
    mean and whether `bar_met(report)` holds for every seed."""
    if not cfg.seeds:
        raise ConfigError(f"{command} needs seeds=[...]")
    if not Path(cfg.dataset).exists():
        collect_mixed(cfg)
    head = {"env": cfg.env.name, "dataset": str(cfg.dataset), **extra}
    result = run_seeds(
        f"robot-rl {command}",
        lambda seed, run: run_seed(cfg, seed, run),
        figures,
        seeds=cfg.seeds,
        run_dir=cfg.run_dir,
        config=cfg,
        caption=f"`robot-rl {command}` on {cfg.env.name}: success rates over {cfg.iql.eval_episodes} "
        "evaluation episodes, per arm and seed.",
        extra=lambda reports: {**head, "bar_met_every_seed": all(bar_met(r) for r in reports.values())},
    )
    reports = result.reports
    summary = {
        **head,
        "seeds": reports,
        "mean": {k: sum(r[k] for r in reports.values()) / len(reports) for k in keys},
        "bar_met_every_seed": all(bar_met(r) for r in reports.values()),
    }
    path = Path(cfg.run_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return result.with_file("summary", path)


def figures(arms) -> tuple[Figure, ...]:
    """table.md's columns: the success of every IQL arm and BC, each learned reward's ratio to the
    true reward, and each reward model's held-out label accuracy."""
    return (
        Figure("iql_true_reward_success", "IQL true reward"),
        *(Figure(f"iql_vlm_{arm}_success", f"IQL VLM reward ({arm})") for arm in arms),
        Figure("bc_success", "BC"),
        *(Figure(f"vlm_{arm}_over_true", f"{arm} / true", ".2f") for arm in arms),
        *(Figure(f"reward_model_{arm}_heldout_accuracy", f"RM held-out ({arm})") for arm in arms),
    )


def vlm_iql(cfg) -> SeedResults:
    arms = reward_arms(cfg)
    return mixed_data_seeds(
        cfg,
        "vlm-iql",
        run_seed,
        figures(arms),
        ("iql_true_reward_success", *(f"iql_vlm_{arm}_success" for arm in arms), "bc_success"),
        lambda r: all(r["bar_met"].values()),
        reward_inputs=arms,
    )
