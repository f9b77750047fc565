"""`robot-rl sweep`: a grid or random search over `robot-rl train` overrides, every point over
seeds, the trials as Ray tasks (one core each by default). Writes <out>/results.json (every
trial), <out>/table.md (mean ± std over seeds per point, best first) and <out>/sweep.png.
A trial that fails is reported in the table and does not stop the others."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from robot_rl.errors import ConfigError


def sweep_points(cfg) -> list[dict]:
    """The grid's combinations (one empty point without a grid), then `samples` random draws."""
    grid = OmegaConf.to_container(cfg.grid, resolve=True) if cfg.grid else {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values")
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else []
    space = OmegaConf.to_container(cfg.random, resolve=True) if cfg.random else {}
    if space and cfg.samples < 1:
        raise ConfigError("a random search needs samples=N")
    rng = np.random.default_rng(int(cfg.sweep_seed))
    for _ in range(int(cfg.samples) if space else 0):
        point = {}
        for key, spec in space.items():
            if isinstance(spec, dict) and "choices" in spec:
                point[key] = spec["choices"][rng.integers(len(spec["choices"]))]
            elif isinstance(spec, list) and len(spec) == 2 and all(isinstance(v, (int, float)) for v in spec):
                low, high = spec
                value = (
                    math.exp(rng.uniform(math.log(low), math.log(high)))
                    if key in cfg.log_scale
                    else rng.uniform(low, high)
                )
                point[key] = int(round(value)) if all(isinstance(v, int) for v in spec) else float(value)
            else:
                raise ConfigError(f"random.{key} must be [low, high] or {{choices: [...]}}, got {spec}")
        points.append(point)
    return points or [{}]


def _dig(result: dict, path: str):
    value = result
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(
                f"the trials' results have no {path!r} (a dotted path into a trial's results.json)"
            )
        value = value[part]
    return float(value)


def hydra_value(value) -> str:
    """A Python value as a Hydra override value: null, true, quoted strings, nested lists and dicts."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_trial(overrides: list[str], metric: str, cwd: str) -> dict:
    """One `robot-rl train` with these overrides (in a Ray worker, in the driver's folder, so
    relative paths mean what they mean there): its metric, or its error."""
    import os

    import torch

    from robot_rl.commands.train import train
    from robot_rl.config import compose

    torch.set_num_threads(1)
    os.chdir(cwd)
    start = time.monotonic()
    try:
        cfg = compose("train", overrides)
        if cfg.learner.get("dist") not in (None, "none", "sync"):
            raise ConfigError("a sweep's trials run in one process each: leave learner.dist at its default")
        result = train(cfg)
        return {
            "value": _dig(result, metric),
            "seconds": time.monotonic() - start,
            "run": str(Path(result["results"]).parent),
        }
    except Exception as exc:  # reported per trial; the sweep goes on
        return {
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "seconds": time.monotonic() - start,
        }


def _label(point: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items()) or "(base)"


def check_sweep(cfg, overrides: list[str]) -> list[dict]:
    """The sweep's points, once every trial's config is known to compose: checked before anything
    is written or launched."""
    from robot_rl.config import compose
    from robot_rl.utils.dist import check_dist

    if not cfg.seeds:
        raise ConfigError("a sweep needs seeds=[...]")
    if check_dist(cfg.dist) == "none":
        raise ConfigError("a sweep runs its trials on Ray: dist=local or dist=ray")
    points = sweep_points(cfg)
    for point in points:
        compose("train", list(overrides) + [f"{k}={hydra_value(v)}" for k, v in point.items()])
    return points


def sweep(cfg, overrides: list[str]) -> Path:
    """Run the sweep `cfg` (conf/sweep.yaml) over trials of `robot-rl train <overrides> <point> seed=S`."""
    from tqdm import tqdm

    from robot_rl.utils.dist import ray_session
    from robot_rl.utils.training import note

    points = check_sweep(cfg, overrides)
    base = list(overrides)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    trials = [(p, int(s)) for p in points for s in cfg.seeds]
    cwd = str(Path.cwd())
    with ray_session(cfg.dist, cfg.ray_address) as ray:
        # Ray hides GPUs from tasks that do not ask for them: gpus_per_trial > 0 lets trials use one.
        task = ray.remote(num_cpus=float(cfg.cpus_per_trial), num_gpus=float(cfg.gpus_per_trial))(run_trial)
        futures = {}
        for i, (point, seed) in enumerate(trials):
            overrides = (
                base
                + [f"{k}={hydra_value(v)}" for k, v in point.items()]
                + [f"seed={seed}", f"out={out.resolve() / f'trial{i:03d}'}"]
            )
            futures[task.remote(overrides, str(cfg.metric), cwd)] = i
        results: list[dict | None] = [None] * len(trials)
        pending = list(futures)
        with tqdm(total=len(trials), desc="sweep", unit="trial", dynamic_ncols=True) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                i = futures[done[0]]
                results[i] = ray.get(done[0])
                bar.update(1)
                if "error" in results[i]:
                    note(
                        f"trial {i} ({_label(trials[i][0])}, seed {trials[i][1]}) failed: "
                        f"{results[i]['error']}"
                    )
    rows = []
    for point in points:
        got = [(s, r) for (p, s), r in zip(trials, results) if p == point]
        values = [r["value"] for _, r in got if "value" in r]
        rows.append(
            {
                "point": point,
                "label": _label(point),
                "values": values,
                "seeds": [s for s, r in got if "value" in r],
                "failed": [s for s, r in got if "error" in r],
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values)) if values else None,
            }
        )
    rows.sort(key=lambda r: -math.inf if r["mean"] is None else r["mean"], reverse=True)
    (out / "results.json").write_text(
        json.dumps(
            {
                "metric": cfg.metric,
                "overrides": base,
                "rows": rows,
                "trials": [{"point": p, "seed": s, **r} for (p, s), r in zip(trials, results)],
            },
            indent=2,
        )
    )
    table = [f"| point | {cfg.metric} (mean ± std) | seeds | failed |", "|---|---|---|---|"]
    table += [
        f"| {r['label']} | "
        + (f"{r['mean']:.4g} ± {r['std']:.2g}" if r["values"] else "—")
        + f" | {len(r['values'])} | {len(r['failed'])} |"
        for r in rows
    ]
    (out / "table.md").write_text("\n".join(table) + "\n")
    _plot(rows, str(cfg.metric), out / "sweep.png")
    return out


def _plot(rows: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["values"]]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(shown) + 2), 3.5))
    x = np.arange(len(shown))
    ax.bar(x, [r["mean"] for r in shown], yerr=[r["std"] for r in shown], color="#9ecae1", capsize=4)
    for i, r in enumerate(shown):  # every seed's value over its bar
        ax.scatter(np.full(len(r["values"]), i), r["values"], color="#08519c", s=12, zorder=3)
    ax.set_xticks(x, [r["label"] for r in shown], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"sweep: {metric}, mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
