"""`robot-rl bench sim`: env steps/s per task, 1 env and N vectorized, beside raw `mj_step` doing
the same physics.

For each task, in the same run: a single RobotEnv stepped with random actions (state only); the
VectorEnv of N copies (env steps/s and physics steps/s); and the baseline a user would write
instead of the vector env: raw `mujoco.mj_step` over N MjData of the same models, on a thread
pool of the same size split the same way, stepping the same actions. The actions are the vector
env's own: a first, untimed pass of the vector env records what it wrote into each `data.ctrl`
before each physics step (the arm's IK targets, the car's steering and drive) and the states its
auto-resets started from; the raw loop writes those into `data.ctrl`, steps `substeps` per env
step (`mj_step(nstep=substeps)`) and restores the same reset states, so both do the same physics,
contacts included (`raw_same_final_state`: every world ended bit-identical to the vector env's).
`ratio_to_raw` = vector env physics steps/s / raw physics steps/s: 1.0 means no overhead; 1 - ratio
is the share of time the wrapper adds (IK, observations, rewards, auto-reset, Python; for rc_car
also its per-substep contact sensing). Render time is per 84x84 frame of the task's first camera.
"""

from __future__ import annotations

import copy
import os
import time
from concurrent.futures import ThreadPoolExecutor

import mujoco
import numpy as np
from omegaconf import OmegaConf

from robot_rl.config import CONF_DIR
from robot_rl.factory import make_sim_env
from robot_rl.sim.vector import VectorEnv

TASKS = ("reach", "peg_insert", "cube_lift", "cube_place", "rc_car")


