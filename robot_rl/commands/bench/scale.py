"""`robot-rl bench scale`: residual PPO env-steps/s with its envs in 1, 2 and 4 Ray rollout
workers, against the single-process vector env, in the same run. (The learners on a GPU against
the CPU: `robot-rl bench gpu`.)

PPO runs its real loop (rollouts, GAE, epochs of minibatch updates) on peg_insert with an
untrained diffusion base: throughput does not depend on what the base learned. The Ray session
is started once (with this machine's cores) before any timing, so worker start-up is not timed.
--quick (a smoke test, Ray included): 4 envs x 16 steps x 1 iteration, 1 and 2 workers.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from robot_rl.utils.dist import ray_session

ENV = "peg_insert"


def _base(directory: Path, env_cfg) -> str:
    from robot_rl.policies.diffusion import DiffusionConfig, DiffusionPolicy
    from robot_rl.sim.vector import make_vector_env

    vec = make_vector_env(env_cfg, 1)
    s, a = vec.single_observation_space.shape[0], vec.single_action_space.shape[0]
    vec.close()
    torch.manual_seed(0)
    policy = DiffusionPolicy(
        DiffusionConfig(s, a, obs_horizon=1, down_dims=(32, 64, 128), diffusion_step_embed_dim=64),
        -np.ones(s),
        np.ones(s),
        -np.ones(a),
        np.ones(a),
    )
    return str(policy.save(directory / "base"))


def ppo_steps_per_s(
    env_cfg,
    base: str,
    out: Path,
    workers: int | None,
    num_envs: int,
    iterations: int,
    rollout_steps: int = 50,
) -> float:
    from robot_rl.learners.residual_ppo import ResidualPPOConfig, train_residual_ppo
    from robot_rl.sim.ray_vector import vector_env_factory

    make = vector_env_factory(env_cfg, "none" if workers is None else "local", workers or 1)
    cfg = ResidualPPOConfig(
        num_envs=num_envs, rollout_steps=rollout_steps, iterations=iterations, update_epochs=4, device="cpu"
    )
    start = time.perf_counter()
    result = train_residual_ppo(make, base, out, cfg, progress=False)
    return result["env_steps"] / (time.perf_counter() - start)


def run(quick: bool = False) -> dict:
    from robot_rl.config import compose
    from robot_rl.utils.training import seed_everything

    seed_everything(0)
    env_cfg = compose("train", [f"env={ENV}"]).env
    # --quick is a smoke test of the same code paths (Ray included), kept short.
    num_envs, iterations, rollout_steps, worker_counts = (
        (4, 1, 16, (1, 2)) if quick else (32, 3, 50, (1, 2, 4))
    )
    results = {
        "env": ENV,
        "num_envs": num_envs,
        "rollout_steps": rollout_steps,
        "iterations": iterations,
        "cpus": os.cpu_count(),
        "ppo": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = _base(tmp, env_cfg)
        results["ppo"]["single process"] = ppo_steps_per_s(
            env_cfg, base, tmp / "single", None, num_envs, iterations, rollout_steps
        )
        with ray_session("local", num_cpus=os.cpu_count()):
            for workers in worker_counts:
                results["ppo"][f"{workers} Ray workers"] = ppo_steps_per_s(
                    env_cfg, base, tmp / f"w{workers}", workers, num_envs, iterations, rollout_steps
                )
    single = results["ppo"]["single process"]
    results["ppo_ratio"] = {k: v / single for k, v in results["ppo"].items()}
    return results


def format_table(r: dict) -> str:
    lines = [
        f"residual PPO on {r['env']}, {r['num_envs']} envs x {r['rollout_steps']} steps x {r['iterations']} "
        f"iterations, {r['cpus']} cores",
        "| rollouts | env steps/s | vs single process |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:,.0f} | {r['ppo_ratio'][k]:.2f}x |" for k, v in r["ppo"].items()]
    lines.append("the learners on a GPU against the CPU: robot-rl bench gpu")
    return "\n".join(lines)
