import os

os.environ.setdefault("MUJOCO_GL", "egl")


import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402


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
