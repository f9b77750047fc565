"""Where a learner's tensors live, and keeping the data off its critical path.

- `resolve_device("auto")`: CUDA when torch sees a GPU, else the CPU; "cuda" without one is a
  one-line ConfigError, not a crash deep in the first update.
- `Prefetcher`: the next batches are sampled in a background thread and copied to the device
  from pinned memory without blocking, so sampling and the host-to-device copy overlap the
  update. The sampling order (and so the run) is the same as sampling inline.
- `autocast`: bfloat16 mixed precision, on CUDA only and only where a learner asks for it
  (diffusion BC's denoiser; the RL learners stay in float32: their targets and exp(beta * A)
  weights are sensitive to rounding).
- `maybe_compile`: torch.compile on request (`compile: true`); off by default (the first steps
  pay the compilation).
Checkpoints are written from CPU copies and load on the CPU (policies.checkpoint).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

import torch

from robot_rl.errors import ConfigError


def resolve_device(name: str | None = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name}, but this torch ({torch.__version__}) sees no CUDA device: "
                "use device=auto or device=cpu"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name}, but there are {torch.cuda.device_count()} CUDA devices")
        return device
    raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}")


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a (possibly nested) batch on `device`; non-blocking from pinned memory on CUDA."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = to_device(value, device)
        elif isinstance(value, torch.Tensor) and value.device != device:
            if device.type == "cuda" and not value.is_pinned():
                value = value.pin_memory()
            out[key] = value.to(device, non_blocking=True)
        else:
            out[key] = value
    return out


class Prefetcher:
    """Iterates batches from `sample()`, `depth` ahead, each already on `device`."""

    def __init__(self, sample: Callable[[], dict], device: torch.device, depth: int = 2):
        self._sample, self.device = sample, device
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="robot_rl-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                item = to_device(self._sample(), self.device)
            except BaseException as exc:  # handed to the consumer, which raises it
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the prefetch thread has stopped") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread and drop the batches it holds (device memory)."""
        self._stop.set()
        self._thread.join(timeout=5)
        while not self._queue.empty():
            self._queue.get_nowait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when enabled; nothing otherwise."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def maybe_compile(fn, enabled: bool):
    return torch.compile(fn) if enabled else fn
