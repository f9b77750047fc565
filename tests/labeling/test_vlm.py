"""VLM preference labeling through the real HTTP client against an OpenAI-compatible server on
loopback (the simulated VLM: it decodes the PNGs it is sent, finds the stored frames and answers
from the sim state recorded with them). No VLM weights can run here; everything else is real:
two-stage prompts, parsing, retries, timeouts, the on-disk cache."""

import json

import numpy as np
import pytest

from robot_rl.cli import compose, main
from robot_rl.commands.collect import collect
from robot_rl.datasets import EpisodeStore
from robot_rl.labeling.vlm import (
    LabelCache,
    LabelerError,
    OpenAIChatBackend,
    PairConfig,
    PreferenceLabeler,
    label_store,
    parse_answer,
    sample_pairs,
)
from robot_rl.sim.vlm_oracle import SimVLMServer, sim_vlm_for_store, task_progress
from robot_rl.utils.images import decode_png, encode_png


@pytest.fixture(scope="module")
def peg_store(tmp_path_factory):
    """A small mixed store of real renders: two expert episodes and two random ones."""
    path = tmp_path_factory.mktemp("vlm") / "peg.zarr"
    common = [
        "env=peg_insert",
        "env.cameras=[front]",
        "env.image_size=32",
        "loop.rate_hz=null",
        f"out={path}",
    ]
    collect(compose("collect", common + ["episodes=2", "seed=0"]))
    collect(compose("collect", common + ["episodes=2", "seed=1", "teleop=random", "env.max_steps=40"]))
    return path


def frames_and_progress(path):
    with EpisodeStore.open(path) as store:
        frames = np.asarray(store.array("obs/image/front")[:])
        state = np.asarray(store.array("obs/state")[:])
        names, ends = store.attrs["state_names"], store.episode_ends
    return frames, task_progress("peg_insert", state, names), ends


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("0", 0),
        ("1", 1),
        ("-1", -1),
        ("Image 2 is better.\n1", 1),
        ("The answer is 0.", 0),
        ("I cannot decide", None),
        ("1.5", None),
        ("", None),
    ],
)
def test_parse_answer(answer, expected):
    assert parse_answer(answer) == expected


def test_png_round_trip_is_lossless():
    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(image)), image)


def test_pairs_come_from_two_episodes_and_respect_the_tail_option():
    ends = np.array([50, 120, 200])
    starts = np.array([0, 50, 120])
    pairs = sample_pairs(ends, PairConfig(pairs=300, seed=1))
    episode = np.searchsorted(ends, pairs, side="right")
    assert (episode[:, 0] != episode[:, 1]).all()
    tail = sample_pairs(ends, PairConfig(pairs=300, near_end=0.2, seed=1))
    e = np.searchsorted(ends, tail, side="right")
    position = (tail - starts[e]) / (ends[e] - starts[e])
    assert position.min() >= 0.75 and (tail < ends[e]).all()  # the last fifth of the starts
    anywhere = (pairs - starts[episode]) / (ends[episode] - starts[episode])
    assert anywhere.min() < 0.1


def test_two_stage_labels_follow_the_sim_state(peg_store, tmp_path):
    frames, progress, ends = frames_and_progress(peg_store)
    with SimVLMServer(frames, progress) as server:
        backend = OpenAIChatBackend(server.base_url, "sim", timeout_s=10, retries=0)
        result = label_store(
            peg_store, tmp_path / "labels.json", backend, PairConfig(pairs=60, seed=0), "sim", progress=False
        )
        # Each asked pair was two requests: the analysis with both images, the verdict from text alone.
        assert server.stats["analyses"] == server.stats["verdicts"] == backend.requests // 2
        assert server.stats["unknown_images"] == 0
    report = result["report"]
    assert report["labels"] == len(result["labels"]) > 30
    assert report["answers"]["0"] + report["answers"]["1"] == report["labels"]
    for (a, b), label in zip(result["pairs"], result["labels"]):
        assert label == (0 if progress[a] > progress[b] else 1)
    assert json.loads((tmp_path / "labels.json").read_text())["labels"] == result["labels"]


