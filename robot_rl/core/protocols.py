"""The four device-facing interfaces. Sim and real backends implement the same ones.

They are abstract base classes rather than typing.Protocols so that the safety-relevant parts
(a Robot is a context manager that always stops and disconnects) are inherited, not re-typed.
"""

from __future__ import annotations

import abc

import numpy as np

from robot_rl.core.specs import ArraySpec, Frame, TeleopCommand


class Robot(abc.ABC):
    """A controllable body. `observe()` returns proprioception (plus a "timestamp" entry)."""

    observation_spec: dict[str, ArraySpec]
    action_spec: ArraySpec

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @abc.abstractmethod
    def observe(self) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def command(self, action: np.ndarray) -> None:
        """Send one action in robot units (already filtered by the safety layer)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Hold still. Must be safe to call at any time, from any thread, more than once."""

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.disconnect()


class Camera(abc.ABC):
    """An image source. `read()` returns the newest frame without waiting for a new one."""

    name: str
    shape: tuple[int, int, int]  # H, W, C

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def read(self) -> Frame: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...


class Teleop(abc.ABC):
    """A human input device, or a scripted expert standing in for one."""

    # connect / disconnect / reset are optional hooks, not abstract: by default they do nothing,
    # and only a teleop that needs them overrides them (hence the B027 exemptions).
    def connect(self) -> None:  # noqa: B027
        pass

    def disconnect(self) -> None:  # noqa: B027
        pass

    def reset(self) -> None:  # noqa: B027
        """Called at the start of every episode."""

    @abc.abstractmethod
    def read(self) -> TeleopCommand: ...


class Task(abc.ABC):
    """Reward, success, termination and reset logic for one robot.

    In simulation a task may read privileged state; on real robots it uses a classifier or a VLM.
    """

    text: str = ""
    max_steps: int = 200

    def observation_spec(self) -> dict[str, ArraySpec]:
        """Extra state entries the task adds to the observation (a goal position, say)."""
        return {}

    def observe(self) -> dict[str, np.ndarray]:
        return {}

    @abc.abstractmethod
    def reset(self, rng: np.random.Generator) -> None:
        """Bring the scene to a new initial state (randomized with `rng`)."""

    @abc.abstractmethod
    def evaluate(self, obs: dict[str, np.ndarray]) -> tuple[float, bool, bool]:
        """Return (reward, success, terminated) for the state just observed."""
