"""ControlLoop: runs a RobotEnv with a policy and/or a teleop device at a fixed rate.

One tick: choose an action (teleop wins while intervening; otherwise the next action of the
policy's chunk), filter it for safety and send it, wait for the deadline, observe and evaluate,
hand the transition to the recorder. Every stage is timed; overruns are counted and reported.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from robot_rl.core.clock import RateClock
from robot_rl.core.env import RobotEnv
from robot_rl.core.protocols import Teleop
from robot_rl.core.safety import SafetyConfig, SafetyFilter, Watchdog
from robot_rl.core.timing import StageTimer

Policy = Callable[[dict[str, np.ndarray]], np.ndarray]
STAGES = ("observe", "policy", "command", "record")
FLAGS = ("terminated", "truncated", "intervened", "safety_hold")
# A full garbage collection scans the whole heap: 0.15 s in a training process (torch, MuJoCo, a
# model), more in a big one. Before every episode it cost more than a short simulated episode
# itself (HIL-SERL on reach: 16 of 30 s); so a full one at most every FULL_COLLECT_S, and in
# between only the young generations, what was allocated since the last collection.
FULL_COLLECT_S = 10.0
_last_full_collect = -float("inf")


def _collect_and_freeze() -> None:
    """Collect (fully or the young generations), then freeze what survives."""
    global _last_full_collect
    if time.monotonic() - _last_full_collect >= FULL_COLLECT_S:
        gc.collect()
        _last_full_collect = time.monotonic()
    else:
        gc.collect(1)  # the old generation's garbage waits for the next full collection
    gc.freeze()


def transition_schema(env: RobotEnv) -> dict[str, tuple[tuple[int, ...], str]]:
    """The keys, per-step shapes and dtypes of the transitions a ControlLoop records for `env`."""
    schema = {f"obs/{k}": (space.shape, space.dtype.name) for k, space in env.observation_space.items()}
    schema["action"] = (env.action_space.shape, "float32")
    schema["reward"] = ((), "float32")
    schema.update({flag: ((), "bool") for flag in FLAGS})
    return schema


class ActionChunkQueue:
    """Holds the actions of the current plan: a policy returns H actions, the first k are run."""

    def __init__(self, execute_k: int = 8):
        if execute_k < 1:
            raise ValueError(f"execute_k must be at least 1, got {execute_k}")
        self.execute_k = execute_k
        self._queue: deque[np.ndarray] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim == 1:
            chunk = chunk[None]
        if chunk.ndim != 2 or len(chunk) == 0:
            raise ValueError(
                f"a policy must return an action (A,) or a chunk (H, A), got shape {chunk.shape}"
            )
        self._queue.extend(chunk[: self.execute_k])

    def pop(self) -> np.ndarray:
        return self._queue.popleft()

    def clear(self) -> None:
        self._queue.clear()


def each_step(*observers: Callable | None) -> Callable:
    """One `on_step` that calls each observer in turn (None: skipped)."""
    called = [o for o in observers if o is not None]

    def on_step(loop, result) -> None:
        for observe in called:
            observe(loop, result)

    return on_step


@dataclass
class EpisodeResult:
    steps: int = 0
    reward: float = 0.0
    success: bool = False
    intervened_steps: int = 0
    held_steps: int = 0  # steps where the safety filter rejected the action and the robot held still
    discarded: bool = False  # the operator asked to re-record: nothing of it was stored
    stop_requested: bool = False
    events: set[str] = field(default_factory=set)


class ControlLoop:
    """Runs episodes of `env` with `policy` and/or `teleop`, through the safety layer.

    - `policy(obs)` returns one action or a chunk; `execute_k` actions of a chunk are executed
      before the policy is asked again. With no policy the teleop drives.
    - While `teleop.read().intervening`, the teleop's action is executed, the transition is
      flagged `intervened` and the policy's remaining chunk is dropped (it was planned for a
      state the human has since changed).
    - `recorder` (optional) gets `begin()`, `add(transition)` each tick and `commit()` or
      `discard()` at the end of each episode; a recorder with `wants_next_obs = True` also gets
      the observation that followed each step (`next_obs/<key>`), as RL replay buffers need.
    - `rate_hz=None` runs as fast as possible (sim data generation); timing is still reported.
      `time_source` paces the ticks on another clock (the ROS clock under `use_sim_time`).
    - `on_step` / `on_episode` are called after every tick / episode (progress display).
    - A policy with an `executed(action)` method is told each tick what was sent (the teleop's
      action while intervening, zeros while the safety layer held): a rate-limited policy acts
      relative to it.
    `run()` closes the loop (watchdog thread) when it returns; `run_episode()` does not.
    """

    def __init__(
        self,
        env: RobotEnv,
        policy: Policy | None = None,
        teleop: Teleop | None = None,
        *,
        rate_hz: float | None = 20.0,
        execute_k: int = 8,
        safety: SafetyConfig | None = None,
        recorder=None,
        on_step: Callable[[ControlLoop, EpisodeResult], None] | None = None,
        on_episode: Callable[[ControlLoop, EpisodeResult], None] | None = None,
        time_source: Callable[[], float] | None = None,
    ):
        if policy is None and teleop is None:
            raise ValueError("a ControlLoop needs a policy, a teleop device, or both")
        self.env, self.policy, self.teleop, self.recorder = env, policy, teleop, recorder
        self.safety_config = safety or SafetyConfig()
        self.safety = SafetyFilter(env.robot.action_spec, self.safety_config)
        self.chunks = ActionChunkQueue(execute_k)
        self.clock = RateClock(rate_hz, time_source=time_source)
        self.timer = StageTimer(STAGES)
        self.on_step, self.on_episode = on_step, on_episode
        # The last tick, for on_step observers: the action sent (zeros while held), whether the
        # operator's device drove it, whether the safety layer held the robot.
        self.executed: np.ndarray | None = None
        self.intervened = self.held = False
        self.episode = 0
        self._robot_lock = threading.Lock()
        self._watchdog = (
            Watchdog(
                self.safety_config.watchdog_s,
                self._stop_robot,
                self._robot_lock,
                clock=time_source or time.monotonic,
            )
            if self.safety_config.watchdog_s
            else None
        )

    # --- public ----------------------------------------------------------------------------
    def run(self, episodes: int, seed: int = 0) -> list[EpisodeResult]:
        """Run up to `episodes` committed episodes (re-recorded ones do not count)."""
        results = []
        try:
            while len([r for r in results if not r.discarded]) < episodes:
                result = self.run_episode(seed=seed + len(results))
                results.append(result)
                if self.on_episode is not None:
                    self.on_episode(self, result)
                if result.stop_requested:
                    break
        finally:
            self.close()
        return results

    def run_episode(self, seed: int | None = None) -> EpisodeResult:
        env, result = self.env, EpisodeResult()
        try:
            obs, _ = env.reset(seed=seed)
            for part in (self.policy, self.teleop):
                if hasattr(part, "reset"):
                    part.reset()
            self.chunks.clear()
            self.safety.reset()
            if self.recorder is not None:
                self.recorder.begin()
            # Collect now, between episodes, then move every live object (models, datasets) out of
            # the garbage collector's view for the episode: a full collection mid-episode then scans
            # only what the loop allocates, instead of stalling a tick for tens of milliseconds.
            # Unfrozen at the end of the episode, so nothing stays uncollectable.
            _collect_and_freeze()
            self.clock.start()
            if self._watchdog:
                self._watchdog.arm()
            done = False
            while not done:
                obs, done = self._tick(obs, result)
                if self.on_step is not None:
                    self.on_step(self, result)
        except BaseException:
            # Whatever leaves the loop (a bug, Ctrl-C, a device error), the robot stops first.
            self._stop_robot()
            if self.recorder is not None:
                self.recorder.discard()
            raise
        finally:
            gc.unfreeze()
            if self._watchdog:
                self._watchdog.disarm()
        self._stop_robot()
        if self.recorder is not None:
            if result.discarded:
                self.recorder.discard()
            else:
                self.recorder.commit()
        self.episode += 1
        return result

    def report(self) -> dict:
        return {
            "stages": self.timer.summary(),
            "clock": self.clock.report(),
            "safety": dict(self.safety.counts),
            "watchdog_trips": self._watchdog.trips if self._watchdog else 0,
        }

    def close(self) -> None:
        self._stop_robot()
        if self._watchdog:
            self._watchdog.close()

    # --- one tick --------------------------------------------------------------------------
    def _tick(self, obs: dict[str, np.ndarray], result: EpisodeResult):
        t0 = time.perf_counter()
        action, intervened, events = self._choose(obs)
        t1 = time.perf_counter()
        safe = self.safety(action, self.env.raw_obs)
        with self._robot_lock:
            if safe is None:
                self.env.hold()
            else:
                self.env.apply_action(safe)
        if self._watchdog:
            self._watchdog.feed()
        executed = np.zeros(self.env.action_space.shape, np.float32) if safe is None else safe
        self.executed, self.intervened, self.held = executed, intervened, safe is None
        if hasattr(self.policy, "executed"):  # policies that act relative to the last command (rate limits)
            self.policy.executed(executed)
        t2 = time.perf_counter()
        self.clock.wait()
        t3 = time.perf_counter()
        next_obs = self.env.observe()
        reward, terminated, truncated, info = self.env.evaluate()
        success = info["success"]
        if "success" in events or "failure" in events:
            success, terminated = "success" in events, True
            if success:  # the operator's success mark: a positive step (the reward classifier's label)
                reward = max(float(reward), 1.0)
        t4 = time.perf_counter()
        if self.recorder is not None:
            transition = {
                **{f"obs/{k}": v for k, v in obs.items()},
                "action": executed,
                "reward": np.float32(reward),
                "terminated": terminated,
                "truncated": truncated,
                "intervened": intervened,
                "safety_hold": safe is None,
            }
            if getattr(
                self.recorder, "wants_next_obs", False
            ):  # RL buffers; stores derive it from the next step
                transition.update({f"next_obs/{k}": v for k, v in next_obs.items()})
            self.recorder.add(transition)
        t5 = time.perf_counter()
        self.timer.add("policy", t1 - t0)
        self.timer.add("command", t2 - t1)
        self.timer.add("observe", t4 - t3)
        self.timer.add("record", t5 - t4)

        result.steps += 1
        result.reward += reward
        result.success = result.success or success
        result.intervened_steps += int(intervened)
        result.held_steps += int(safe is None)
        result.events |= events
        result.discarded = "rerecord" in events
        result.stop_requested = result.stop_requested or "stop" in events
        done = terminated or truncated or result.discarded or result.stop_requested
        return next_obs, done

    def _choose(self, obs) -> tuple[np.ndarray, bool, frozenset[str]]:
        if hasattr(self.policy, "observe"):  # policies with an observation history see every tick
            self.policy.observe(obs)
        cmd = self.teleop.read() if self.teleop is not None else None
        events = cmd.events if cmd is not None else frozenset()
        if cmd is not None and (cmd.intervening or self.policy is None):
            self.chunks.clear()
            return cmd.action, self.policy is not None, events
        if len(self.chunks) == 0:
            self.chunks.push(self.policy(obs))
        return self.chunks.pop(), False, events

    def _stop_robot(self) -> None:
        self.env.robot.stop()
