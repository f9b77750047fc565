"""The ResiP demo pipeline (`robot-rl demo`): scripted demos -> diffusion BC -> evaluation ->
residual PPO -> evaluation, once or once per seed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import OmegaConf

from robot_rl.commands.train import evaluate_checkpoint, train_bc, train_residual
from robot_rl.experiments.seeds import Figure, SeedResults, run_seeds


def resip_demo(cfg) -> Path:
    """Demos -> diffusion BC -> eval -> residual PPO -> eval; writes and returns report.json."""
    from robot_rl.commands.collect import collect

    start = time.monotonic()
    run_dir = Path(cfg.run_dir)
    # Demos are recorded with `collect_env` merged into the env (actuation noise for recovery
    # data); BC and the residual are then trained and evaluated on the env as configured.
    collected = collect(OmegaConf.merge(cfg, {"env": cfg.get("collect_env") or {}}), replace=True)
    bc = train_bc(cfg.bc, collected["store"], run_dir / "bc", int(cfg.seed))
    bc_eval = evaluate_checkpoint(bc["checkpoint"], cfg.env, int(cfg.eval_episodes))
    residual = train_residual(cfg.residual, cfg.env, bc["checkpoint"], run_dir / "residual", int(cfg.seed))
    residual_eval = evaluate_checkpoint(residual["checkpoint"], cfg.env, int(cfg.eval_episodes))
    report = {
        "bc_success": bc_eval["success_rate"],
        "residual_success": residual_eval["success_rate"],
        "episodes": int(cfg.eval_episodes),
        "seconds": time.monotonic() - start,
        "env": cfg.env.name,
        "demos": collected["episodes"],
        "bc_checkpoint": bc["checkpoint"],
        "residual_checkpoint": residual["checkpoint"],
        "bc_plot": bc["plot"],
        "residual_plot": residual["plot"],
        "bc_eval": bc_eval,
        "residual_eval": residual_eval,
        "residual_env_steps": residual["env_steps"],
        # with residual.select_every: the iteration whose policy was kept, and its selection score
        **{k: residual[k] for k in ("selected_iteration", "selected_success_rate") if k in residual},
    }
    path = run_dir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    return path


FIGURES = (
    Figure("bc_success", "diffusion BC success"),
    Figure("residual_success", "ResiP success"),
    Figure("seconds", "minutes", ".1f", 1 / 60),
)


def resip_seeds(cfg) -> SeedResults:
    """The demo pipeline through the shared seed runner, with <run_dir>/results.json and table.md.
    seeds=null: once, with `seed`, in <run_dir> itself (report.json there, as `make demo` has it).
    seeds=[...]: once per seed, each in <run_dir>/seed<N> with its demos in <out>_seed<N>.zarr, and
    <run_dir>/seeds.json with every seed's figures as well."""
    run_dir = Path(cfg.run_dir)
    caption = (
        f"ResiP demo on {cfg.env.name}: {int(cfg.episodes)} scripted demonstrations, diffusion BC, then "
        f"residual PPO; success over {int(cfg.eval_episodes)} evaluation episodes per seed."
    )
    if not cfg.seeds:
        result = run_seeds(
            "robot-rl demo",
            lambda seed, run: json.loads(resip_demo(cfg).read_text()),
            FIGURES,
            seeds=[int(cfg.seed)],
            run_dir=run_dir,
            config=cfg,
            seed_dir=lambda seed: run_dir,
            caption=caption,
            extra=_extra,
        )
        return result.with_file("report", run_dir / "report.json")
    out = Path(cfg.out)

    def one_seed(seed: int, run: Path) -> dict:
        seed_cfg = OmegaConf.merge(
            cfg,
            {
                "seed": seed,
                "seeds": None,
                "run_dir": str(run),
                "out": str(out.with_name(f"{out.stem}_seed{seed}{out.suffix}")),
            },
        )
        return json.loads(resip_demo(seed_cfg).read_text())

    result = run_seeds(
        "robot-rl demo",
        one_seed,
        FIGURES,
        seeds=cfg.seeds,
        run_dir=run_dir,
        config=cfg,
        caption=caption,
        extra=_extra,
    )
    return result.with_file("seeds", write_seed_summary(result.reports, run_dir / "seeds.json"))


def _extra(reports: dict) -> dict:
    first = next(iter(reports.values()))
    return {"env": first["env"], "episodes": first["episodes"]}


def write_seed_summary(reports: dict, path: Path) -> Path:
    """Per-seed BC and residual success, their mean and std, and the seconds each seed took."""
    import numpy as np

    bc = np.array([r["bc_success"] for r in reports.values()])
    residual = np.array([r["residual_success"] for r in reports.values()])
    summary = {
        "env": next(iter(reports.values()))["env"],
        "seeds": {
            str(s): {k: r[k] for k in ("bc_success", "residual_success", "episodes", "seconds")}
            for s, r in reports.items()
        },
        "bc_mean": float(bc.mean()),
        "bc_std": float(bc.std()),
        "residual_mean": float(residual.mean()),
        "residual_std": float(residual.std()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return path
