"""Ray rollout workers on a local Ray (2 CPUs): the same episodes as one process, so PPO with 2
workers and a 4-worker evaluation give exactly the single-process results for the same seeds;
device selection falls back to CPU cleanly."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from robot_rl.cli import compose, main
from robot_rl.errors import ConfigError
from robot_rl.policies.diffusion import DiffusionConfig, DiffusionPolicy

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reach_base(tmp_path_factory):
    """An untrained (random) diffusion base for reach: PPO and evaluation only need it to act."""
    env = compose("train", ["env=reach"]).env
    from robot_rl.sim.vector import make_vector_env

    vec = make_vector_env(env, 1)
    state_dim, action_dim = vec.single_observation_space.shape[0], vec.single_action_space.shape[0]
    vec.close()
    torch.manual_seed(0)
    policy = DiffusionPolicy(
        DiffusionConfig(
            state_dim,
            action_dim,
            down_dims=(16, 32),
            diffusion_step_embed_dim=16,
            obs_horizon=1,
            pred_horizon=8,
            action_horizon=4,
            inference_steps=2,
        ),
        -np.ones(state_dim),
        np.ones(state_dim),
        -np.ones(action_dim),
        np.ones(action_dim),
    )
    return env, policy.save(tmp_path_factory.mktemp("base") / "checkpoint")


def test_ray_vector_env_steps_the_same_episodes(local_ray, reach_base):
    from robot_rl.sim.ray_vector import RayVectorEnv
    from robot_rl.sim.vector import make_vector_env

    env, _ = reach_base
    local, remote = make_vector_env(env, 5), RayVectorEnv(env, 5, workers=2)
    rng = np.random.default_rng(0)
    try:
        a, _ = local.reset(seed=3)
        b, _ = remote.reset(seed=3)
        np.testing.assert_array_equal(a, b)
        for _ in range(100):  # past the 80-step time limit: auto-resets from each env's own RNG
            actions = rng.uniform(-1, 1, (5, local.single_action_space.shape[0])).astype(np.float32)
            ra, rb = local.step(actions), remote.step(actions)
            for x, y in zip(ra[:4], rb[:4]):
                np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(ra[4]["success"], rb[4]["success"])
        # A checkpoint's env states, restored on the workers: the episodes go on as they were
        restored = remote.restore(local.episode_state())
        np.testing.assert_array_equal(restored, ra[0])
        for _ in range(20):
            actions = rng.uniform(-1, 1, (5, local.single_action_space.shape[0])).astype(np.float32)
            np.testing.assert_array_equal(local.step(actions)[0], remote.step(actions)[0])
    finally:
        local.close()
        remote.close()
    with pytest.raises(ConfigError, match="workers"):
        RayVectorEnv(env, 2, workers=3)


def test_ppo_with_two_rollout_workers_equals_one_process(local_ray, reach_base, tmp_path):
    from robot_rl.commands.train import train_residual

    env, base = reach_base
    learner = OmegaConf.merge(
        compose("train", ["learner=residual_ppo"]).learner,
        {"num_envs": 4, "rollout_steps": 20, "iterations": 2, "update_epochs": 2},
    )
    one = train_residual(learner, env, str(base), tmp_path / "one", seed=0, progress=False)
    two = train_residual(
        OmegaConf.merge(learner, {"dist": "local", "workers": 2}),
        env,
        str(base),
        tmp_path / "two",
        seed=0,
        progress=False,
    )
    history = [json.loads((tmp_path / d / "results.json").read_text())["history"] for d in ("one", "two")]
    assert history[0] == history[1] and one["env_steps"] == two["env_steps"] == 160
    from safetensors.torch import load_file

    w1, w2 = (load_file(tmp_path / d / "checkpoint" / "model.safetensors") for d in ("one", "two"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_four_worker_evaluation_merges_to_the_single_process_table(local_ray, reach_base, tmp_path, capsys):
    env, base = reach_base
    args = ["eval", f"checkpoint={base}", "env=reach", "episodes=12", "num_envs=6", "ddim_steps=2"]
    assert main(args) == 0
    single = json.loads(capsys.readouterr().out)
    assert main(args + ["dist=ray", "workers=4"]) == 0  # joins the Ray running in this process
    spread = json.loads(capsys.readouterr().out)
    for key in ("episodes", "success_rate", "successes", "mean_length"):
        assert single[key] == spread[key]
    assert main(args + ["dist=everywhere"]) == 2
    assert "dist must be one of" in capsys.readouterr().err


def test_sweep_runs_a_grid_over_seeds_on_ray(local_ray, tmp_path, capsys, run_record):
    store = tmp_path / "reach.zarr"
    assert (
        main(["collect", "env=reach", "episodes=2", f"out={store}", "loop.rate_hz=null", "env.cameras=[]"])
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "sweep"
    trial = [
        "learner=diffusion_bc",
        "env=reach",
        f"dataset={store}",
        "learner.steps=3",
        "learner.batch_size=8",
        "learner.policy.down_dims=[8,16]",
        "learner.policy.diffusion_step_embed_dim=8",
    ]
    assert (
        main(
            [
                "sweep",
                *trial,
                "grid={learner.lr:[0.001,0.0001]}",
                "seeds=[0,1]",
                "metric=final_loss",
                f"out={out}",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "learner.lr=0.001" in table and "learner.lr=0.0001" in table and "± " in table
    results = json.loads((out / "results.json").read_text())
    assert len(results["trials"]) == 4 and all("value" in t for t in results["trials"])
    assert (out / "sweep.png").stat().st_size > 0
    run_record(out / "run.json", "sweep", "seeds=[0,1]")
    # A trial is the plain `robot-rl train` with its point and seed: the same loss run here.
    from robot_rl.commands.train import train

    first = next(t for t in results["trials"] if t["seed"] == 0 and t["point"] == {"learner.lr": 0.001})
    again = train(compose("train", trial + ["learner.lr=0.001", "seed=0", f"out={tmp_path / 'again'}"]))
    assert again["final_loss"] == pytest.approx(first["value"], rel=1e-6)
    # A failing trial is reported, not fatal.
    assert (
        main(
            [
                "sweep",
                *trial[:-3],
                "learner.steps=-1",
                "grid={learner.lr:[0.001]}",
                "seeds=[0]",
                "metric=final_loss",
                f"out={tmp_path / 'bad'}",
            ]
        )
        == 0
    )
    assert "| 0 | 1 |" in (tmp_path / "bad" / "table.md").read_text()