def test_wrong_answers_at_the_configured_share(peg_store, tmp_path):
    frames, progress, ends = frames_and_progress(peg_store)
    with SimVLMServer(frames, progress, wrong=0.25, seed=3) as server:
        backend = OpenAIChatBackend(server.base_url, "sim", retries=0)
        result = label_store(
            peg_store,
            tmp_path / "labels.json",
            backend,
            PairConfig(pairs=400, seed=0),
            "sim",
            max_concurrency=8,
            progress=False,
        )
    truth = np.array([0 if progress[a] > progress[b] else 1 for a, b in result["pairs"]])
    wrong = float(np.mean(truth != np.array(result["labels"])))
    assert 0.18 < wrong < 0.32, wrong


def test_retries_after_server_errors_and_gives_up_after_timeouts(peg_store):
    frames, progress, _ = frames_and_progress(peg_store)
    a, b = frames[0], frames[-1]
    with SimVLMServer(frames, progress, fail_first=2) as server:
        backend = OpenAIChatBackend(server.base_url, "sim", retries=3, backoff_s=0.01)
        answer, analysis, _ = PreferenceLabeler(backend, LabelCache(":memory:"), "insert the peg", "sim").ask(
            a, b
        )
        assert answer in (0, 1) and "progress" in analysis
        assert backend.retried == 2 and server.stats["failed"] == 2
    with SimVLMServer(frames, progress, delay_s=0.5) as server:
        backend = OpenAIChatBackend(server.base_url, "sim", timeout_s=0.1, retries=1, backoff_s=0.01)
        with pytest.raises(LabelerError, match="failed 2 times"):
            backend.chat("hello")


def test_api_key_from_the_environment_and_no_retry_on_refusal(peg_store, monkeypatch):
    frames, progress, _ = frames_and_progress(peg_store)
    with SimVLMServer(frames, progress, api_key="s3cret") as server:
        monkeypatch.setenv("SIM_VLM_KEY", "wrong")
        backend = OpenAIChatBackend(
            server.base_url, "sim", api_key_env="SIM_VLM_KEY", retries=3, backoff_s=0.01
        )
        with pytest.raises(LabelerError, match="HTTP 401"):
            backend.chat("hello")
        assert backend.requests == 1  # a refusal is not retried
        monkeypatch.setenv("SIM_VLM_KEY", "s3cret")
        ok = OpenAIChatBackend(server.base_url, "sim", api_key_env="SIM_VLM_KEY")
        assert "no clear difference" in ok.chat("no images here")


def test_cache_means_a_rerun_asks_nothing(peg_store, tmp_path):
    frames, progress, _ = frames_and_progress(peg_store)
    cfg = PairConfig(pairs=40, seed=5)
    with SimVLMServer(frames, progress) as server:
        first = label_store(
            peg_store,
            tmp_path / "l.json",
            OpenAIChatBackend(server.base_url, "sim"),
            cfg,
            "sim",
            progress=False,
        )
        asked = server.requests
        again = label_store(
            peg_store,
            tmp_path / "l.json",
            OpenAIChatBackend(server.base_url, "sim"),
            cfg,
            "sim",
            progress=False,
        )
        assert server.requests == asked  # nothing asked twice
        other = label_store(
            peg_store,
            tmp_path / "l.json",
            OpenAIChatBackend(server.base_url, "sim"),
            cfg,
            "another-model",
            progress=False,
        )
        assert server.requests > asked  # the model is part of the key
    assert (
        again["labels"] == first["labels"]
        and again["report"]["cached"] == first["report"]["pairs"] - first["report"]["identical"]
    )
    assert other["report"]["cached"] == 0


