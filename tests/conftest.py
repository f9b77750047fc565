import os

os.environ.setdefault("MUJOCO_GL", "egl")
# Every process a test starts inherits this mark (children take the environment unless a test
# builds one from nothing), so what a test module leaves running is found even once it has been
# re-parented to init.
_MARK = f"{os.getpid()}-{os.urandom(4).hex()}"
os.environ["ROBOT_RL_TEST_SESSION"] = _MARK


import json  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402


def _marked_processes() -> dict[int, str]:
    """This session's live processes other than pytest itself: pid -> command line."""
    found, mark = {}, f"ROBOT_RL_TEST_SESSION={_MARK}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in Path(entry.path, "environ").read_bytes().split(b"\0"):
                command = Path(entry.path, "cmdline").read_bytes()
                found[int(entry.name)] = command.replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or a zombie
            continue
    return found


def _busy_threads(seconds: float) -> dict[str, float]:
    """This process's threads that used over half a core in the next `seconds`: name -> cores."""

    def cpu_ticks() -> dict[str, int]:
        ticks = {}
        for task in os.scandir("/proc/self/task"):
            try:
                fields = Path(task.path, "stat").read_text().rsplit(")", 1)[1].split()
                name = Path(task.path, "comm").read_text().strip()
            except OSError:  # ended meanwhile
                continue
            ticks[f"{name} ({task.name})"] = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks

    before = cpu_ticks()
    time.sleep(seconds)
    after, hz = cpu_ticks(), os.sysconf("SC_CLK_TCK")
    cores = {t: (after[t] - before[t]) / hz / seconds for t in after if t in before}
    return {t: round(c, 2) for t, c in cores.items() if c > 0.5}


@pytest.fixture(scope="module", autouse=True)
def nothing_runs_on_after_its_module():
    """What a test module starts must end with it. A process left running (a Ray worker, a busy
    learner, a driver) or a thread left spinning in this process (a server's loop) takes a core
    from every later test on this 2-core machine, and would from a user's program too. Checked
    after the module's own fixtures are torn down: its processes get 15 s to exit, then are killed
    and fail the module; a thread busy over 0.1 s is measured again over 1 s and fails it if
    still busy (this process cannot kill a thread)."""
    yield
    if not os.path.isdir("/proc"):
        return
    deadline = time.monotonic() + 15
    while (left := _marked_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes left running after the module: {left}"
    busy = _busy_threads(0.1) and _busy_threads(1.0)
    assert not busy, f"threads left busy after the module (cores each): {busy}"


@pytest.fixture
def run_record():
    """`run_record(path, *words, status="ok")` checks a run record (robot_rl/utils/run_record.py):
    its command line holds `words`, it names robot_rl's commit, the versions and the device, it has
    ended with `status`, and its config.yaml parses. Returns the record."""

    def check(path, *words: str, status: str = "ok", exit_code: int = 0) -> dict:
        path = Path(path)
        record = json.loads(path.read_text())
        assert all(word in record["command"] for word in words), record["command"]
        assert len(record["git"]["commit"]) == 40  # the tests run from a checkout
        assert {"python", "robot-rl", "torch", "numpy"} <= set(record["versions"])
        assert record["device"]["cpu"] and record["device"]["cores"] >= 1
        assert record["started"] <= record["ended"] and record["status"].startswith(status)
        assert record["exit_code"] == exit_code
        config = path.with_name(
            "config.yaml" if path.name == "run.json" else path.name[: -len("run.json")] + "config.yaml"
        )
        assert isinstance(yaml.safe_load(config.read_text()), dict)
        return record

    return check


@pytest.fixture
def h264_frames():
    """frames(path): the number of frames of an mp4, which must be H.264 (what browsers,
    TensorBoard and W&B play), decoded with PyAV."""

    def frames(path) -> int:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264", stream.codec_context.name
            return sum(1 for _ in container.decode(stream))

    return frames


@pytest.fixture
def killed_mid_run():
    """kill(command, run_dir): start a training command and SIGKILL it once its second checkpoint
    is down in run_dir/checkpoints: somewhere between that checkpoint and the end."""
    import signal
    import subprocess
    import time

    def kill(command: list[str], run_dir) -> None:
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while len(list((Path(run_dir) / "checkpoints").glob("step_*.pt"))) < 2:
                assert run.poll() is None, "the run ended before it could be killed"
                time.sleep(0.002)
            run.send_signal(signal.SIGKILL)
        finally:
            run.wait()

    return kill
