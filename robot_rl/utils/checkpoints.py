"""Training checkpoints a run resumes from: `RUN/checkpoints/step_000001000.pt`, each the whole state
of a learner at a step boundary (weights, optimizer and scheduler, EMA, RNG states, counters, the
logged history), written beside its final name and renamed, the last `keep` kept; and RUN/best,
the policy that scored best in the evaluations inside training. They load with
`torch.load(weights_only=True)`: tensors and plain values only, no pickled code.

Resuming is exact where the run is deterministic (CPU, a fixed seed): the state is taken between
two steps, and the sampler's RNG as of the last batch *used*, not the last one a prefetch thread
drew (`RngLedger`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from robot_rl.errors import ConfigError

SUBDIR = "checkpoints"
# A learner config's settings a resumed run may change: how it runs, not what it computes.
FREE_ON_RESUME = ("checkpoint_every", "resume", "log_every", "device", "compile", "max_memory_gb")


def rng_states(rng: np.random.Generator | None = None, sampler_state: dict | None = None) -> dict:
    """The random states a step depends on: torch's, numpy's global and Python's, and the sampler's
    (`sampler_state`, else `rng`'s)."""
    legacy = np.random.get_state(legacy=False)  # its key is an array: as a tensor it loads without pickle
    legacy["state"] = {
        "key": torch.from_numpy(legacy["state"]["key"].astype(np.int64)),
        "pos": legacy["state"]["pos"],
    }
    if sampler_state is None and rng is not None:
        sampler_state = rng.bit_generator.state
    return {
        "torch": torch.get_rng_state(),
        "numpy": legacy,
        "python": random.getstate(),
        "sampler": sampler_state,
    }


def set_rng_states(states: dict, rng: np.random.Generator | None = None) -> None:
    torch.set_rng_state(states["torch"])
    legacy = dict(states["numpy"])
    legacy["state"] = {"key": legacy["state"]["key"].numpy().astype(np.uint32), "pos": legacy["state"]["pos"]}
    np.random.set_state(legacy)
    random.setstate(states["python"])
    if rng is not None and states["sampler"] is not None:
        rng.bit_generator.state = states["sampler"]


def checkpoint_due(done: int, last: int, every: int, total: int) -> bool:
    """Whether a checkpoint is due at step `done` (of `total`), the last one having been at `last`:
    a multiple of `every` (0: never) passed since, and the run is not at its end."""
    return every > 0 and done // every > last // every and done < total


def generator_states(*objects) -> list[dict]:
    """The states of the numpy Generators each of `objects` holds (a scripted human's, an expert's
    action noise): {attribute: state}."""
    return [
        {k: v.bit_generator.state for k, v in vars(o).items() if isinstance(v, np.random.Generator)}
        for o in objects
    ]


def set_generator_states(objects, states: list[dict]) -> None:
    for o, state in zip(objects, states):
        for k, value in state.items():
            getattr(o, k).bit_generator.state = value


class RngLedger:
    """A sampler behind a prefetch thread, with the RNG's state as of the last batch *used*: `draw`
    is the thread's sample function (it notes the state after each draw), `take(batches)` the
    training loop's next batch (it moves `state` on to that batch's)."""

    def __init__(self, rng: np.random.Generator, sample: Callable[[], dict]):
        self.rng, self._sample = rng, sample
        self._after: deque = deque()
        self._lock = threading.Lock()
        self.state = rng.bit_generator.state  # before any draw

    def draw(self) -> dict:
        batch = self._sample()
        with self._lock:
            self._after.append(self.rng.bit_generator.state)
        return batch

    def take(self, batches) -> dict:
        batch = next(batches)
        with self._lock:
            self.state = self._after.popleft()
        return batch


class Checkpoints:
    """Every `every` steps (0: never on a schedule) a checkpoint of a `kind` learner into `run_dir`.
    Used as a context around the training loop, it also holds Ctrl-C and SIGTERM until the step
    ends, then writes a checkpoint of that step and stops (`step_done`)."""

    def __init__(self, run_dir, kind: str, every: int = 0, keep: int = 3, start: int = 0):
        self.dir, self.kind, self.every, self.keep = Path(run_dir) / SUBDIR, kind, int(every), int(keep)
        self._interrupt = _DeferredInterrupt()
        self._last = start  # the step of the last checkpoint (or the one resumed from)

    def __enter__(self) -> Checkpoints:
        self._interrupt.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._interrupt.__exit__()

    @property
    def stop_requested(self) -> bool:
        return self._interrupt.requested

    def step_done(self, done: int, total: int, snapshot: Callable[[], dict], boundary: bool = True) -> None:
        """After step `done` of `total`: a checkpoint when a signal came (then KeyboardInterrupt),
        or at a `boundary` (where a resume can start: an episode's end for a learner on a robot)
        when a multiple of `every` has passed since the last one."""
        if self._interrupt.requested:
            self.save(done, snapshot())
            raise KeyboardInterrupt
        if boundary and checkpoint_due(done, self._last, self.every, total):
            self.save(done, snapshot())

    def keep_best(self, score: float, step: int, save: Callable[[Path], object]) -> bool:
        """After an evaluation inside training: when `score` beats every earlier one of the run
        (resumes included), `save(folder)` writes the policy, and it replaces RUN/best (with
        best.json: the score and the step). Whether it did."""
        best = self.dir.parent / "best"
        record = best / "best.json"
        if record.exists() and score <= json.loads(record.read_text())["score"]:
            return False
        partial, old = best.with_name(".best.partial"), best.with_name(".best.old")
        for stale in (partial, old):
            shutil.rmtree(stale, ignore_errors=True)
        save(partial)
        (partial / "best.json").write_text(json.dumps({"score": float(score), "step": int(step)}))
        if best.exists():
            best.rename(old)
        partial.rename(best)  # a kill between the renames leaves .best.old, the previous best
        shutil.rmtree(old, ignore_errors=True)
        return True

    def save(self, step: int, state: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:09d}.pt"
        partial = path.with_name(f".{path.name}.partial")
        torch.save(_plain({"kind": self.kind, "step": step, **state}), partial)
        os.replace(partial, path)  # a kill mid-write leaves the previous checkpoint the latest
        self._last = step
        for old in sorted(self.dir.glob("step_*.pt"))[: -self.keep]:
            old.unlink()
        return path


class LearnerCheckpoints(Checkpoints):
    """The checkpoints of a learner whose config has `checkpoint_every` and `resume`, with what
    every such learner does around them. Made before any work, so that a bad `resume=` is refused
    first: `state` is the checkpoint the run continues from (None: a fresh run) and `start` its
    step. `restore(log, rng)` puts its logged history and RNG states back (once the learner's
    setup has drawn what it draws); `snapshot(parts, log, ...)` is what `step_done` takes: the
    learner's `parts()` with the settings, the history and the RNG states added."""

    def __init__(self, run_dir, kind: str, cfg, keep: int = 3):
        self.settings = settings_of(cfg)
        self.state = resume_state(cfg.resume, kind, self.settings) if cfg.resume else None
        self.start = self.state["step"] if self.state else 0
        super().__init__(run_dir, kind, cfg.checkpoint_every, keep, start=self.start)

    def bar(self, total: int, desc: str, unit: str, enabled: bool, steps: bool = True):
        """The run's progress bar from the step it starts at: over the remaining steps (`steps`), or
        one the learner moves itself (`update`)."""
        from tqdm import tqdm

        rest = {"initial": self.start, "total": total, "desc": desc, "unit": unit}
        return tqdm(
            range(self.start, total) if steps else None, **rest, disable=not enabled, dynamic_ncols=True
        )

    def restore(self, log, rng: np.random.Generator | None = None) -> dict | None:
        """A resumed run's history into `log` and its RNG states into this process and `rng`;
        the checkpoint, for the learner's own parts (None for a fresh run)."""
        if self.state is not None:
            log.history.update(self.state["history"])
            set_rng_states(self.state["rng"], rng)
        return self.state

    def snapshot(
        self,
        parts: Callable[[], dict],
        log,
        rng: np.random.Generator | None = None,
        ledger: RngLedger | None = None,
    ) -> Callable[[], dict]:
        """The state of a step: `parts()`, the settings, `log`'s history and the RNG states (the
        sampler's as `ledger` has it when a prefetch thread draws batches, else `rng`'s)."""
        return lambda: {
            "config": self.settings,
            **parts(),
            "history": log.history,
            "rng": rng_states(rng, ledger.state if ledger is not None else None),
        }


def settings_of(config) -> dict:
    """A learner config dataclass's settings that a resumed run must share with the run it resumes."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(config).items() if k not in FREE_ON_RESUME}


def resume_state(run_dir, kind: str, settings: dict) -> dict:
    """The latest checkpoint of a `kind` run in `run_dir`, whose settings must be `settings`."""
    state = latest_checkpoint(run_dir, kind)
    changed = sorted(k for k in settings if state["config"].get(k) != settings[k])
    if changed:
        raise ConfigError(f"resume={run_dir}: the run had other {', '.join(changed)}; resume it as it was")
    return state


def _plain(value):
    """numpy scalars (a learning-rate lambda's np.cos, in the scheduler's and optimizer's states) as
    Python numbers, numpy arrays as tensors: `weights_only` loading refuses numpy globals."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def latest_checkpoint(run_dir, kind: str) -> dict:
    """The newest checkpoint of a `kind` run in `run_dir`; ConfigError (one line) when there is none,
    it is damaged, or it is another learner's."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / SUBDIR).glob("step_*.pt"))
    if not found:
        raise ConfigError(
            f"resume={run_dir}: no checkpoint in {run_dir / SUBDIR} (checkpoint_every=0 writes none)"
        )
    try:
        state = torch.load(found[-1], map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding what a checkpoint never does
        raise ConfigError(f"resume={run_dir}: {found[-1].name} is damaged ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("kind") != kind:
        other = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"resume={run_dir}: {found[-1].name} is a {other} checkpoint, not {kind}")
    return state


class _DeferredInterrupt:
    """Ctrl-C and SIGTERM held until the training loop reaches a step boundary, where it saves a
    checkpoint and stops (`requested`); a second signal interrupts at once. Only in the main thread
    (a learner in a Ray worker is stopped by Ray)."""

    def __init__(self):
        self.requested = False
        self._saved: dict = {}

    def __enter__(self) -> _DeferredInterrupt:
        import signal

        if threading.current_thread() is threading.main_thread():

            def handler(signum, frame):
                if self.requested:
                    raise KeyboardInterrupt
                self.requested = True

            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, previous in self._saved.items():
            signal.signal(sig, previous)
