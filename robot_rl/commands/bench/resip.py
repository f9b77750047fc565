"""`robot-rl bench resip`: where `make demo`'s time goes, by phase.

The demo's own settings (robot_rl/conf/demo.yaml) on peg_insert, with the learners' own parts:
- one diffusion BC step (batch 128, the demo's UNet): drawing the window batch, the loss's forward
  pass, backward, AdamW, the EMA update;
- one residual PPO iteration (64 envs x 100 steps): the frozen base's DDIM denoising (BaseChunks),
  the residual's forward pass and sampling, the physics (the vector env's step, on its own
  threads), the rest of the rollout's bookkeeping, GAE, and the PPO update (50 epochs of 4
  minibatches, target-KL early stop). The rollout is timed both ways the learner can plan: a
  fresh plan at each env's reset (the default), the envs' plans staggered as in a real run once
  episodes have ended at different steps, and every env's chunk in one batched call
  (`replan_on_reset: false`, as the reference's shared action queue).
BC and the PPO update run no physics beside them, so each is timed on 1 and on 2 torch threads
(the update on identical copies of the residual, so both do the same epochs); the rollout runs on
1 thread, as the learner runs it. The demos are a few scripted episodes; timing does not depend on
how well the base has learned. Run on an otherwise idle machine: the load average is reported.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf


def _timed(clock: dict, name: str, fn):
    start = time.perf_counter()
    out = fn()
    clock[name] = clock.get(name, 0.0) + time.perf_counter() - start
    return out


def bc_step(policy, sampler, bc_cfg, steps: int, threads: int, rng) -> dict:
    """Seconds per BC step by phase, on `threads` torch threads."""
    from robot_rl.utils.training import EMA

    torch.set_num_threads(threads)
    model = copy.deepcopy(policy).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=bc_cfg.lr, weight_decay=bc_cfg.weight_decay)
    ema = EMA(model, bc_cfg.ema_power, bc_cfg.ema_max_decay)
    clock: dict[str, float] = {}
    for step in range(steps + 1):  # the first step warms up and is not counted
        if step == 1:
            clock.clear()
        batch = _timed(
            clock,
            "sample",
            lambda: {
                k: torch.as_tensor(v)
                for k, v in sampler.sample(bc_cfg.batch_size, rng).items()
                if k != "is_pad"
            },
        )
        loss = _timed(clock, "forward", lambda b=batch: model.loss(b))
        optimizer.zero_grad(set_to_none=True)
        _timed(clock, "backward", loss.backward)
        _timed(clock, "optimizer", optimizer.step)
        _timed(clock, "ema", lambda: ema.update(model))
    return {k: v / steps for k, v in clock.items()}


def residual_iteration(base, vec, cfg, threads_update: tuple[int, ...]) -> dict:
    """Seconds of one residual PPO iteration by phase (the learner's own rollout, on 1 thread, for
    each way of planning; the update, of the config's rollout, on each of `threads_update`), and
    the PPO epochs the update ran."""
    from robot_rl.core.timing import PhaseClock
    from robot_rl.learners.residual_ppo import (
        ReturnStd,
        RolloutBuffers,
        collect_rollout,
        make_policy,
        optimizers,
        ppo_update,
    )
    from robot_rl.policies.residual import BaseChunks

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    obs_dim, action_dim = vec.single_observation_space.shape[0], base.config.action_dim
    policy = make_policy(obs_dim, action_dim, cfg)
    buffers = RolloutBuffers(cfg.rollout_steps, cfg.num_envs, obs_dim, action_dim, "cpu")
    rollouts = {}
    for replan in (not cfg.replan_on_reset, cfg.replan_on_reset):  # the config's last: it feeds the update
        chunks = BaseChunks(base, cfg.num_envs, cfg.base_ddim_steps, cfg.seed)
        if replan:
            # Stagger the plans as they are once episodes have ended at different steps (from the
            # first iterations of a real run on): each step then plans for about N / action_horizon
            # envs, in many small batches, rather than for all N at once every action_horizon steps.
            chunks.index[:] = np.random.default_rng(cfg.seed).integers(0, chunks.queue.shape[1], cfg.num_envs)
        obs, _ = vec.reset(seed=cfg.seed)
        clock = PhaseClock()
        # replanning at each reset runs episodes on across rollouts (a reset would align the plans)
        scheme = dataclasses.replace(
            cfg, replan_on_reset=replan, reset_every_iteration=cfg.reset_every_iteration and not replan
        )
        state, returns = torch.as_tensor(obs), ReturnStd(cfg.num_envs, cfg.gamma, cfg.reward_clip)
        _, rollout = collect_rollout(vec, base, policy, chunks, returns, state, buffers, scheme, clock)
        rollouts["replan on reset" if replan else "plans together"] = clock.seconds
    batch = rollout.batch()
    updates = {}
    for threads in threads_update:
        torch.set_num_threads(threads)
        torch.manual_seed(cfg.seed)  # the same minibatch order: the same epochs on every thread count
        copy_ = copy.deepcopy(policy)
        start = time.perf_counter()
        stats = ppo_update(copy_, *optimizers(copy_, cfg), cfg, *batch)
        updates[threads] = {"seconds": time.perf_counter() - start, "epochs": stats["epochs"]}
    torch.set_num_threads(1)
    return {"rollout": rollouts, "update": updates}


def run(quick: bool = False) -> dict:
    from robot_rl.commands.collect import collect
    from robot_rl.config import compose
    from robot_rl.datasets import EpisodeStore, WindowSampler
    from robot_rl.factory import env_source
    from robot_rl.learners.diffusion_bc import DiffusionBCConfig
    from robot_rl.learners.residual_ppo import ResidualPPOConfig
    from robot_rl.policies.diffusion import DiffusionPolicy

    tmp = Path(tempfile.mkdtemp(prefix="robot_rl_bench_resip_"))
    episodes, bc_steps = (2, 2) if quick else (10, 20)
    demo = compose("demo", [f"out={tmp / 'demo.zarr'}", f"episodes={episodes}"])
    bc_cfg = DiffusionBCConfig(
        **{k: v for k, v in OmegaConf.to_container(demo.bc, resolve=True).items() if k != "name"}
    )
    res = OmegaConf.to_container(demo.residual, resolve=True)
    res = {k: v for k, v in res.items() if k in ResidualPPOConfig.__dataclass_fields__}
    if quick:
        res.update(num_envs=4, rollout_steps=8, update_epochs=2)
    cfg = ResidualPPOConfig(**res)
    try:
        collect(OmegaConf.merge(demo, {"env": demo.get("collect_env") or {}}), replace=True)
        store = EpisodeStore.open(tmp / "demo.zarr")
        policy = DiffusionPolicy.from_store(store, **bc_cfg.policy)
        c = policy.config
        keys = [k for k in store.keys if k == "obs/state" or k in c.image_keys]
        sampler = WindowSampler(store, c.pred_horizon, c.obs_horizon, c.action_horizon, obs_keys=keys)
        rng = np.random.default_rng(0)
        bc = {threads: bc_step(policy, sampler, bc_cfg, bc_steps, threads, rng) for threads in (1, 2)}
        base = copy.deepcopy(policy).eval().requires_grad_(False)
        vec = env_source(demo.env, "none", 2).make_vec(cfg.num_envs)
        try:
            residual = residual_iteration(base, vec, cfg, (1, 2))
        finally:
            vec.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "settings": {
            "bc_batch": bc_cfg.batch_size,
            "bc_steps_in_demo": bc_cfg.steps,
            "down_dims": list(c.down_dims),
            "num_envs": cfg.num_envs,
            "rollout_steps": cfg.rollout_steps,
            "update_epochs": cfg.update_epochs,
            "minibatches": cfg.num_minibatches,
            "ddim_steps": cfg.base_ddim_steps,
            "iterations_in_demo": cfg.iterations,
        },
        "bc_step_s": {str(k): v for k, v in bc.items()},
        "residual_rollout_s": residual["rollout"],
        "residual_update": {str(k): v for k, v in residual["update"].items()},
        "load_average": os.getloadavg()[0],
        "cores": os.cpu_count(),
    }


def format_table(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"ResiP demo, by phase (load average {r['load_average']:.1f} on {r['cores']} cores)",
        "",
        f"diffusion BC step (batch {s['bc_batch']}, UNet {s['down_dims']})   1 thread    2 threads",
    ]
    one, two = r["bc_step_s"]["1"], r["bc_step_s"]["2"]
    for phase in one:
        lines.append(f"  {phase:<38}{one[phase] * 1e3:>8.1f} ms{two[phase] * 1e3:>10.1f} ms")
    t1, t2 = sum(one.values()), sum(two.values())
    lines.append(f"  {'step':<38}{t1 * 1e3:>8.1f} ms{t2 * 1e3:>10.1f} ms")
    lines.append(
        f"  {s['bc_steps_in_demo']} steps: {s['bc_steps_in_demo'] * t1 / 60:.1f} min on 1 thread, "
        f"{s['bc_steps_in_demo'] * t2 / 60:.1f} on 2"
    )
    rollouts, update = r["residual_rollout_s"], r["residual_update"]
    modes = list(rollouts)  # the config's own way of planning last: the iteration lines use it
    lines += [
        "",
        f"residual PPO iteration ({s['num_envs']} envs x {s['rollout_steps']} steps, DDIM {s['ddim_steps']}, "
        f"{s['update_epochs']} epochs x {s['minibatches']} minibatches)",
        f"  {'rollout, 1 thread':<38}" + "".join(f"{m:>18}" for m in modes),
    ]
    for phase in rollouts[modes[-1]]:
        lines.append(f"  {phase:<38}" + "".join(f"{rollouts[m].get(phase, 0.0):>16.2f} s" for m in modes))
    lines.append(f"  {'rollout':<38}" + "".join(f"{sum(rollouts[m].values()):>16.2f} s" for m in modes))
    for threads, u in update.items():
        label = f"PPO update, {threads} thread(s), {u['epochs']} epochs"
        lines.append(f"  {label:<38}{u['seconds']:>8.2f} s")
    total_rollout = sum(rollouts[modes[-1]].values())
    for threads, u in update.items():
        it = total_rollout + u["seconds"]
        lines.append(
            f"  iteration ({modes[-1]}) with the update on {threads} thread(s): {it:.2f} s; "
            f"{s['iterations_in_demo']} iterations {s['iterations_in_demo'] * it / 60:.1f} min"
        )
    return "\n".join(lines)