def _timed(fn, seconds: float) -> float:
    """Calls per second of `fn` over about `seconds`."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def _vector_and_raw(state_cfg, num_envs: int, seconds: float, rng) -> dict:
    """The vector env's physics steps/s and raw mj_step's on the same actions, envs and threads."""
    threads = min(os.cpu_count() or 1, num_envs)  # VectorEnv's own default, named for both
    vec = VectorEnv(lambda: make_sim_env(state_cfg)[0], num_envs, threads)
    substeps = vec.envs[0].robot.substeps
    # 1. Untimed pass: the ctrl each env's physics step starts from, and where each auto-reset lands.
    vec.reset(seed=0)
    start_data = [copy.copy(env.robot.world.data) for env in vec.envs]
    ctrls: list[list[np.ndarray]] = [[] for _ in vec.envs]
    for i, env in enumerate(vec.envs):
        robot, step_physics = env.robot, env.robot.step_physics

        def recorded(robot=robot, step_physics=step_physics, log=ctrls[i]):
            log.append(robot.world.data.ctrl.copy())
            step_physics()

        robot.step_physics = recorded
    actions, resets = [], {}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        actions.append(rng.uniform(-1, 1, vec.action_space.shape).astype(np.float32))
        _, _, terminated, truncated, _ = vec.step(actions[-1])
        for i in np.flatnonzero(terminated | truncated):  # env i's next step starts from this state
            resets[len(actions), i] = copy.copy(vec.envs[i].robot.world.data)
    for env in vec.envs:
        del env.robot.step_physics  # back to the class's method
    steps = len(actions)
    # Where the recorded pass left every world: the raw loop below replays this pass, so its worlds
    # must end here (the timed pass repeats the same actions for the timing only).
    final_qpos = [env.robot.world.data.qpos.copy() for env in vec.envs]

    # 2. The vector env, timed, on the same actions from the same reset.
    vec.reset(seed=0)
    t0 = time.perf_counter()
    for a in actions:
        vec.step(a)
    vector = steps * num_envs / (time.perf_counter() - t0)
    models = [env.robot.world.model for env in vec.envs]
    vec.close()

    # 3. Raw mj_step: same models, same threads and split, the recorded ctrl and reset states.
    datas = [copy.copy(d) for d in start_data]
    groups = [list(range(k, num_envs, threads)) for k in range(threads)]

    def step_group(group):
        for i in group:
            mujoco.mj_step(models[i], datas[i], nstep=substeps)

    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    t0 = time.perf_counter()
    for t in range(steps):
        for i in range(num_envs):
            if (t, i) in resets:
                datas[i] = copy.copy(resets[t, i])  # what a raw loop's reset does: a fresh state
            datas[i].ctrl[:] = ctrls[i][t]
        if pool is None:
            step_group(groups[0])
        else:
            list(pool.map(step_group, groups))
    raw = steps * num_envs / (time.perf_counter() - t0)
    if pool is not None:
        pool.shutdown()
    for i in range(num_envs):  # an episode that ended on the last step was reset by the vector env
        if (steps, i) in resets:
            datas[i] = resets[steps, i]
    return {
        "threads": threads,
        "steps_timed": steps,
        "resets": len(resets),
        "substeps": substeps,
        "vector_env_steps_per_s": vector,
        "raw_env_steps_per_s": raw,
        # The baseline did the vector env's physics: every world ends in the same state, bit for bit.
        "same_final_state": all(np.array_equal(q, d.qpos) for q, d in zip(final_qpos, datas)),
    }


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
    env.close()

    vr = _vector_and_raw(state_cfg, num_envs, seconds, rng)
    vector, raw = vr["vector_env_steps_per_s"], vr["raw_env_steps_per_s"]

    render_ms = None
    if cfg.cameras:
        cam_env, _ = make_sim_env(OmegaConf.merge(cfg, {"cameras": [cfg.cameras[0]], "image_size": 84}))
        cam_env.reset(seed=0)
        camera = cam_env.cameras[0]
        camera.read()  # first render allocates the GL context
        render_ms = 1e3 / _timed(camera.read, seconds)
        cam_env.close()
    return {
        "substeps": substeps,
        "threads": vr["threads"],
        "env_steps_timed": vr["steps_timed"],
        "auto_resets": vr["resets"],
        "raw_same_final_state": vr["same_final_state"],
        "env_steps_per_s_1": single,
        f"env_steps_per_s_{num_envs}": vector,
        f"physics_steps_per_s_{num_envs}": vector * substeps,
        f"raw_physics_steps_per_s_{num_envs}": raw * substeps,
        "ratio_to_raw": vector / raw,
        "render_ms_per_frame_84": render_ms,
    }


def run(quick: bool = False) -> dict:
    num_envs, seconds = (8, 0.3) if quick else (64, 2.0)
    results = {"num_envs": num_envs, "threads": min(os.cpu_count() or 1, num_envs), "tasks": {}}
    for name in TASKS:
        if not (CONF_DIR / "env" / f"{name}.yaml").exists():
            continue
        results["tasks"][name] = bench_task(name, num_envs, seconds)
    return results


def format_table(r: dict) -> str:
    n = r["num_envs"]
    lines = [
        f"sim benchmark: random actions, state observations; {n} vectorized envs on {r['threads']} threads",
        (
            f"baseline (raw): mujoco.mj_step over the same {n} envs' models, "
            f"same {r['threads']} threads, the same ctrl "
            "the vector env wrote, substeps per env step, same resets"
        ),
        "ratio = vector env physics/s / raw physics/s (1.0 = no wrapper overhead)",
        "",
        f"{'task':<12}{'1 env steps/s':>15}{f'{n} envs steps/s':>18}{'physics/s':>12}"
        f"{'raw physics/s':>15}{'ratio':>8}{'render ms':>11}",
    ]
    for name, t in r["tasks"].items():
        render = "-" if t["render_ms_per_frame_84"] is None else f"{t['render_ms_per_frame_84']:.1f}"
        lines.append(
            f"{name:<12}{t['env_steps_per_s_1']:>15.0f}{t[f'env_steps_per_s_{n}']:>18.0f}{t[f'physics_steps_per_s_{n}']:>12.0f}"
            f"{t[f'raw_physics_steps_per_s_{n}']:>15.0f}{t['ratio_to_raw']:>8.2f}{render:>11}"
        )
    return "\n".join(lines)
