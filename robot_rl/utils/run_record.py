"""What made a run, written beside what it wrote: `run.json` (the command line, robot_rl's git commit
and whether its tree was dirty, the versions of robot_rl and the packages that change results, the
device, start and end times, how it ended) and `config.yaml` (the composed config).

A run folder (train, demo, sweep, the experiments) gets `FOLDER/run.json` and `FOLDER/config.yaml`;
a file or a store (eval's results, label's labels, collect's store) gets `OUT.run.json` and
`OUT.config.yaml` beside it. run.json is written when the run starts (status "running") and again
when it ends: "ok", "interrupted" or "failed: <error>", with the exit code. A run refused for a
user's mistake (robot_rl's errors: exit code 2) leaves no record of its own: the files it wrote
are removed, or the previous run's record is put back.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

PACKAGES = ("robot-rl", "torch", "numpy", "mujoco", "zarr", "gymnasium", "hydra-core", "robosuite", "ray")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_state(source: Path | None = None) -> dict | None:
    """robot_rl's checkout: {"commit", "dirty"}; None when it is not a git checkout (a wheel)."""
    source = source or Path(__file__).resolve().parents[2]
    try:
        top = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        # An installed copy inside someone's project is not a checkout: the project's repo is not ours.
        if top.returncode != 0 or Path(top.stdout.split()[0]).resolve() != source.resolve():
            return None
        commit = top.stdout.split()[1]
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit, "dirty": bool(status.stdout.strip())}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def device() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    found = {"cpu": cpu, "cores": os.cpu_count(), "host": platform.node()}
    torch = sys.modules.get("torch")  # asked only where torch is loaded already: no import for a record
    if torch is not None and torch.cuda.is_available():
        found["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return found


class RunRecord:
    """`with RunRecord(target, cfg):` around a run; `target` is a run folder (`folder=True`) or the
    file / store the run writes."""

    def __init__(self, target, config=None, folder: bool = True, argv: list[str] | None = None):
        target = Path(target)
        if folder:
            self.path, self.config_path = target / "run.json", target / "config.yaml"
        else:
            self.path = target.with_name(target.name + ".run.json")
            self.config_path = target.with_name(target.name + ".config.yaml")
        self.config = config
        self.record = {
            "command": ["robot-rl", *(sys.argv[1:] if argv is None else argv)],
            "cwd": os.getcwd(),
            "git": git_state(),
            "versions": versions(),
            "device": device(),
            "started": _now(),
            "status": "running",
        }
        self._start = time.monotonic()

    def __enter__(self) -> RunRecord:
        made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self._made_dirs = made  # deepest first: removed in this order if the run is refused
        self._previous = {p: p.read_bytes() for p in (self.path, self.config_path) if p.exists()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.config is not None:
            from omegaconf import OmegaConf

            _write(self.config_path, OmegaConf.to_yaml(self.config, resolve=True))
        self._write()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None and _is_user_error(error):
            self._undo()
            return
        if kind is None:
            status, code = "ok", 0
        elif issubclass(kind, KeyboardInterrupt):
            status, code = "interrupted", 130
        elif issubclass(kind, BrokenPipeError) and stdout_closed():
            status, code = "ok (the reader of its output went away)", 141  # as the CLI exits
        else:
            status, code = f"failed: {kind.__name__}: {error}", 2 if _is_user_error(error) else 1
        self.record.update(ended=_now(), seconds=round(time.monotonic() - self._start, 3), status=status)
        self.record["exit_code"] = code
        self._write()

    def _write(self) -> None:
        _write(self.path, json.dumps(self.record, indent=2, default=str) + "\n")

    def _undo(self) -> None:
        """A refused run: the previous record back, or no record, and no folder left empty."""
        for path in (self.path, self.config_path):
            if path in self._previous:
                path.write_bytes(self._previous[path])
            else:
                path.unlink(missing_ok=True)
        for folder in self._made_dirs:
            try:
                folder.rmdir()  # only when empty: what the run wrote besides its record stays
            except OSError:
                break


def _is_user_error(error) -> bool:
    from robot_rl.errors import RobotRLError

    return isinstance(error, RobotRLError)


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)  # a reader never sees half a record


def stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error on it)."""
    import select
    import sys

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False
