"""The `robot-rl` console script, run as a user runs it (a real subprocess)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from robot_rl.datasets import EpisodeStore
from robot_rl.datasets.sampler import OUT_OF_CORE_GROUP

ROBOT_RL = shutil.which("robot-rl", path=str(Path(sys.executable).parent)) or "robot-rl"


def cli(*args, cwd=None):
    """`robot-rl *args` in its own process group: past 600 s, or when the test is stopped, the
    command and whatever it started (Ray's processes, a learner) are killed together."""
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    command = [ROBOT_RL, *args]
    pipe = subprocess.PIPE
    with subprocess.Popen(
        command, stdout=pipe, stderr=pipe, text=True, cwd=cwd, env=env, start_new_session=True
    ) as run:
        try:
            stdout, stderr = run.communicate(timeout=600)
        except BaseException:  # past its time: show where it is stuck, then end it and its children
            run.send_signal(signal.SIGUSR1)  # robot-rl prints every thread's stack...
            time.sleep(2)
            os.killpg(run.pid, signal.SIGKILL)  # ...which reaches us once it is gone and its pipes close
            try:
                print(run.communicate(timeout=10)[1][-20_000:], file=sys.stderr)
            except Exception:
                pass
            raise
    return subprocess.CompletedProcess(command, run.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect") / "reach.zarr"
    run = cli("collect", "episodes=3", "loop.rate_hz=null", f"out={out}", "env.image_size=48")
    assert run.returncode == 0, run.stderr
    return out, run


def test_collect_records_what_it_reports(collected, run_record):
    out, run = collected
    assert "recorded 3 episodes" in run.stderr
    run_record(out.with_name("reach.zarr.run.json"), "collect", "episodes=3")
    assert "episode 3 step" in run.stderr  # the live progress line
    info = json.loads(cli("dataset", "info", str(out), "--json").stdout)
    store = EpisodeStore.open(out)
    assert info["episodes"] == store.n_episodes == 3
    assert info["steps"] == store.n_steps == int(store.episode_lengths.sum())
    assert info["fps"] == 20.0 and info["robot"] == "mujoco_reach_arm"
    assert info["keys"]["obs/image/front"] == {"shape": [48, 48, 3], "dtype": "uint8"}
    assert info["keys"]["action"] == {"shape": [3], "dtype": "float32"}
    assert info["size_bytes"] > 0
    episode = store.episode(0)
    assert episode["terminated"][-1] or episode["truncated"][-1]
    text = cli("dataset", "info", str(out)).stdout
    assert "episodes   3" in text and "obs/image/front" in text


def test_a_reader_that_goes_away_is_no_traceback(collected, tmp_path):
    """Like `robot-rl dataset info X | head -1` once head has exited: exit 141, nothing on stderr;
    and a run whose output pipe closes under it is recorded with that exit code, not as failed."""
    inside_a_run = (
        "from robot_rl.utils.run_record import RunRecord\n"
        f"with RunRecord({str(tmp_path / 'run')!r}):\n"
        "    print('x' * 100_000)  # past the pipe's buffer: the write itself fails\n"
    )
    for command in ([ROBOT_RL, "dataset", "info", str(collected[0])], [sys.executable, "-c", inside_a_run]):
        read, write = os.pipe()
        os.close(read)
        run = subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
        os.close(write)
        if command[0] == ROBOT_RL:
            assert run.returncode == 141 and run.stderr == ""
        else:
            assert "BrokenPipeError" in run.stderr  # no CLI around it to turn it into 141
    assert json.loads((tmp_path / "run" / "run.json").read_text())["exit_code"] == 141


def test_collect_appends_to_an_existing_store(collected, tmp_path):
    out, _ = collected
    copy = tmp_path / "copy.zarr"
    shutil.copytree(out, copy)
    run = cli("collect", "episodes=1", "loop.rate_hz=null", f"out={copy}", "env.image_size=48", "seed=7")
    assert run.returncode == 0, run.stderr
    assert EpisodeStore.open(copy).n_episodes == 4


def test_cfg_prints_the_config_and_runs_nothing(tmp_path):
    run = cli("train", "learner=iql", f"dataset={tmp_path / 'd.zarr'}", f"out={tmp_path / 'run'}", "--cfg")
    assert run.returncode == 0, run.stderr
    assert "name: iql" in run.stdout and f"out: {tmp_path / 'run'}" in run.stdout
    assert not (tmp_path / "run").exists()


def test_train_help_lists_learners_envs_and_a_learners_keys():
    listed = cli("train", "--help")
    assert listed.returncode == 0 and "diffusion_bc" in listed.stdout and "robosuite_lift" in listed.stdout
    keys = cli("train", "learner=iql", "--help")
    assert keys.returncode == 0, keys.stderr
    assert (
        "  steps = 100000" in keys.stdout
        and "encoder_freeze = false    # keep that encoder fixed" in keys.stdout
    )


def test_a_refused_run_leaves_no_record_and_keeps_the_previous_one(tmp_path, run_record):
    run = cli("train", "learner=iql", f"dataset={tmp_path / 'none.zarr'}", f"out={tmp_path / 'runs' / 'a'}")
    assert run.returncode == 2 and "no episode store" in run.stderr
    assert not (tmp_path / "runs").exists()  # no folder made for a run that never ran
    store = tmp_path / "reach.zarr"
    assert (
        cli(
            "collect", "env=reach", "episodes=1", "loop.rate_hz=null", "env.cameras=[]", f"out={store}"
        ).returncode
        == 0
    )
    first = run_record(tmp_path / "reach.zarr.run.json", "collect", "episodes=1")
    # An append refused for its schema (cameras where the store has none): the first record stands.
    refused = cli("collect", "env=reach", "episodes=1", "loop.rate_hz=null", f"out={store}")
    assert refused.returncode == 2 and "schema" in refused.stderr
    assert run_record(tmp_path / "reach.zarr.run.json", "collect") == first


def test_dataset_show_writes_a_video_and_a_plot(collected, tmp_path, h264_frames):
    out, _ = collected
    run = cli("dataset", "show", str(out), "--episode", "1", "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    video, plot = (Path(line) for line in run.stdout.split())
    assert h264_frames(video) == EpisodeStore.open(out).episode_lengths[1]
    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    assert ok and frame.shape == (48 * 3, 48 * 3, 3)
    assert plot.suffix == ".png" and plot.stat().st_size > 10_000
    gif = cli("dataset", "show", str(out), "--out", str(tmp_path), "--format", "gif")
    assert gif.returncode == 0 and Path(gif.stdout.split()[0]).suffix == ".gif"


@pytest.mark.parametrize(
    "args, message",
    [
        (("dataset", "info", "no/such.zarr"), "no episode store at no/such.zarr"),
        (("collect", "nosuchkey=3"), "Could not override 'nosuchkey'"),
        (("collect", "env=nosuchenv"), "Could not find 'env/nosuchenv'"),
        (("collect", "episodes=0"), "episodes must be at least 1"),
        (("dataset", "show", "no/such.zarr"), "no episode store"),
        (("bench", "nothing"), "invalid choice"),
        (
            ("train", "learner=hil_serl", "env=cube_lift", "learner.demos=no/such.zarr"),
            "demos=no/such.zarr: no such path",
        ),
        (
            ("train", "learner=hil_serl", "env=cube_lift", "learner.human=sometimes"),
            "human must be none, drift or schedule",
        ),
        (("train", "learner=hil_serl", "env=cube_lift", "learner.dist=slurm"), "dist must be sync or ray"),
        (
            ("train", "learner=hil_serl", "env=cube_lift", "learner.sac.image_keys=[image/side]"),
            "not observations of this env",
        ),
        (("train", "learner=reward_classifier", "dataset=no/such.zarr"), "no episode store at no/such.zarr"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(args, message):
    run = cli(*args)
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_schema_mismatch_is_reported_before_recording(collected, tmp_path):
    out, _ = collected
    copy = tmp_path / "copy.zarr"
    shutil.copytree(out, copy)
    run = cli("collect", "episodes=1", f"out={copy}", "env.image_size=32")
    assert run.returncode == 2 and "does not match the schema" in run.stderr
    assert "Traceback" not in run.stderr
    assert EpisodeStore.open(copy).n_episodes == 3


def test_demo_runs_the_whole_pipeline_and_reports(tmp_path, run_record):
    # The full pipeline at toy sizes: the figures are meaningless, the plumbing is real.
    run = cli(
        "demo",
        "episodes=4",
        "bc.steps=10",
        "residual.iterations=1",
        "residual.num_envs=4",
        "residual.rollout_steps=10",
        "env.max_steps=10",  # the demo's rollouts are an episode long (and a BC window needs 9 steps)
        "eval_episodes=4",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    report_path = Path(run.stdout.strip().splitlines()[-1])
    report = json.loads((tmp_path / report_path).read_text())
    assert {"bc_success", "residual_success", "episodes", "seconds"} <= set(report)
    assert report["episodes"] == 4 and 0.0 <= report["bc_success"] <= 1.0
    for key in ("bc_plot", "residual_plot"):
        assert (tmp_path / report[key]).exists()
    with EpisodeStore.open(tmp_path / "datasets/demo_peg_insert.zarr") as store:
        assert store.n_episodes == 4
        # Demos are recorded under actuation noise (DART); the env the policies face has none.
        assert store.info()["config"]["env"]["randomization"]["action_noise"] == 0.03
    assert report["bc_eval"]["episodes"] == 4
    assert "| seed | diffusion BC success | ResiP success | minutes |" in run.stdout
    # one seed (`seed`, 0), in runs/demo itself: the table and results.json beside report.json
    results = json.loads((tmp_path / "runs/demo/results.json").read_text())
    assert results["per_seed"]["0"]["bc_success"] == report["bc_success"] == results["mean"]["bc_success"]
    assert (tmp_path / "runs/demo/table.md").read_text() in run.stdout
    run_record(tmp_path / "runs/demo/run.json", "demo", "episodes=4")


def test_demo_over_seeds_writes_one_summary(tmp_path):
    run = cli(
        "demo",
        "seeds=[0,1]",
        "episodes=2",
        "bc.steps=2",
        "residual.iterations=1",
        "residual.num_envs=2",
        "residual.rollout_steps=10",
        "env.max_steps=10",
        "eval_episodes=2",
        "run_dir=runs/s",
        "out=datasets/s.zarr",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / run.stdout.strip().splitlines()[-1]).read_text())
    assert set(summary["seeds"]) == {"0", "1"} and 0.0 <= summary["residual_mean"] <= 1.0
    assert (tmp_path / "datasets/s_seed1.zarr").exists() and (tmp_path / "runs/s/seed1/report.json").exists()
    results = json.loads((tmp_path / "runs/s/results.json").read_text())
    assert (
        results["mean"]["residual_success"] == summary["residual_mean"]
        and results["std"]["bc_success"] == summary["bc_std"]
    )
    assert [line.split(" |")[0] for line in (tmp_path / "runs/s/table.md").read_text().splitlines()[4:]] == [
        "| 0",
        "| 1",
        "| mean ± std",
    ]


def test_hil_serl_trains_from_demos_with_the_scripted_human(tmp_path, run_record, h264_frames):
    demos = tmp_path / "demos.zarr"
    run = cli("collect", "env=cube_lift", "episodes=2", "loop.rate_hz=null", "env.cameras=[]", f"out={demos}")
    assert run.returncode == 0, run.stderr
    run = cli(
        "train",
        "learner=hil_serl",
        "env=cube_lift",
        "env.cameras=[]",
        f"learner.demos={demos}",
        "learner.env_steps=150",
        "learner.training_starts=50",
        "learner.batch_size=16",
        "learner.eval_every=100",  # one evaluation inside training, filmed, its agent kept as the best
        "learner.eval_interim_episodes=2",
        "learner.eval_video=1",
        "learner.eval_episodes=2",
        "learner.eval_num_envs=2",
        "learner.sac.hidden=[32,32]",
        f"out={tmp_path / 'run'}",
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["env_steps"] >= 150 and result["learner_steps"] > 0 and result["intervened_episodes"] >= 1
    assert result["evaluation"]["episodes"] == 2
    [interim] = result["interim_evaluations"]
    (video,) = (tmp_path / "run" / "videos" / f"step_{interim['env_steps']:09d}").glob("*.mp4")
    assert h264_frames(video) > 1
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best == {"score": interim["success_rate"], "step": interim["env_steps"]}
    for name in (
        "results.json",
        "curve.png",
        "checkpoint/model.safetensors",
        "buffers/online.zarr",
        "buffers/prior.zarr",
    ):
        assert (tmp_path / "run" / name).exists(), name
    evaluated = cli(
        "eval",
        f"checkpoint={tmp_path / 'run' / 'checkpoint'}",
        "env=cube_lift",
        "episodes=2",
        "num_envs=2",
        "video=2",
        f"out={tmp_path / 'eval' / 'result.json'}",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["kind"] == "sac_agent"
    # The first two evaluation episodes as H.264 videos beside the results, named by outcome and return.
    videos = sorted((tmp_path / "eval" / "result_videos").iterdir())
    assert [Path(v).name for v in result["videos"]] == [v.name for v in videos] and len(videos) == 2
    for video in videos:
        assert re.fullmatch(r"episode_00\d_(success|failure)_return_-?\d+\.\d\d\.mp4", video.name), video.name
        assert h264_frames(video) > 1
    run_record(tmp_path / "run" / "run.json", "train", "learner=hil_serl")  # what made each
    run_record(tmp_path / "eval" / "result.json.run.json", "eval", "video=2")
    # A new run starts from a finished one's weights and buffers (init_from).
    resumed = cli(
        "train",
        "learner=hil_serl",
        "env=cube_lift",
        "env.cameras=[]",
        f"learner.init_from={tmp_path / 'run'}",
        "learner.env_steps=20",
        "learner.batch_size=16",
        "learner.eval_every=0",
        "learner.eval_episodes=1",
        "learner.eval_num_envs=1",
        "learner.sac.hidden=[32,32]",
        f"out={tmp_path / 'run2'}",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (
        json.loads(resumed.stdout)["learner_steps"] >= 20
    )  # training starts at once: the buffers came along
    assert_resumes_what_was_saved(tmp_path / "run")


def assert_resumes_what_was_saved(run: Path) -> None:
    """A resumed learner starts from every saved weight and both saved buffers, read back here
    with safetensors and zarr themselves rather than with the code under test."""
    import numpy as np
    import torch
    import zarr
    from safetensors.torch import load_file

    from robot_rl.config import compose
    from robot_rl.factory import make_sim_env
    from robot_rl.learners.hil_serl import HILSERLConfig, make_learner

    env, _ = make_sim_env(
        compose("train", ["learner=hil_serl", "env=cube_lift", "env.cameras=[]"]).env, seed=0
    )
    learner = make_learner(
        env.observation_space.spaces,
        env.action_space.shape[0],
        HILSERLConfig(init_from=str(run), sac={"hidden": [32, 32]}),
    )
    saved = load_file(run / "checkpoint" / "model.safetensors")
    restored = learner.agent.state_dict()
    assert set(saved) <= set(restored) and saved
    for name, tensor in saved.items():
        torch.testing.assert_close(restored[name], tensor, rtol=0, atol=0, msg=name)
    for which in ("online", "prior"):
        on_disk = zarr.open_group(str(run / "buffers" / f"{which}.zarr"), mode="r")
        buffer = getattr(learner, which).contents()
        assert set(buffer) == {
            name for name, a in on_disk.members(max_depth=None) if isinstance(a, zarr.Array)
        }
        for key, values in buffer.items():
            np.testing.assert_array_equal(values, on_disk[key][:], err_msg=f"{which} {key}")
    assert len(learner.prior) != len(
        learner.online
    )  # two different buffers (2 demos vs 150 steps), not one twice


def _loop_figures(figures, stdout):
    assert "deadline_sleep" in stdout and "naive_sleep" in stdout  # the baselines are named
    assert set(figures["conditions"]) == {"idle", "load 1"} and figures["load_processes"] == 1
    for condition in figures["conditions"].values():
        assert set(condition["rates"]) == {"100", "500"}
        for entry in condition["rates"].values():
            for name in ("control_loop", "deadline_sleep", "naive_sleep"):
                m = entry[name]
                assert m["ticks"] > 0 and m["period_mean_us"] > 0 and m["achieved_hz"] > 0
                assert {
                    "period_error_us_p50",
                    "period_error_us_p99",
                    "missed_deadlines",
                    "cpu_fraction",
                    "overhead_us_per_tick",
                } <= set(m)
            assert isinstance(entry["control_loop"]["overruns"], int)
            assert 0 <= entry["control_loop"]["contended_ticks"] <= entry["control_loop"]["ticks"]
            assert entry["p99_error_ratio_deadline"] >= 0 and entry["p99_error_ratio_naive"] >= 0


def _sim_figures(figures, stdout):
    n = figures["num_envs"]
    assert "baseline (raw): mujoco.mj_step" in stdout
    assert set(figures["tasks"]) == {"reach", "peg_insert", "cube_lift", "cube_place", "rc_car"}
    for task in figures["tasks"].values():
        assert task["env_steps_per_s_1"] > 0 and task[f"env_steps_per_s_{n}"] > 0
        assert task[f"raw_physics_steps_per_s_{n}"] > 0 and task["ratio_to_raw"] > 0
        assert task["threads"] == figures["threads"] and task["env_steps_timed"] > 0
        # The baseline stepped the vector env's physics: every world ended in the same state.
        assert task["raw_same_final_state"] is True


def _store_figures(figures, stdout):
    assert "plain zarr" in stdout and "diffusion_policy" in stdout
    assert figures["sample"]["images"]["ours_warm_per_s"] > 0 and figures["write"]["ours_steps_per_s"] > 0
    for sample in figures["sample"].values():  # every column, against both baselines
        assert all(sample[k] > 0 for k in sample if k.endswith("_per_s"))
        assert sample["decodes_per_batch_cache_off"] <= sample["decodes_per_batch_cache_off_iid"]
        assert sample["ours_cache_off_windows_per_chunk"] == OUT_OF_CORE_GROUP  # no cache: out of core
    images = figures["sample"]["images"]  # every batch holds all the few state chunks, not all camera ones
    assert images["decodes_per_batch_cache_off"] < images["decodes_per_batch_cache_off_iid"]
    assert set(figures["camera_like"]) >= {"blosc", "before", "diffusion_policy_disk", "video"}
    assert figures["write"]["plain_zarr_steps_per_s"] > 0 and {"write_cost", "first_pass_cost"} <= set(
        figures["checksums"]
    )


def _policy_figures(figures, stdout):
    assert "torch.nn.Conv1d" in stdout  # the convolution baseline
    assert figures["latency"] and all(
        set(m["ddim_ms"]) == {"4", "8", "10", "16"} and m["ddpm100_ms"] > 0 for m in figures["latency"]
    )
    assert figures["conv_baseline"] and all(m["speedup"] > 0 for m in figures["conv_baseline"])
    assert figures["training"] and all(m["steps_per_s"] > 0 for m in figures["training"])


def _sac_figures(figures, stdout):
    assert "loop" in stdout  # the per-member loop baseline
    assert [m["critics"] for m in figures["learner"]] == [2, 10]
    assert all(m["batched_steps_per_s"] > 0 and m["loop_steps_per_s"] > 0 for m in figures["learner"])
    learners = [m["learner"] for m in figures["actor"]]
    assert learners[0] == "none" and learners[-1] == "thread"
    assert all(m["achieved_hz"] > 0 and "period_error_us_p99" in m for m in figures["actor"])
    assert "backbone on every batch" in stdout  # the image learner's baseline
    image = figures["image_learner"]
    assert image["cached_steps_per_s"] > 0 and image["per_batch_steps_per_s"] > 0


def _iql_figures(figures, stdout):
    assert "unfused" in stdout
    assert (
        figures["rounds"][0]["fused_updates_per_s"] > 0 and figures["rounds"][0]["unfused_updates_per_s"] > 0
    )
    assert figures["fused_over_unfused"] > 0


def _icvf_figures(figures, stdout):  # goals and intents repeat frames: encoding each once is fewer frames
    assert "median ratio" in stdout and figures["frames_per_batch"]["per_role"] == 4 * 64
    assert figures["frames_per_batch"]["once"] < 0.85 * 4 * 64 and figures["rounds"][0]["ratio"] > 0


def _scale_figures(figures, stdout):
    assert "single process" in stdout
    assert set(figures["ppo"]) == {"single process", "1 Ray workers", "2 Ray workers"}
    assert figures["ppo_ratio"]["single process"] == 1.0 and all(v > 0 for v in figures["ppo"].values())


GPU_CASES = {
    "diffusion BC, ResiP-size UNet",
    "diffusion BC, demo-size UNet",
    "residual PPO update",
    "residual PPO rollout, ResiP-size base",
    "residual PPO rollout, demo-size base",
    "SAC, 2 critics",
    "SAC, 10 critics (REDQ, subsample 2)",
    "SAC, UTD 8 (FastRLAP)",
    "SAC from 2 cameras (cached maps)",
    "IQL",
    "ICVF (32 px camera)",
    "inverse dynamics (IDM)",
    "preference reward model (state)",
    "preference reward model (camera)",
    "diffusion inference, ResiP-size UNet",
}


def _gpu_figures(figures, stdout):
    """cpu mode here: every learner case ran on the CPU as both sides, its losses finite, and its
    checkpoint loaded on the CPU gave the trained model's actions or values."""
    assert figures["device"] == "cpu" and figures["cpu_mode"] is True
    assert "cpu mode" in stdout and "not a GPU result" in stdout
    assert {c["name"] for c in figures["cases"]} == GPU_CASES
    for case in figures["cases"]:
        assert not case.get("skipped"), case
        ran = [v for v in case["variants"] if "skipped" not in v]
        assert ran and all("error" not in v and v["finite"] for v in ran), case
        assert all(v["speedup"] == 1.0 for v in ran), case  # one measurement serves both sides
        assert case["roundtrip"]["match"] and case["roundtrip"]["max_abs_diff"] <= 1e-3, case
        assert all(result == "ok" for result in case.get("checks", {}).values()), case
        skipped = {v["variant"]: v["skipped"] for v in case["variants"] if "skipped" in v}
        assert all(reason == "CUDA only" for reason in skipped.values()), case  # bf16 and compile
    assert figures["ok"] is True and figures["failures"] == []


def _resip_figures(figures, stdout):  # every phase of a BC step and of a residual iteration, timed
    assert "residual PPO iteration" in stdout and set(figures["bc_step_s"]) == {"1", "2"}
    assert set(figures["bc_step_s"]["1"]) == {"sample", "forward", "backward", "optimizer", "ema"}
    rollouts = figures["residual_rollout_s"]  # both ways of planning, the config's own last
    assert list(rollouts) == ["plans together", "replan on reset"]  # the demo replans at each reset
    assert all({"base denoising", "residual forward", "physics", "GAE"} <= set(r) for r in rollouts.values())
    updates = figures["residual_update"]
    assert updates["1"]["epochs"] == updates["2"]["epochs"] and updates["1"]["seconds"] > 0


BENCHES = {
    "loop": _loop_figures,
    "store": _store_figures,
    "sim": _sim_figures,
    "policy": _policy_figures,
    "sac": _sac_figures,
    "iql": _iql_figures,
    "icvf": _icvf_figures,
    "scale": _scale_figures,
    "gpu": _gpu_figures,
    "resip": _resip_figures,
}


@pytest.mark.parametrize("which", list(BENCHES))
def test_bench_prints_a_table_and_writes_json(which, tmp_path):
    """Every bench in its quick mode: it runs, prints its table (naming its baseline) and writes the
    figures it promises. No timing is asserted (a shared machine is noisy)."""
    if which == "scale":
        pytest.importorskip("ray")
    extra = ["--load", "1"] if which == "loop" else []  # the loaded runs too, beside one busy process
    run = cli("bench", which, "--quick", "--json", str(tmp_path / "b.json"), *extra)
    assert run.returncode == 0, run.stderr
    BENCHES[which](json.loads((tmp_path / "b.json").read_text()), run.stdout)


def test_bench_load_is_for_the_loop_bench_only(tmp_path):
    run = cli("bench", "iql", "--quick", "--load", "1")
    assert run.returncode == 2 and "--load applies to `robot-rl bench loop` only" in run.stderr


@pytest.mark.parametrize("env_name", ["peg_insert", "cube_lift", "cube_place", "rc_car"])
def test_collect_and_show_every_sim_task(env_name, tmp_path):
    out = tmp_path / f"{env_name}.zarr"
    run = cli(
        "collect", f"env={env_name}", "episodes=1", "loop.rate_hz=null", f"out={out}", "env.image_size=32"
    )
    assert run.returncode == 0, run.stderr
    assert "(1 successful)" in run.stderr
    shown = cli("dataset", "show", str(out), "--out", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert {Path(p).suffix for p in shown.stdout.split()} == {".mp4", ".png"}


def test_missing_extra_is_one_line_and_exit_2(tmp_path):
    """robosuite made unimportable (whether or not it is installed): the CLI names the extra."""
    code = (
        "import sys; sys.modules['robosuite'] = None; from robot_rl.cli import main; "
        "sys.exit(main(['collect', 'env=robosuite_lift', 'episodes=1', 'out=x.zarr']))"
    )
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "install robot_rl[sim]" in lines[0], run.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_help_lists_every_command(capsys):
    import pytest

    from robot_rl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("collect", "find-cameras", "read-robot", "idm-iql", "bench"))


def test_collect_records_a_checkpoints_rollouts(tmp_path):
    """teleop=policy: a checkpoint acts and its episodes are recorded (e.g. a reward classifier's
    hard negatives from an RL policy); a checkpoint that reads other observations is refused."""
    from robot_rl.policies.sac import SACAgent, SACConfig
    from robot_rl.sim.reach import make_reach_env

    state_dim = make_reach_env(cameras=()).observation_space["state"].shape[0]
    good = SACAgent(SACConfig(state_dim=state_dim, action_dim=3)).save(tmp_path / "good")
    wrong = SACAgent(SACConfig(state_dim=state_dim + 1, action_dim=3)).save(tmp_path / "wrong")
    out = tmp_path / "rollouts.zarr"
    common = ["collect", "env=reach", "env.cameras=[]", "episodes=2", "loop.rate_hz=null", "teleop=policy"]
    run = cli(*common, f"policy={good}", "policy_sample=true", f"out={out}")
    assert run.returncode == 0, run.stderr
    assert "recorded 2 episodes" in run.stderr
    refused = cli(*common, f"policy={wrong}", f"out={tmp_path / 'x.zarr'}")
    assert refused.returncode == 2 and "reads a" in refused.stderr and not (tmp_path / "x.zarr").exists()
    missing = cli(*common, f"out={tmp_path / 'y.zarr'}")
    assert missing.returncode == 2 and "teleop=policy needs policy=CHECKPOINT" in missing.stderr


def test_eval_runs_an_image_agent_through_the_control_loop(tmp_path):
    """An agent that reads cameras (image HIL-SERL) is evaluated one env at a time; one whose state
    size is not the env's is refused in one line before any episode."""
    from robot_rl.policies.sac import SACAgent, SACConfig
    from robot_rl.sim.reach import make_reach_env

    state_dim = make_reach_env(image_size=32).observation_space["state"].shape[0]
    common = ["eval", "env=reach", "env.image_size=32", "env.max_steps=5", "episodes=2"]
    for name, dim in (("good", state_dim), ("wrong", state_dim + 1)):
        agent = SACAgent(SACConfig(state_dim=dim, action_dim=3, image_keys=("image/front",), image_size=32))
        agent.save(tmp_path / name)
    run = cli(*common, f"checkpoint={tmp_path / 'good'}")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["kind"] == "sac_agent" and result["episodes"] == 2 and result["mean_length"] == 5
    refused = cli(*common, f"checkpoint={tmp_path / 'wrong'}")
    assert refused.returncode == 2 and f"reads a {state_dim + 1}-D state" in refused.stderr
    assert "Traceback" not in refused.stderr
