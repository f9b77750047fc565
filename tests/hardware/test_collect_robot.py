"""`robot-rl collect robot=... teleop=...` end to end on the WidowX config, its servos simulated on
a pty (Protocol 2.0, dynamixel-sdk unmodified) and the operator a gamepad event stream on a fifo."""

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("dynamixel_sdk", reason="dynamixel-sdk is the [hardware] extra")

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore
from robot_rl.hardware.fakes.dynamixel_sim import BULK_WRITE, DynamixelSimulator
from robot_rl.hardware.gamepad_teleop import ABS_Y, BTN_SELECT, BTN_START, EV_ABS, EV_KEY

IDS = [1, 2, 4, 6, 7, 8]
HOME = [0.0, -0.3, 0.3, 1.57, 0.0, 0.6]


def event(kind, code, value):
    return struct.pack("llHHi", 0, 0, kind, code, value)


def operator(fifo, episodes, stop, bus, steps_s=0.6, pushing=None, hold=None):
    """Push the stick forward for a while, then end the episode: success, failure, success...
    Starts once the arm is live (torque on), as an operator waits for the robot. `pushing[e]`,
    when given, is set as the push of episode e begins; episode `hold` is pushed until `stop`."""
    fd = os.open(fifo, os.O_WRONLY)
    try:
        while not bus.torque(IDS[0]):
            if stop.wait(0.01):
                return
        for e in range(episodes):
            os.write(fd, event(EV_ABS, ABS_Y, -20000))
            if pushing:
                pushing[e].set()
            if stop.wait(None if e == hold else steps_s):
                return
            os.write(fd, event(EV_ABS, ABS_Y, 0) + event(EV_KEY, BTN_START if e % 2 == 0 else BTN_SELECT, 1))
            if stop.wait(0.8):
                return
    finally:
        os.close(fd)


def committed(out, episodes: int) -> bool:
    try:
        with EpisodeStore.open(out) as store:
            return store.n_episodes >= episodes
    except Exception:  # not created yet
        return False


def collect_args(bus, fifo, out, episodes):
    return [
        "collect",
        "robot=widowx250",
        f"robot.port={bus.port}",
        "teleop=gamepad",
        f"teleop_options.gamepad={fifo}",
        "task=push the cube forward",
        f"out={out}",
        f"episodes={episodes}",
        "reset_s=0",
    ]


def collect_with_operator(bus, fifo, out, episodes) -> int:
    """`robot-rl collect` in this process while the operator thread works the gamepad."""
    stop = threading.Event()
    threading.Thread(target=operator, args=(fifo, episodes, stop, bus), daemon=True).start()
    try:
        return main(collect_args(bus, fifo, out, episodes))
    finally:
        stop.set()


def test_collect_on_the_simulated_arm_then_dataset_info(tmp_path, capsys):
    fifo, out = tmp_path / "pad", tmp_path / "demos.zarr"
    os.mkfifo(fifo)
    with DynamixelSimulator(IDS, positions_rad=HOME) as bus:
        assert collect_with_operator(bus, fifo, out, 2) == 0
        assert not any(bus.torque(i) for i in IDS)
        assert collect_with_operator(bus, fifo, out, 1) == 0  # the same command again resumes into the store
    assert main(["dataset", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 3 and info["task"] == "push the cube forward" and info["robot"] == "widowx250"
    with EpisodeStore.open(out) as store:
        rewards = store.array("reward")[:]
        ends = store.episode_ends
        # Episodes: success, failure, (resumed) success; each success mark labels its own step.
        assert np.flatnonzero(rewards).tolist() == [ends[0] - 1, ends[2] - 1]
        state = store.array("obs/state")[:]
        names = store.attrs["state_names"]
        x = state[: ends[0], names.index("ee_pos[0]")]
        pushed = store.array("action")[: ends[0], 0]
        assert (pushed > 0.5).sum() >= 3  # the stick's forward push was recorded as the action
        assert x[-1] - x[0] > 0.005  # and the arm moved forward (less when the machine is loaded)


def test_a_killed_collection_keeps_every_finished_episode(tmp_path):
    fifo, out = tmp_path / "pad", tmp_path / "demos.zarr"
    os.mkfifo(fifo)
    stop = threading.Event()
    pushing = [threading.Event() for _ in range(10)]
    with DynamixelSimulator(IDS, positions_rad=HOME) as bus:
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "robot_rl.cli", *collect_args(bus, fifo, out, 10)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Episode 3 is pushed until the kill: however slow this machine, it cannot end first.
        feeder = threading.Thread(
            target=operator, args=(fifo, 10, stop, bus), kwargs={"pushing": pushing, "hold": 2}, daemon=True
        )
        feeder.start()
        try:
            assert pushing[2].wait(60), "the operator never reached episode 3"
            deadline = time.monotonic() + 60
            while not committed(out, 2):  # the collector has recorded episode 2 and moved on
                assert time.monotonic() < deadline, "episode 2 was never committed"
                time.sleep(0.05)
            time.sleep(0.5)  # into episode 3 (reset_s=0: the arm's way home is short)
            writes, deadline = bus.count(BULK_WRITE), time.monotonic() + 10
            while not (commanding := bus.count(BULK_WRITE) > writes) and time.monotonic() < deadline:
                time.sleep(0.01)  # the loop drives the arm when it dies (on a busy machine, a while)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
    assert commanding, "the kill did not land while an episode ran"
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 2  # episode 3 was underway: not committed, and nothing of it shows
        lengths = np.diff(np.concatenate([[0], store.episode_ends]))
        actions = store.array("action")[: store.n_steps]
        assert np.all(lengths > 0) and actions.shape == (store.n_steps, 5) and np.all(np.isfinite(actions))


def test_live_view_serves_the_cameras_on_localhost(tmp_path):
    """Needs the `viewer` extra (rerun; `make test` installs it): skipped without it."""
    import socket
    import urllib.request

    pytest.importorskip("rerun", reason="rerun (the viewer extra) is not installed")
    from robot_rl.core import ControlLoop
    from robot_rl.hardware.live_view import LiveView
    from robot_rl.sim.reach import make_reach_env

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    view = LiveView(web_port=free_port(), grpc_port=free_port(), hz=100)
    env = make_reach_env()
    loop = ControlLoop(
        env,
        policy=lambda obs: np.zeros(env.action_space.shape, np.float32),
        rate_hz=None,
        execute_k=1,
        on_step=view,
    )
    with env:
        loop.run_episode(seed=0)
    loop.close()
    assert view._step > 0
    try:
        with urllib.request.urlopen(view.url, timeout=10) as reply:
            assert reply.status == 200 and b"rerun" in reply.read().lower()
    finally:
        view.close()  # ends the rerun server process (the suite fails a module that leaves one)
