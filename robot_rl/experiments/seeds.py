"""The seed loop every experiment shares (`robot-rl demo seeds=[...]`, vlm-iql, idm-iql, vptr).

`run_seeds` calls an experiment's per-seed function once per seed, in the order given, each in its
own folder (<run_dir>/seed<N> unless the experiment says otherwise), and writes into <run_dir>:

- results.json: the command, the figures' names, every seed's figures (as reported, unscaled),
  their mean and std (numpy's: population std, ddof 0) over the seeds that reported a number,
  whether the run is complete, the failure if one stopped it, and the resolved config;
- table.md: a Markdown table, one row per seed and (for several seeds) a last row of mean ± std, a column
  per figure.

Both files are rewritten when the run starts and after every seed, so an interrupted or failed run
never loses the seeds it finished: their rows are in table.md and results.json ("complete": false).
A failing seed stops the run (the later seeds would mostly fail the same way, and each takes long):
results.json records it under "failed" and table.md says so below the table; the error then goes
on up naming the seed and where the finished seeds are. A RobotRLError (a user's mistake) becomes
a SeedError, one line in the CLI; anything else (a bug) keeps its type and traceback, with that
text added as a note.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from robot_rl.errors import ConfigError, RobotRLError


class SeedError(RobotRLError):
    """One seed of an experiment failed with a user's mistake (the cause is chained)."""


@dataclass(frozen=True)
class Figure:
    """One number each seed reports: a column of table.md and an entry of results.json."""

    key: str  # the key in the per-seed function's report
    label: str  # the column's heading
    fmt: str = ".1%"  # format spec of a value; the std is written with it, less any sign
    scale: float = (
        1.0  # values are shown times this (1/60: seconds as minutes); results.json keeps them as reported
    )

    def show(self, value, std: bool = False) -> str:
        if not _number(value):
            return "—"
        return format(value * self.scale, self.fmt.replace("+", "") if std else self.fmt)


@dataclass(frozen=True)
class SeedResults:
    """What run_seeds hands back: the reports, the summary written to results.json, and the files."""

    run_dir: Path
    reports: dict[int, dict]  # seed -> the per-seed function's report, in run order
    summary: dict  # results.json's content
    files: dict[str, Path] = field(default_factory=dict)  # name -> path; results and table first

    @property
    def results(self) -> Path:
        return self.files["results"]

    @property
    def table(self) -> Path:
        return self.files["table"]

    def with_file(self, name: str, path: Path) -> SeedResults:
        """The same results with one more file to point the user to (listed after the others)."""
        return dataclasses.replace(self, files={**self.files, name: Path(path)})


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _config(config) -> dict | None:
    if config is None or isinstance(config, dict):
        return config
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException:  # an interpolation that cannot be resolved here: record it as written
        return OmegaConf.to_container(config, resolve=False)


def statistics(reports: dict[int, dict], figures: Sequence[Figure]) -> tuple[dict, dict, dict]:
    """Per figure: mean, std (ddof 0) and how many seeds reported a finite number (None where none did)."""
    import numpy as np

    mean, std, n = {}, {}, {}
    for figure in figures:
        values = np.array([r[figure.key] for r in reports.values() if _number(r[figure.key])], dtype=float)
        n[figure.key] = len(values)
        mean[figure.key] = float(values.mean()) if len(values) else None
        std[figure.key] = float(values.std()) if len(values) else None
    return mean, std, n


