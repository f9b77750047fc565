"""Diffusion behaviour cloning: train a DiffusionPolicy on windows of an EpisodeStore.

As Diffusion Policy trains it: epsilon prediction over 100 DDPM steps, AdamW with a cosine
schedule after a linear warm-up, an EMA of the weights (the EMA is what gets saved and acts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robot_rl.datasets import EpisodeStore, WindowSampler
from robot_rl.datasets.sampler import check_windows_per_chunk
from robot_rl.errors import ConfigError
from robot_rl.policies.diffusion import DiffusionPolicy
from robot_rl.utils.checkpoints import LearnerCheckpoints, RngLedger
from robot_rl.utils.device import Prefetcher, autocast, maybe_compile, resolve_device
from robot_rl.utils.training import EMA, RunLog, seed_everything


@dataclass
class DiffusionBCConfig:
    steps: int = 4000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-6
    warmup_steps: int = 200
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    seed: int = 0
    log_every: int = 50
    device: str = "auto"  # auto: CUDA when present (robot_rl.utils.device)
    amp: bool = True  # bfloat16 autocast of the denoiser on CUDA (the loss is an MSE on noise)
    compile: bool = False  # torch.compile the loss
    checkpoint_every: int = (
        0  # steps between resumable checkpoints in RUN/checkpoints (0: none; Ctrl-C writes one)
    )
    resume: str | None = None  # a run folder: continue it from its latest checkpoint, to the same end
    # torch threads: BC runs no physics beside it, so on an idle machine it may use every core (on a
    # busy one, OpenMP threads fighting other processes for a core make 2 threads slower than 1)
    threads: int = 1
    cache_mb: float = 1024  # decoded chunks the window sampler keeps (a dataset this size decodes once)
    # windows drawn that many to a chunk, each still uniform over the dataset: fewer decodes per
    # batch for a dataset larger than the cache, less varied batches; auto: 1 while the data fit
    # the cache, 8 when not (robot_rl/datasets/sampler.py)
    windows_per_chunk: int | str = "auto"
    policy: dict = field(
        default_factory=dict
    )  # DiffusionConfig overrides (horizons, down_dims, image_keys...)

    def __post_init__(self):
        if self.cache_mb < 0 or self.threads < 1:
            raise ConfigError(
                f"cache_mb must be 0 or more and threads at least 1, got {self.cache_mb} and {self.threads}"
            )
        try:
            check_windows_per_chunk(self.windows_per_chunk)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def train_diffusion_bc(store_path, out_dir, cfg: DiffusionBCConfig, progress: bool = True) -> dict:
    checkpoints = LearnerCheckpoints(out_dir, "diffusion_bc", cfg)  # a bad resume= is refused first
    rng = seed_everything(cfg.seed, cfg.threads)
    store = EpisodeStore.open(store_path)
    device = resolve_device(cfg.device)
    policy = DiffusionPolicy.from_store(store, **dict(cfg.policy)).to(device)
    c = policy.config
    keys = [k for k in store.keys if k == "obs/state" or k in c.image_keys]
    sampler = WindowSampler(
        store,
        horizon=c.pred_horizon,
        n_obs=c.obs_horizon,
        n_action=c.action_horizon,
        obs_keys=keys,
        cache_mb=cfg.cache_mb,
        windows_per_chunk=cfg.windows_per_chunk,
    )
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + np.cos(np.pi * min(s, cfg.steps) / cfg.steps))
        ),
    )
    ema = EMA(policy, cfg.ema_power, cfg.ema_max_decay)
    log = RunLog(out_dir, f"diffusion BC on {Path(store_path).name} ({device})")
    running = None  # the loss's running mean, kept on the device: read back only when logged
    if (state := checkpoints.restore(log, rng)) is not None:
        policy.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        ema.model.load_state_dict(state["ema"])
        ema.step, running = state["ema_step"], state["running"]
        running = None if running is None else torch.tensor(float(running), device=device)
    loss_of = maybe_compile(policy.loss, cfg.compile)
    ledger = RngLedger(
        rng,
        lambda: {
            k: torch.as_tensor(v) for k, v in sampler.sample(cfg.batch_size, rng).items() if k != "is_pad"
        },
    )

    snapshot = checkpoints.snapshot(
        lambda: {
            "model": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "ema": ema.model.state_dict(),
            "ema_step": ema.step,
            "running": None if running is None else float(running),
        },
        log,
        ledger=ledger,
    )

    bar = checkpoints.bar(cfg.steps, "diffusion BC", "step", progress)
    policy.train()
    with checkpoints, Prefetcher(ledger.draw, device) as batches:  # closed whatever ends the loop
        for step in bar:
            batch = ledger.take(batches)
            with autocast(device, cfg.amp):
                loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            ema.update(policy)
            loss = loss.detach().float()
            running = loss.clone() if running is None else running.lerp_(loss, 0.02)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                log.log(step, loss=float(running), lr=schedule.get_last_lr()[0])
                bar.set_postfix(loss=f"{float(running):.4f}")
            checkpoints.step_done(step + 1, cfg.steps, snapshot)
    checkpoint = ema.model.save(Path(out_dir) / "checkpoint")  # CPU copies: it loads anywhere
    params = sum(p.numel() for p in policy.parameters())
    return log.close(
        {
            "learner": "diffusion_bc",
            "checkpoint": str(checkpoint),
            "final_loss": None if running is None else float(running),
            "steps": cfg.steps,
            "parameters": params,
            "episodes": store.n_episodes,
        },
        curves=("loss", "lr"),
    )
