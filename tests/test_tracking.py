"""`logger=wandb`: a training run's scalars, config and learning curve in a Weights & Biases run,
checked in offline mode (WANDB_MODE=offline writes the run under the run folder's wandb/) by
reading the run file wandb writes: LevelDB-log records of wandb's own protobuf messages."""

import json
import struct

import pytest

from robot_rl.cli import main
from robot_rl.policies.iql import IQLAgent

wandb = pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def no_wandb_left(monkeypatch, tmp_path):
    """Offline, in the test's folder; wandb's service and settings do not outlive the test."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    yield
    wandb.teardown()
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


def wandb_records(run_file) -> list:
    """The records of a .wandb file: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
    LevelDB log records (crc32c 4, length 2, type 1: full, first, middle, last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, records, pending = run_file.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def key_of(item) -> str:
    return item.key or "/".join(item.nested_key)  # wandb writes a nested key for every key


def test_a_training_run_logs_its_scalars_config_and_curve_to_wandb(tmp_path, h264_frames):
    store, run = tmp_path / "reach.zarr", tmp_path / "run"
    assert (
        main(["collect", "env=reach", "episodes=2", "loop.rate_hz=null", "env.cameras=[]", f"out={store}"])
        == 0
    )
    args = ["train", "learner=iql", "env=reach", "env.cameras=[]", f"dataset={store}", f"out={run}"]
    args += ["learner.steps=30", "learner.batch_size=16", "learner.log_every=10", "learner.eval_episodes=2"]
    args += ["learner.eval_num_envs=2", "logger=wandb", "wandb_project=robot_rl_test"]
    args += ["learner.eval_every=10", "learner.eval_video=1"]  # evaluations inside training, filmed
    assert main(args) == 0
    history = json.loads((run / "results.json").read_text())["history"]
    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    logged: dict[str, list[float]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                logged.setdefault(key_of(item), []).append(json.loads(item.value_json))
    for key, values in history.items():  # every scalar, every step, as results.json has it
        assert logged[key] == pytest.approx([v for _, v in values]), key
    assert any(key.startswith("curve/") for key in logged)  # the learning curve, as an image
    (config,) = [r.run.config for r in records if r.WhichOneof("record_type") == "run"]
    values = {key_of(item): json.loads(item.value_json) for item in config.update}
    assert values["learner"]["name"] == "iql" and values["logger"] == "wandb"
    assert list(run.glob("wandb/offline-run-*/files/media/images/curve_*.png"))
    # Each evaluation inside training: its video in the run folder (H.264) and in the W&B run
    for step in (10, 20):
        (video,) = (run / "videos" / f"step_{step:09d}").glob("episode_000_*.mp4")
        assert h264_frames(video) > 1
    assert any(key.startswith("eval_video") for key in logged)
    assert len(list(run.glob("wandb/offline-run-*/files/media/videos/eval_video_*.mp4"))) == 2
    # ... and the best of them kept, as an agent `robot-rl eval` takes
    interim = json.loads((run / "results.json").read_text())["interim_evaluations"]
    best = json.loads((run / "best" / "best.json").read_text())
    assert best["score"] == max(e["success_rate"] for e in interim)
    assert best["step"] == next(e["step"] for e in interim if e["success_rate"] == best["score"])
    assert IQLAgent.load(run / "best").updates == best["step"]


def test_an_unknown_logger_is_one_line_and_writes_nothing(capsys, tmp_path):
    assert main(["train", "learner=iql", "logger=mlflow", "dataset=x.zarr"]) == 2
    assert "logger must be tensorboard or wandb" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_plot_reads_the_curves_of_runs_killed_or_finished(tmp_path, capsys):
    from robot_rl.utils.training import RunLog, logged_curves

    for seed, slope in ((0, 0.1), (1, 0.2)):
        log = RunLog(tmp_path / f"seed{seed}", "a run")
        for step in range(0, 50, 10):
            log.log(step, success=slope * step / 10, q=1.0)
        log.writer.flush()  # a killed run: no close(), no results.json
    assert logged_curves(tmp_path / "seed1")["success"][-1] == (40, pytest.approx(0.8))
    out = tmp_path / "curves.png"
    main(
        ["plot", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--curves", "success,q", "--out", str(out)]
    )
    assert out.read_bytes()[:4] == b"\x89PNG" and str(out) in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "seed0"), "--curves", "reward", "--out", str(out)]) == 2
    assert "no run logged reward; they logged q, success" in capsys.readouterr().err
