"""`robot-rl bench sim`: env steps/s per task, 1 env and 64 vectorized, beside raw `mj_step`.

For each task, in the same run: a single RobotEnv stepped with random actions (state only), the
VectorEnv of 64 copies (env steps/s and physics steps/s), and raw `mujoco.mj_step` on the same model
(the arm at rest after a reset, stepped `substeps` at a time, single thread): the ratio of the
vector env's physics steps/s to raw shows our overhead (it can exceed 1: the vector env steps its
worlds on every core). Render time is per 84x84 frame of the task's first camera.
"""

from __future__ import annotations

import time

import mujoco
import numpy as np
from omegaconf import OmegaConf

from robot_rl.config import CONF_DIR
from robot_rl.sim.registry import make_sim_env
from robot_rl.sim.vector import VectorEnv

TASKS = ("reach", "peg_insert", "cube_lift", "cube_place", "rc_car")


def _timed(fn, seconds: float) -> float:
    """Calls per second of `fn` over about `seconds`."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def bench_task(name: str, num_envs: int, seconds: float) -> dict:
    cfg = OmegaConf.load(CONF_DIR / "env" / f"{name}.yaml")
    state_cfg = OmegaConf.merge(cfg, {"cameras": []})
    rng = np.random.default_rng(0)

    env, _ = make_sim_env(state_cfg)
    env.reset(seed=0)
    substeps = env.robot.substeps

    def single_step():
        *_, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        if terminated or truncated:
            env.reset()

    single = _timed(single_step, seconds)
    env.reset(seed=0)
    model, data = env.robot.world.model, env.robot.world.data
    raw = _timed(lambda: mujoco.mj_step(model, data, nstep=substeps), seconds) * substeps

    vec = VectorEnv(lambda: make_sim_env(state_cfg)[0], num_envs)
    vec.reset(seed=0)
    vector = _timed(lambda: vec.step(rng.uniform(-1, 1, vec.action_space.shape).astype(np.float32)), seconds) * num_envs
    vec.close()

    render_ms = None
    if cfg.cameras:
        cam_env, _ = make_sim_env(OmegaConf.merge(cfg, {"cameras": [cfg.cameras[0]], "image_size": 84}))
        cam_env.reset(seed=0)
        camera = cam_env.cameras[0]
        camera.read()  # first render allocates the GL context
        render_ms = 1e3 / _timed(camera.read, seconds)
        cam_env.close()
    env.close()
    return {
        "substeps": substeps,
        "env_steps_per_s_1": single,
        f"env_steps_per_s_{num_envs}": vector,
        f"physics_steps_per_s_{num_envs}": vector * substeps,
        "raw_mj_step_per_s": raw,
        "ratio_to_raw": vector * substeps / raw,
        "render_ms_per_frame_84": render_ms,
    }


def run(quick: bool = False) -> dict:
    num_envs, seconds = (8, 0.3) if quick else (64, 2.0)
    results = {"num_envs": num_envs, "tasks": {}}
    for name in TASKS:
        if not (CONF_DIR / "env" / f"{name}.yaml").exists():
            continue
        results["tasks"][name] = bench_task(name, num_envs, seconds)
    return results


def format_table(r: dict) -> str:
    n = r["num_envs"]
    lines = [
        f"sim benchmark: random actions, state observations; {n} vectorized envs; raw mj_step on the same model",
        "",
        f"{'task':<12}{'1 env steps/s':>15}{f'{n} envs steps/s':>18}{'physics/s':>12}{'raw mj_step/s':>15}{'ratio':>8}{'render ms':>11}",
    ]
    for name, t in r["tasks"].items():
        render = "-" if t["render_ms_per_frame_84"] is None else f"{t['render_ms_per_frame_84']:.1f}"
        lines.append(
            f"{name:<12}{t['env_steps_per_s_1']:>15.0f}{t[f'env_steps_per_s_{n}']:>18.0f}{t[f'physics_steps_per_s_{n}']:>12.0f}"
            f"{t['raw_mj_step_per_s']:>15.0f}{t['ratio_to_raw']:>8.2f}{render:>11}"
        )
    return "\n".join(lines)
