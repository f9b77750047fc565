"""`robot-rl collect robot=<robot> teleop=<device> task="..."`: teleoperated demonstrations on a
real robot, recorded into an EpisodeStore.

The operator ends each episode with the device's success or failure key (a success step gets
reward 1: the positive label the reward classifier trains on), discards it with re-record, or
ends the session with stop; between episodes the arm goes home and the operator has `reset_s`
to reset the scene. A live status line shows episode, step, loop rate, camera frame ages and
whether the human is driving. Every finished episode is in the store the moment it ends, so
Ctrl-C, a crash or a killed process loses only the episode in progress; running the same command
again appends to the store (its schema must match).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from robot_rl.core import ControlLoop
from robot_rl.core.loop import each_step, transition_schema
from robot_rl.datasets import EpisodeRecorder
from robot_rl.datasets.store import with_camera_codec
from robot_rl.errors import ConfigError
from robot_rl.factory import robot_env, robot_safety


class StatusLine:
    """One self-overwriting terminal line, at most `hz` times a second."""

    def __init__(self, stream=None, hz: float = 5.0):
        # sys.stderr is looked up when the line is made, not when this module was imported
        self.stream, self.period, self._last = stream or sys.stderr, 1.0 / hz, 0.0

    def __call__(self, loop: ControlLoop, result) -> None:
        now = time.monotonic()
        if now - self._last < self.period:
            return
        self._last = now
        rate = loop.clock.recent_hz()
        ages = " ".join(
            f"{k[10:]} {1000 * (now - float(v)):.0f}ms"
            for k, v in loop.env.raw_obs.items()
            if k.startswith("timestamp/")
        )
        who = "HUMAN" if loop.policy is None or loop.intervened else "policy"
        self.stream.write(
            f"\repisode {loop.episode + 1} step {result.steps:4d} | {rate:5.1f} Hz | "
            f"{ages or 'no cameras'} | {who} "
        )
        self.stream.flush()


def collect_robot(cfg, io=None, policy=None, time_source=None, observer=None) -> dict:
    """`policy` (optional): a function of the env giving (a policy, its execute_k), which drives
    while the operator watches and takes over with the device (interventions are flagged in the
    data); without one the operator drives. The ROS node gives the loop's `time_source` and an
    `observer` of every tick."""
    from robot_rl.factory import make_teleop

    robot_cfg = cfg.robot
    if cfg.episodes < 1:
        raise ConfigError(f"episodes must be at least 1, got {cfg.episodes}")
    if not cfg.task or cfg.task == cfg.env.get(
        "task_text"
    ):  # unset: collect.yaml's default is the sim env's text
        raise ConfigError('a real robot needs the task text: task="put the red cube in the bin"')
    dry_run = bool(cfg.dry_run or robot_cfg.get("dry_run", False))
    env = robot_env(robot_cfg, cfg.task, dry_run, io)
    robot = env.robot
    policy, execute_k = policy(env) if policy is not None else (None, 1)
    teleop = make_teleop(str(cfg.teleop), cfg.teleop_options, robot)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rate = float(robot_cfg.get("control_hz", 10))
    recorder = EpisodeRecorder(
        out,
        fps=rate,
        schema=with_camera_codec(transition_schema(env), str(cfg.get("camera_codec", "video"))),
        attrs={
            "robot": robot_cfg.name,
            "task": str(cfg.task),
            "source": "robot-rl collect",
            "teleop": str(cfg.teleop),
            "state_names": env.state_names(),
            "dry_run": dry_run,
            **({"policy": str(cfg.get("checkpoint"))} if policy is not None else {}),
        },
    )
    safety = robot_safety(robot_cfg)
    observers = [StatusLine(), observer]
    if cfg.get("viewer"):
        from robot_rl.hardware.live_view import LiveView

        view = LiveView(web_port=int(cfg.get("viewer_port", 9090)))
        sys.stderr.write(f"live view: {view.url}\n")
        observers.append(view)

    ended = {"success": 0, "failure": 0}

    def between_episodes(loop: ControlLoop, result) -> None:
        label = (
            "discarded (re-record)"
            if result.discarded
            else ("success" if result.success else "failure / time limit")
        )
        if not result.discarded:
            ended["success" if result.success else "failure"] += 1
        sys.stderr.write(f"\nepisode {loop.episode}: {result.steps} steps, {label}\n")
        if result.stop_requested or ended["success"] + ended["failure"] >= int(cfg.episodes):
            return
        if hasattr(robot, "go_home"):
            robot.go_home()
        for left in range(int(cfg.reset_s), 0, -1):  # the operator resets the scene
            sys.stderr.write(f"\rreset the scene: next episode in {left} s ")
            sys.stderr.flush()
            time.sleep(1.0)

    loop = ControlLoop(
        env,
        policy,
        teleop,
        rate_hz=rate,
        execute_k=execute_k,
        safety=safety,
        recorder=recorder,
        on_step=each_step(*observers),
        on_episode=between_episodes,
        time_source=time_source,
    )
    sys.stderr.write(
        f"collecting into {out} with {cfg.teleop}"
        + (" (dry run: nothing is sent to the motors)" if dry_run else "")
        + "\n"
    )
    try:
        teleop.connect()
        with env:
            try:
                results = loop.run(int(cfg.episodes), seed=int(cfg.seed))
            finally:
                if hasattr(robot, "go_home"):  # rest before the torque goes off (a limp arm drops)
                    try:
                        robot.go_home()
                    except Exception:
                        pass  # the bus is gone: nothing can be sent
    finally:
        try:
            teleop.disconnect()
        finally:
            recorder.close()
            for view in observers:
                if hasattr(view, "close"):  # the live view's servers
                    view.close()
    return {
        "store": str(out),
        "episodes": sum(not r.discarded for r in results),
        "successes": ended["success"],
        "report": loop.report(),
    }