def format_table(summary: dict, figures: Sequence[Figure], caption: str | None = None) -> str:
    """table.md's text from results.json's content."""
    done = summary["per_seed"]
    lines = [caption, ""] if caption else []
    lines += ["| seed | " + " | ".join(f.label for f in figures) + " |", "|---|" + "---:|" * len(figures)]
    lines += [
        f"| {seed} | " + " | ".join(f.show(values[f.key]) for f in figures) + " |"
        for seed, values in done.items()
    ]
    if len(done) > 1:  # a single seed has no spread to show
        cells = []
        for f in figures:
            mean, std, n = summary["mean"][f.key], summary["std"][f.key], summary["n"][f.key]
            cell = f"{f.show(mean)} ± {f.show(std, std=True)}" if n else "—"
            cells.append(cell + (f" (n={n})" if 0 < n < len(done) else ""))
        lines.append("| mean ± std | " + " | ".join(cells) + " |")
    notes = []
    if summary["failed"]:
        failed = summary["failed"]
        notes.append(f"seed {failed['seed']} failed: {failed['error']}")
    left = [
        s
        for s in summary["seeds"]
        if str(s) not in done and (not summary["failed"] or s != summary["failed"]["seed"])
    ]
    if left and not summary["complete"]:
        notes.append(("not run: " if summary["failed"] else "still to run: ") + ", ".join(map(str, left)))
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.writing")
    partial.write_text(text)
    os.replace(partial, path)


def run_seeds(
    command: str,
    run_seed: Callable[[int, Path], dict],
    figures: Sequence[Figure],
    *,
    seeds: Sequence[int],
    run_dir,
    config=None,
    seed_dir: Callable[[int], Path] | None = None,
    caption: str | None = None,
    extra: Callable[[dict[int, dict]], dict] | None = None,
) -> SeedResults:
    """`run_seed(seed, folder)` for each seed in `seeds`, in order; returns its reports, and writes
    <run_dir>/results.json and <run_dir>/table.md (see the module's docstring).

    command: what ran, for results.json (e.g. "robot-rl vlm-iql"). figures: the numbers every report
    carries, in column order (a report's value may be None: shown as "—", left out of mean and std).
    config: the experiment's config, recorded resolved. seed_dir: a seed's folder (created before
    its run; default <run_dir>/seed<N>). caption: a line above the table. extra: more top-level
    entries of results.json, from the reports finished so far.
    """
    seeds = [int(s) for s in seeds or []]
    if not seeds:
        raise ConfigError(f"{command} needs seeds=[...]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{command}: seeds repeat ({seeds}): each seed runs once, in its own folder")
    run_dir = Path(run_dir)
    seed_dir = seed_dir or (lambda seed: run_dir / f"seed{seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {"results": run_dir / "results.json", "table": run_dir / "table.md"}
    recorded = _config(config)
    reports: dict[int, dict] = {}
    folders: dict[int, Path] = {}
    failed = None

    def write() -> dict:
        done = dict(reports)
        mean, std, n = statistics(done, figures) if done else ({}, {}, {})
        summary = {
            "command": command,
            "run_dir": str(run_dir),
            "seeds": seeds,
            "complete": len(done) == len(seeds),
            "failed": failed,
            "figures": {f.key: {"label": f.label, "fmt": f.fmt, "scale": f.scale} for f in figures},
            "per_seed": {str(s): {f.key: r[f.key] for f in figures} for s, r in done.items()},
            "mean": mean,
            "std": std,
            "n": n,
            "folders": {str(s): str(folders[s]) for s in done},
            **(extra(done) if extra and done else {}),
            "config": recorded,
        }
        _write(files["results"], json.dumps(summary, indent=2, default=str))
        _write(files["table"], format_table(summary, figures, caption))
        return summary

    write()  # an earlier run's files would otherwise stand for this one until its first seed is done
    for seed in seeds:
        folder = Path(seed_dir(seed))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            report = run_seed(seed, folder)
            missing = [f.key for f in figures if f.key not in report]
            if missing:
                raise ValueError(f"{command}: seed {seed}'s report has no {', '.join(missing)}")
        except BaseException as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            failed = {"seed": seed, "error": reason.splitlines()[0] if reason else type(exc).__name__}
            write()
            finished = (
                f"seeds {', '.join(map(str, reports))} finished, their figures are in {files['results']}"
                if reports
                else f"no seed finished (state in {files['results']})"
            )
            message = f"{command}: seed {seed} failed ({folder}); {finished}"
            if isinstance(exc, RobotRLError):
                raise SeedError(f"{message}: {exc}") from exc
            exc.add_note(message)
            raise
        reports[seed], folders[seed] = report, folder
        summary = write()
    return SeedResults(run_dir=run_dir, reports=reports, summary=summary, files=files)
