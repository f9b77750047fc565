"""Checkpoints: weights as safetensors plus a JSON of what they are, never pickle.

A checkpoint is a folder with `model.safetensors` and `config.json` ({"kind", "config", ...});
loading checks the kind so a wrong path is a clear error rather than a confusing mismatch.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from robot_rl.errors import DatasetError


def save_checkpoint(directory, module: nn.Module, kind: str, config: dict, **meta) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # CPU copies: a checkpoint trained on a GPU loads anywhere (load_checkpoint reads onto the CPU).
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
        directory / "model.safetensors",
    )
    (directory / "config.json").write_text(json.dumps({"kind": kind, "config": config, **meta}, indent=2))
    return directory


def read_meta(directory, what: str = "") -> dict:
    """A checkpoint folder's config.json; a missing, unreadable or malformed one is a DatasetError."""
    config = Path(directory) / "config.json"
    try:
        meta = json.loads(config.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(
            f"no {what + ' ' if what else ''}checkpoint at {directory} (config.json missing)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{config} is not readable JSON ({exc}); the checkpoint is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config", {}), dict):
        raise DatasetError(f"{config} is not a robot_rl checkpoint description")
    return meta


def load_checkpoint(directory, kind: str, device: str = "cpu") -> tuple[dict, dict]:
    """(the JSON metadata, the weights) of a checkpoint of this kind."""
    from safetensors.torch import load_file

    directory = Path(directory)
    what = kind.replace("_", " ")
    meta = read_meta(directory, what)
    if meta.get("kind") != kind:
        raise DatasetError(f"{directory} holds a {meta.get('kind')!r} checkpoint, not a {what}")
    try:
        weights = load_file(directory / "model.safetensors", device=device)
    except FileNotFoundError:
        raise DatasetError(f"no {what} checkpoint at {directory} (model.safetensors missing)") from None
    except Exception as exc:  # safetensors' own error for a truncated or garbled file, OSError, ...
        raise DatasetError(f"{directory / 'model.safetensors'} is damaged: {_first_line(exc)}") from None
    return meta, weights


@contextmanager
def rebuilding(directory, kind: str):
    """Building a module from a checkpoint: a config.json whose fields do not fit the config class,
    or weights that do not fit the module, are one DatasetError, not a traceback."""
    try:
        yield
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:
        raise DatasetError(
            f"the {kind.replace('_', ' ')} checkpoint at {directory} does not fit this "
            f"version of robot_rl or is damaged: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class CheckpointedAgent:
    """save/load for an agent module built from one config dataclass (`self.cfg`) that counts its
    `updates`: subclasses name their checkpoint `kind` and `config_class`."""

    kind: str
    config_class: type

    def save(self, directory) -> Path:
        from dataclasses import asdict

        return save_checkpoint(directory, self, self.kind, asdict(self.cfg), updates=self.updates)

    def training_state(self) -> dict:
        """What resuming its training needs besides the weights (targets included): the state of
        every optimizer, schedule and random generator it holds, and the update count
        (robot_rl.utils.checkpoints)."""
        return {
            "model": self.state_dict(),
            **{name: part.state_dict() for name, part in self._training_parts().items()},
            **{name: g.get_state() for name, g in vars(self).items() if isinstance(g, torch.Generator)},
            "updates": self.updates,
        }

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        for name, part in self._training_parts().items():
            part.load_state_dict(state[name])
        for name, generator in vars(self).items():
            if isinstance(generator, torch.Generator):
                generator.set_state(state[name])
        self.updates = state["updates"]

    def _training_parts(self) -> dict:
        steppers = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
        return {name: part for name, part in vars(self).items() if isinstance(part, steppers)}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def on_device(self, batch: dict) -> dict:
        """The batch's tensors on this agent's device (callers hand CPU tensors)."""
        from robot_rl.utils.device import to_device

        return to_device(batch, self.device)

    @classmethod
    def load(cls, directory):
        meta, weights = load_checkpoint(directory, cls.kind)
        with rebuilding(directory, cls.kind):
            agent = cls(cls.config_class(**meta["config"]))
            agent.load_state_dict(weights)
            agent.updates = int(meta.get("updates", 0))
        return agent.eval()
