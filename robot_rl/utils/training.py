"""Pieces every learner shares: run folders, logging (TensorBoard + JSON), learning-curve plots, EMA."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from robot_rl.errors import ConfigError, require

# Where runs log besides TensorBoard and results.json: set for a command by `logging_to`.
_TRACKING: dict = {"logger": "tensorboard"}


@contextlib.contextmanager
def logging_to(logger: str, project: str = "robot_rl", config: dict | None = None):
    """Every RunLog made inside logs to `logger` too: "tensorboard" (only) or "wandb" (Weights &
    Biases, the `wandb` extra; WANDB_MODE=offline writes the run under its folder's wandb/), with
    `config` as the run's config."""
    if logger not in ("tensorboard", "wandb"):
        raise ConfigError(f"logger must be tensorboard or wandb, got {logger!r}")
    if logger == "wandb":
        require("wandb", "wandb", "logger=wandb")
    saved = dict(_TRACKING)
    _TRACKING.update(logger=logger, project=project, config=config, open_runs=[])
    try:
        yield
    finally:
        for run in _TRACKING["open_runs"]:  # a learner that raised: its W&B run ends as failed
            run.finish(exit_code=1)
        _TRACKING.clear()
        _TRACKING.update(saved)


def note(message: str) -> None:
    """A line for the person watching, above any progress bar, on stderr: stdout carries the
    command's result (JSON) for scripts."""
    import sys

    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class RunLog:
    """Scalars of one run: TensorBoard events, a JSON of every logged value, and a PNG curve; and,
    under `logging_to("wandb")`, the same scalars, the config and the curve in a W&B run."""

    def __init__(self, directory, title: str):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.writer = SummaryWriter(str(self.dir / "tensorboard"))
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.start = time.monotonic()
        self.wandb = None
        if _TRACKING["logger"] == "wandb":
            import wandb

            self.wandb = wandb.init(
                project=_TRACKING["project"],
                dir=str(self.dir),
                name=f"{self.dir.name} {title}",
                config=_TRACKING["config"],
                reinit="create_new",  # a command may hold several runs (a learner and its evaluations)
            )
            _TRACKING["open_runs"].append(self.wandb)

    def log(self, step: int, **values: float) -> None:
        for key, value in values.items():
            value = float(value)
            self.writer.add_scalar(key, value, step)
            self.history.setdefault(key, []).append((step, value))
        if self.wandb is not None:
            self.wandb.log({k: float(v) for k, v in values.items()}, step=step)

    def videos(self, step: int, paths: list[str]) -> None:
        """Evaluation videos of `step` (mp4 files written beside): to W&B too, when it logs."""
        if self.wandb is not None and paths:
            import wandb

            self.wandb.log({"eval_video": [wandb.Video(p, format="mp4") for p in paths]}, step=step)

    def close(self, results: dict, curves: tuple[str, ...]) -> dict:
        """Write results.json and the learning-curve PNG; returns results with their paths."""
        self.writer.close()
        results = {
            **results,
            "seconds": time.monotonic() - self.start,
            "plot": str(self.dir / "curve.png"),
            "results": str(self.dir / "results.json"),
        }
        self._plot(curves)
        (self.dir / "results.json").write_text(json.dumps({**results, "history": self.history}, indent=2))
        if self.wandb is not None:
            import wandb

            self.wandb.log({"curve": wandb.Image(str(self.dir / "curve.png"))})
            self.wandb.summary.update({k: v for k, v in results.items() if isinstance(v, (int, float, str))})
            self.wandb.finish()
            _TRACKING["open_runs"].remove(self.wandb)
        return results

    def _plot(self, curves: tuple[str, ...]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = [c for c in curves if c in self.history]
        if not shown:  # a run too short to log anything still gets its (empty) figure
            fig, ax = plt.subplots(figsize=(7, 2.4))
            ax.text(0.5, 0.5, "no values logged", ha="center", va="center")
            ax.set_axis_off()
            fig.suptitle(self.title)
            fig.savefig(self.dir / "curve.png", dpi=100)
            plt.close(fig)
            return
        fig, axes = plt.subplots(
            len(shown), 1, figsize=(7, 2.4 * max(len(shown), 1)), squeeze=False, sharex=True
        )
        for ax, key in zip(axes[:, 0], shown):
            steps, values = zip(*self.history[key])
            ax.plot(steps, values, lw=1.2)
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.suptitle(self.title)
        fig.tight_layout()
        fig.savefig(self.dir / "curve.png", dpi=100)
        plt.close(fig)


class EMA:
    """Exponential moving average of weights with Diffusion Policy's warm-up schedule:
    decay = 1 - (1 + step) ** -power, clipped to [0, max_decay]."""

    def __init__(self, model: torch.nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_decay, self.step = power, max_decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = float(np.clip(1.0 - (1.0 + self.step) ** -self.power, 0.0, self.max_decay))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)
        self.step += 1


def seed_everything(seed: int, threads: int = 1) -> np.random.Generator:
    """Seed torch and numpy, and set torch's intra-op threads.

    One thread by default: with these small networks on a 2-core machine, OpenMP worker threads
    spin against the vector env's physics threads and any other busy process; a training step was
    measured 40x slower with 2 threads under such contention than with 1.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    return np.random.default_rng(seed)


def logged_curves(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every value a run logged, read from its TensorBoard events: works on a finished, a running
    and a killed run alike (results.json holds only the end)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((Path(run_dir) / "tensorboard").glob("events.*"))
    if not files:
        raise ConfigError(f"{run_dir} has no logged values (no tensorboard/events.* in it)")
    curves: dict[str, list[tuple[int, float]]] = {}
    for path in files:  # a resumed run may have written several files
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for key in events.Tags()["scalars"]:
            curves.setdefault(key, []).extend((e.step, e.value) for e in events.Scalars(key))
    return {k: sorted(v) for k, v in curves.items()}


def plot_runs(runs: list, curves: list[str], out, smooth: int = 1) -> Path:
    """One panel per curve, one line per run (named by its folder), each a running mean over
    `smooth` logged values (curves of 20 values or fewer, such as evaluations, as they are):
    learning curves of several seeds or arms side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = {Path(run).name: logged_curves(run) for run in runs}
    absent = [c for c in curves if not any(c in runs_curves for runs_curves in logged.values())]
    if absent:
        known = sorted({k for runs_curves in logged.values() for k in runs_curves})
        raise ConfigError(f"no run logged {', '.join(absent)}; they logged {', '.join(known)}")
    fig, axes = plt.subplots(len(curves), 1, figsize=(7, 2.6 * len(curves)), squeeze=False, sharex=True)
    for ax, key in zip(axes[:, 0], curves):
        for name, runs_curves in logged.items():
            if key not in runs_curves:
                continue
            steps, values = map(np.asarray, zip(*runs_curves[key]))
            sparse = len(values) <= 20  # a few points (evaluations): as they are, marked
            width = 1 if sparse else smooth
            sums = np.cumsum(np.concatenate([[0.0], values]))
            start = np.maximum(np.arange(len(values)) + 1 - width, 0)  # the window, shorter at first
            mean = (sums[1:] - sums[start]) / (np.arange(len(values)) + 1 - start)
            ax.plot(steps, mean, lw=1.2, label=name, marker="o" if sparse else None, ms=4)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