def test_identical_frames_are_dropped_without_asking():
    frame = np.zeros((8, 8, 3), np.uint8)

    class Refuse:
        def chat(self, *args):
            raise AssertionError("asked about identical frames")

    labeler = PreferenceLabeler(Refuse(), LabelCache(":memory:"), "goal", "m")
    answers, report = labeler.label([frame[None]], [frame[None]])
    assert answers == [None] and report.identical == 1 and report.labels == 0


def test_cli_labels_through_the_simulated_vlm_and_resumes(peg_store, tmp_path, capsys, run_record):
    out = tmp_path / "cli.json"
    args = [
        "label",
        "vlm",
        f"store={peg_store}",
        f"out={out}",
        "pairs=30",
        "backend.kind=sim",
        "backend.wrong=0.25",
    ]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["labels"] > 0 and out.exists() and out.with_suffix(".cache.sqlite").exists()
    run_record(tmp_path / "cli.json.run.json", "label", "vlm", "pairs=30")
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["report"]["cached"] == first["report"]["pairs"] - first["report"]["identical"]
    assert main(["label", "vlm", "store=/nonexistent.zarr"]) == 2
    assert "no episode store" in capsys.readouterr().err
    assert main(["label", "vlm", f"store={peg_store}", "image_key=obs/image/wrist"]) == 2
    assert "obs/image/wrist" in capsys.readouterr().err


def test_sim_vlm_for_store_reads_the_store(peg_store):
    with sim_vlm_for_store(peg_store, "obs/image/front") as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert len(server.index) > 100


def test_transformers_backend_needs_a_local_model(tmp_path):
    from robot_rl.errors import ConfigError
    from robot_rl.labeling.vlm import TransformersBackend

    with pytest.raises(ConfigError, match="no local model"):
        TransformersBackend(str(tmp_path / "missing"))


def test_cube_place_judge_is_staged_like_the_task():
    from robot_rl.sim.arm_tasks import make_arm_env

    env = make_arm_env("cube_place", cameras=())
    obs, _ = env.reset(seed=0)
    names = env.state_names()
    layout = {n: i for i, n in enumerate(names)}
    base = obs["state"].copy()

    def state(cube, ee_to_cube, gripper):
        s = base.copy()
        for k, v in (("cube_pos", cube), ("ee_to_cube", ee_to_cube)):
            s[[layout[f"{k}[{i}]"] for i in range(3)]] = v
        s[layout["gripper"]] = gripper
        return s

    bin_pos = base[[layout[f"bin_pos[{i}]"] for i in range(3)]]
    far = state(bin_pos + [0.2, 0.0, -bin_pos[2] + 0.02], [0.1, 0, 0], 0.08)  # cube on the table, hand away
    reached = state(bin_pos + [0.2, 0.0, -bin_pos[2] + 0.02], [0, 0, 0], 0.04)  # hand on the cube
    carried = state(bin_pos + [0.0, 0.0, 0.12], [0, 0, 0], 0.04)  # held over the bin
    placed_held = state(bin_pos + [0.0, 0.0, 0.03], [0, 0, 0], 0.04)  # in the bin, still held
    placed_released = state(bin_pos + [0.0, 0.0, 0.03], [0, 0, 0.1], 0.08)  # let go, hand backing off
    p = task_progress("cube_place", np.stack([far, reached, carried, placed_held, placed_released]), names)
    assert list(np.argsort(p)) == [0, 1, 2, 3, 4], p
    env.close()


def test_an_unreachable_server_fails_fast_with_one_error(peg_store, tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [
        "label",
        "vlm",
        f"store={peg_store}",
        f"out={tmp_path / 'l.json'}",
        "pairs=50",
        f"backend.base_url=http://127.0.0.1:{port}/v1",
        "backend.retries=1",
        "backend.backoff_s=0.01",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("robot-rl: error")]
    assert len(errors) == 1 and "failed the first" in errors[0] and "answered none" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "l.json").exists()  # nothing half-written
