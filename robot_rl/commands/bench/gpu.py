"""`robot-rl bench gpu`: every learner's update on CUDA, timed against the same code on the CPU,
with its losses checked and its checkpoint reloaded on the CPU.

Device: CUDA when torch sees one, else the CPU ("cpu mode": the same checks with the CPU as both
sides, one measurement serving as both, so every speed-up is 1.0; the JSON's `device` says which).
Each case builds the learner's own networks, optimizers and update (its code, not a copy where the
learner exposes it: `SACAgent.update`, `IQLAgent.update`, `ICVFAgent.update`, the Learner of
HIL-SERL, residual PPO's `ppo_update`; the diffusion BC, inverse-dynamics and reward-model steps are
written out as their training loops write them, per-step `.item()` included) and records:

- device updates/s and CPU updates/s (the CPU measured briefly), and the speed-up;
- whether the losses (and every parameter) are finite after the steps taken;
- a checkpoint round trip: the trained model saved as the learner saves it, loaded on the CPU (as
  every checkpoint loads), and its deterministic actions or values on a fixed input compared with
  the device model's (max abs difference; matched within 1e-3). TF32 is off during the comparison
  (cuDNN convolutions default to it), so the difference is float32's;
- on CUDA, the host-device syncs seen in one update (torch's sync debug mode), beside what the
  learner's code says it syncs on (`.item()` of its logged losses, the actions sent to the envs).

Batches are already on the device where the learner's Prefetcher puts them there (diffusion BC,
IQL, ICVF) or keeps its data there (IDM); the SAC learners take CPU batches as their sampler gives
them, the image learner samples its own buffers, the reward model indexes stored values on the
CPU, as their training loops do. The residual PPO rollout is the policy side of one env step for
64 envs (the envs, which step on the CPU, are `bench sim`'s). Diffusion BC runs fp32, bf16
autocast (CUDA only) and bf16 + `compile=true` (CUDA only, not in --quick; run last, as the
compilation takes tens of seconds). A global time budget skips whatever would not fit, with a note.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robot_rl.utils.device import autocast, maybe_compile, resolve_device, to_device

ATOL = RTOL = 1e-3  # the checkpoint round trip: device model against its checkpoint loaded on the CPU
LATENCY_TARGET_MS = 10.0  # ResiP-size UNet, batch 1, DDIM 10, on an H100
PEG_STATE, PEG_ACTION = 32, 5  # peg_insert, the demo's env
RESIP_UNET = {"down_dims": (256, 512, 1024), "diffusion_step_embed_dim": 256}
QUICK_UNETS = {  # --quick: tiny stand-ins for the two sizes
    "resip": {"down_dims": (32, 64, 128), "diffusion_step_embed_dim": 32},
    "demo": {"down_dims": (16, 32, 64), "diffusion_step_embed_dim": 32},
}
LEARNERS = {  # robot_rl/learners/<module> -> its name in the table's notes
    "diffusion_bc": "diffusion BC",
    "residual_ppo": "residual PPO",
    "hil_serl": "SAC (HIL-SERL)",
    "fastrlap": "SAC (FastRLAP)",
    "iql": "IQL",
    "icvf": "ICVF",
    "inverse_dynamics": "inverse dynamics",
    "reward_model": "preference reward model",
}
VARIANT_LABELS = {"fp32": "fp32", "bf16": "bf16 autocast", "compile": "bf16 autocast + compile"}


@dataclass
class Settings:
    quick: bool
    seconds: float  # device timing per variant
    cpu_seconds: float  # the CPU reference
    min_steps: int
    cpu_min_steps: int
    warmup: int
    budget_s: float  # the whole run; cases that would not fit are skipped
    envs: int  # residual PPO rollout and update
    rollout_steps: int
    ppo_epochs: int  # epochs of minibatch updates per `ppo_update` call
    diffusion_batch: dict
    sac_batch: int
    image_batch: int
    iql_batch: int
    idm_batch: int
    reward_pairs: int
    reward_image: int
    latency_repeats: int
    cpu_latency_repeats: int
    unets: dict = field(default_factory=dict)


def _settings(quick: bool) -> Settings:
    if quick:
        return Settings(
            quick=True,
            seconds=0.1,
            cpu_seconds=0.1,
            min_steps=2,
            cpu_min_steps=1,
            warmup=1,
            budget_s=600.0,  # --quick runs every case: it is the test suite's smoke test
            envs=8,
            rollout_steps=16,
            ppo_epochs=1,
            diffusion_batch={"resip": 16, "demo": 16},
            sac_batch=32,
            image_batch=8,
            iql_batch=32,
            idm_batch=32,
            reward_pairs=8,
            reward_image=48,
            latency_repeats=2,
            cpu_latency_repeats=1,
            unets=QUICK_UNETS,
        )
    demo_unet, demo_batch = _demo_size()
    return Settings(
        quick=False,
        seconds=3.0,
        cpu_seconds=2.0,
        min_steps=5,
        cpu_min_steps=2,
        warmup=2,
        budget_s=400.0,  # a device run of about 8 minutes, imports and nvidia-smi included
        envs=64,
        rollout_steps=100,
        ppo_epochs=10,
        diffusion_batch={"resip": 256, "demo": demo_batch},
        sac_batch=256,
        image_batch=256,
        iql_batch=256,
        idm_batch=256,
        reward_pairs=64,
        reward_image=84,
        latency_repeats=30,
        cpu_latency_repeats=3,
        unets={"resip": RESIP_UNET, "demo": demo_unet},
    )


def _demo_size() -> tuple[dict, int]:
    """The UNet and batch that `robot-rl demo` trains (conf/learner/diffusion_bc.yaml)."""
    import yaml

    from robot_rl.config import CONF_DIR

    conf = yaml.safe_load((Path(CONF_DIR) / "learner" / "diffusion_bc.yaml").read_text())
    policy = conf["policy"]
    unet = {
        "down_dims": tuple(policy["down_dims"]),
        "diffusion_step_embed_dim": int(policy["diffusion_step_embed_dim"]),
    }
    return unet, int(conf["batch_size"])


# --- measuring --------------------------------------------------------------------------------


def _is_cuda(device: torch.device) -> bool:
    """Whether the bf16 and compiled variants run (CUDA only)."""
    return device.type == "cuda"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(trainer, device: torch.device, seconds: float, min_steps: int) -> tuple[float, int]:
    """(updates/s, updates) over at least `min_steps` calls and `seconds`; the device's queue is
    drained before and after, so the time covers the work, not its launch."""
    _sync(device)
    start = time.perf_counter()
    updates = calls = 0
    while calls < min_steps or time.perf_counter() - start < seconds:
        updates += trainer.step()
        calls += 1
    _sync(device)
    return updates / (time.perf_counter() - start), updates


def _syncs_per_update(trainer, device: torch.device) -> tuple[float | None, int]:
    """(host-device syncs per update, updates) in one more call, counted by torch's sync debug
    mode (CUDA only)."""
    if device.type != "cuda":
        return None, 0
    _sync(device)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            updates = trainer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in seen) / max(updates, 1), updates


def _all_finite(values: dict, modules) -> bool:
    if not all(math.isfinite(float(v)) for v in values.values()):
        return False
    checks = [torch.isfinite(p).all() for m in modules for p in m.parameters()]
    return bool(torch.stack(checks).all()) if checks else True


@contextlib.contextmanager
def _exact_float32():
    """TF32 off (cuDNN's convolutions use it by default): a comparison with the CPU in float32."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _roundtrip(trainer, tmp: Path) -> dict:
    with _exact_float32(), torch.no_grad():
        on_device, loaded, compared = trainer.roundtrip(tmp)
    on_device, loaded = on_device.detach().float().cpu(), loaded.detach().float().cpu()
    finite = bool(torch.isfinite(on_device).all() and torch.isfinite(loaded).all())
    same_shape = on_device.shape == loaded.shape
    diff = float((on_device - loaded).abs().max()) if same_shape and on_device.numel() else float("nan")
    match = same_shape and finite and bool(torch.allclose(on_device, loaded, rtol=RTOL, atol=ATOL))
    return {"compared": compared, "max_abs_diff": diff, "match": match, "atol": ATOL, "rtol": RTOL}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


# --- the learners -------------------------------------------------------------------------------
# Each trainer: step() -> updates done; losses() -> {name: float} of the last update; modules();
# roundtrip(tmp) -> (device output, output of the checkpoint loaded on the CPU, what was compared).


class _DiffusionBC:
    """train_diffusion_bc's step: loss (autocast), AdamW, the LR schedule, the EMA, the running loss."""

    def __init__(self, device: torch.device, unet: dict, batch: int, variant: str):
        from robot_rl.learners.diffusion_bc import DiffusionBCConfig
        from robot_rl.policies.diffusion import DiffusionConfig, DiffusionPolicy
        from robot_rl.utils.training import EMA

        cfg = DiffusionBCConfig()
        self.device, self.amp = device, variant != "fp32"
        config = DiffusionConfig(
            PEG_STATE, PEG_ACTION, obs_horizon=1, pred_horizon=16, action_horizon=8, **unet
        )
        s, a = np.ones(PEG_STATE), np.ones(PEG_ACTION)
        self.policy = DiffusionPolicy(config, -s, s, -a, a).to(device).train()
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda k: (
                min(1.0, (k + 1) / cfg.warmup_steps)
                * 0.5
                * (1 + np.cos(np.pi * min(k, cfg.steps) / cfg.steps))
            ),
        )
        self.ema = EMA(self.policy, cfg.ema_power, cfg.ema_max_decay)
        self.loss_of = maybe_compile(self.policy.loss, variant == "compile")
        g = torch.Generator().manual_seed(0)
        self.batches = [
            to_device(
                {
                    "obs/state": torch.rand(batch, 1, PEG_STATE, generator=g) * 2 - 1,
                    "action": torch.rand(batch, 16, PEG_ACTION, generator=g) * 2 - 1,
                },
                device,
            )
            for _ in range(2)
        ]
        self.n, self.running, self.loss = 0, None, None

    def step(self) -> int:
        batch = self.batches[self.n % len(self.batches)]
        with autocast(self.device, self.amp):
            loss = self.loss_of(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.schedule.step()
        self.ema.update(self.policy)
        self.running = loss.item() if self.running is None else 0.98 * self.running + 0.02 * loss.item()
        self.loss, self.n = loss, self.n + 1
        return 1

    def losses(self) -> dict:
        return {"loss": float(self.loss.detach()), "running_loss": self.running}

    def modules(self) -> list:
        return [self.policy, self.ema.model]

    def roundtrip(self, tmp: Path):
        from robot_rl.policies.diffusion import DiffusionPolicy

        loaded = DiffusionPolicy.load(self.ema.model.save(tmp / "diffusion_bc"))
        obs = torch.rand(4, 1, PEG_STATE, generator=torch.Generator().manual_seed(1)) * 2 - 1

        def chunk(policy):
            state = {"obs/state": obs.to(_device_of(policy))}
            return policy.predict_normalized(state, 10, torch.Generator().manual_seed(2)).cpu()

        return chunk(self.ema.model), chunk(loaded), "DDIM-10 chunks of the saved EMA weights, 4 observations"


class _PPOUpdate:
    """residual_ppo.ppo_update over a rollout's batch: epochs of minibatch updates (ppo_losses, both
    AdamW steps, gradient clipping), the KL read once per epoch; an update is one minibatch."""

    def __init__(self, device: torch.device, envs: int, rollout_steps: int, epochs: int):
        from robot_rl.learners.residual_ppo import ResidualPPOConfig, make_policy, optimizers

        # target_kl: no early stop, so that every call does the same work
        self.cfg = cfg = ResidualPPOConfig(
            num_envs=envs, rollout_steps=rollout_steps, update_epochs=epochs, target_kl=float("inf")
        )
        self.policy = make_policy(PEG_STATE, PEG_ACTION, cfg, device)
        self.actor_opt, self.critic_opt = optimizers(self.policy, cfg)
        n, g = envs * rollout_steps, torch.Generator().manual_seed(0)
        self.data = to_device(
            {
                "x": torch.randn(n, PEG_STATE + PEG_ACTION, generator=g),
                "actions": torch.randn(n, PEG_ACTION, generator=g) * 0.5,
                "advantages": torch.randn(n, generator=g),
                "returns": torch.randn(n, generator=g),
            },
            device,
        )
        with torch.no_grad():
            self.data["old_logp"] = self.policy.dist(self.data["x"]).log_prob(self.data["actions"]).sum(-1)
        self.stats: dict = {}

    def step(self) -> int:
        from robot_rl.learners.residual_ppo import ppo_update

        d = self.data
        self.stats = ppo_update(
            self.policy,
            self.actor_opt,
            self.critic_opt,
            self.cfg,
            d["x"],
            d["actions"],
            d["old_logp"],
            d["advantages"],
            d["returns"],
        )
        return self.stats["epochs"] * self.cfg.num_minibatches

    def losses(self) -> dict:
        return {k: self.stats[k] for k in ("policy_loss", "value_loss", "approx_kl")}

    def modules(self) -> list:
        return [self.policy]

    def roundtrip(self, tmp: Path):
        from robot_rl.policies.residual import ResidualPolicy

        loaded, _ = ResidualPolicy.load(self.policy.save(tmp / "residual", "none (benchmark)"))
        x = torch.randn(16, PEG_STATE + PEG_ACTION, generator=torch.Generator().manual_seed(1))

        def out(policy):
            policy.eval()
            x_ = x.to(_device_of(policy))
            return torch.cat([policy.dist(x_).mean, policy.value(x_).reshape(len(x_), -1)], -1).cpu()

        return out(self.policy), out(loaded), "residual mean actions and values, 16 inputs"


class _PPORollout:
    """The policy side of residual PPO's rollout for `envs` envs: the frozen base's chunks (DDIM 4,
    all envs replanning together every action_horizon steps), the residual's sample, log-prob and
    value into the device buffers, the combined action back to the CPU for the envs, and the envs'
    observations, rewards and dones onto the device. One call is one chunk of steps."""

    def __init__(self, device: torch.device, unet: dict, envs: int):
        from robot_rl.learners.residual_ppo import ResidualPPOConfig, RolloutBuffers, make_policy
        from robot_rl.policies.diffusion import DiffusionConfig, DiffusionPolicy
        from robot_rl.policies.residual import BaseChunks

        cfg = ResidualPPOConfig(num_envs=envs)
        self.device, self.cfg = device, cfg
        config = DiffusionConfig(PEG_STATE, PEG_ACTION, obs_horizon=1, **unet)
        s, a = np.ones(PEG_STATE), np.ones(PEG_ACTION)
        self.base = DiffusionPolicy(config, -s, s, -a, a).to(device).requires_grad_(False)
        self.policy = make_policy(PEG_STATE, PEG_ACTION, cfg, device)
        with torch.no_grad():  # a trained residual is not zero (its last layer starts at zero)
            self.policy.actor[-1].weight.normal_(0.0, 0.01)
        self.chunks = BaseChunks(self.base, envs, cfg.base_ddim_steps, cfg.seed)
        rng = np.random.default_rng(0)
        self.obs = rng.uniform(-1, 1, (envs, PEG_STATE)).astype(np.float32)
        self.reward, self.done = np.zeros(envs, np.float32), np.zeros(envs, bool)
        self.buf = RolloutBuffers(cfg.rollout_steps, envs, PEG_STATE, PEG_ACTION, device)
        self.t, self.action = 0, None

    def step(self) -> int:
        from robot_rl.policies.residual import combine, residual_input

        k = self.base.config.action_horizon
        with torch.no_grad():
            for _ in range(k):
                t = self.t % self.cfg.rollout_steps
                state = torch.as_tensor(self.obs, device=self.device)
                base_action = self.chunks.next(state)
                x = residual_input(self.base, state, base_action)
                dist = self.policy.dist(x)
                residual = dist.sample()
                b = self.buf
                b.x[t], b.actions[t] = x, residual
                b.logp[t], b.values[t] = dist.log_prob(residual).sum(-1), self.policy.value(x)
                action = combine(self.base, base_action, residual, self.cfg.residual_scale)
                self.action = action.cpu().numpy()  # to the envs, which step on the CPU
                b.rewards[t] = torch.as_tensor(self.reward)
                b.dones[t] = torch.as_tensor(self.done, dtype=torch.float32, device=self.device)
                self.t += 1
        return k

    def losses(self) -> dict:
        return {
            "action_abs_max": float(np.abs(self.action).max()),
            "log_prob_mean": float(self.buf.logp.mean()),
        }

    def modules(self) -> list:
        return [self.base, self.policy]

    def roundtrip(self, tmp: Path):
        from robot_rl.policies.diffusion import DiffusionPolicy
        from robot_rl.policies.residual import BaseChunks, ResidualPolicy, combine, residual_input

        base_path = self.base.save(tmp / "base")
        loaded_base = DiffusionPolicy.load(base_path)
        loaded, _ = ResidualPolicy.load(self.policy.save(tmp / "residual", base_path))
        states = torch.rand(4, PEG_STATE, generator=torch.Generator().manual_seed(1)) * 2 - 1

        def act(base, policy):
            policy.eval()
            s = states.to(_device_of(base))
            base_action = BaseChunks(base, len(s), self.cfg.base_ddim_steps, seed=0).next(s)
            mean = policy.dist(residual_input(base, s, base_action)).mean
            return combine(base, base_action, mean, self.cfg.residual_scale).cpu()

        return (
            act(self.base, self.policy),
            act(loaded_base, loaded),
            "env actions (base DDIM-4 chunk + residual mean), 4 states",
        )


def _sac_probe(agent, obs: dict) -> torch.Tensor:
    """Deterministic actions and every critic's Q of them (acting inputs on the CPU, as agents take them)."""
    agent.eval()
    prev = torch.zeros(len(obs["state"]), agent.cfg.action_dim)
    action = agent.act(obs, deterministic=True, prev_action=prev)
    moved = agent.on_device({"obs": obs, "prev": prev, "action": action})
    features = agent.encoder(agent.encoder.maps(moved["obs"]))
    q = agent.critic(agent.inputs(features, moved["prev"]), agent._arm(moved["action"]))
    return torch.cat([action.flatten(), q.cpu().flatten()])


class _SAC:
    """SACAgent.update: cta_ratio critic updates and one actor and temperature update, on CPU
    batches as HIL-SERL's sampler hands them (the update moves them)."""

    def __init__(self, device: torch.device, cfg, batch: int):
        from robot_rl.commands.bench import sac as sac_bench
        from robot_rl.policies.sac import SACAgent

        self.agent = SACAgent(cfg).to(device)
        self.batches = sac_bench._batches(cfg.cta_ratio, batch=batch)
        self.info: dict = {}

    def step(self) -> int:
        self.info = self.agent.update(self.batches)
        return 1

    def losses(self) -> dict:
        return {k: self.info[k] for k in ("critic_loss", "actor_loss", "q", "alpha")}

    def modules(self) -> list:
        return [self.agent]

    def roundtrip(self, tmp: Path):
        from robot_rl.policies.sac import SACAgent

        loaded = SACAgent.load(self.agent.save(tmp / "sac"))
        obs = {"state": torch.randn(8, self.agent.cfg.state_dim, generator=torch.Generator().manual_seed(1))}
        return _sac_probe(self.agent, obs), _sac_probe(loaded, obs), "deterministic actions and Q, 8 states"


class _ImageSAC(_SAC):
    """HIL-SERL's Learner.step from two 84 px cameras: batches sampled from its buffers of cached
    feature maps, moved to the device by the update."""

    def __init__(self, device: torch.device, batch: int):
        from robot_rl.commands.bench import sac as sac_bench

        self.learner = sac_bench.image_learner(True, batch, device)
        self.agent, self.info = self.learner.agent, {}

    def step(self) -> int:
        self.info = self.learner.step()
        return 1

    def roundtrip(self, tmp: Path):
        from robot_rl.commands.bench.sac import CAMERAS, IMAGE_SIZE, IMAGE_STATE_DIM
        from robot_rl.policies.sac import SACAgent

        loaded = SACAgent.load(self.agent.save(tmp / "sac_image"))
        g = torch.Generator().manual_seed(1)
        obs = {
            "state": torch.randn(2, IMAGE_STATE_DIM, generator=g),
            **{k: torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) for k in CAMERAS},
        }
        return (
            _sac_probe(self.agent, obs),
            _sac_probe(loaded, obs),
            "deterministic actions and Q, 2 frame pairs",
        )


def _make_learner_check(device: torch.device) -> str:
    """HIL-SERL's own builder (make_learner: the agent on its device, then the buffers) for the
    image agent: 'ok', or the error it raised."""
    from robot_rl.commands.bench.sac import ACTION_DIM, CAMERAS, image_spaces
    from robot_rl.learners.hil_serl import HILSERLConfig, make_learner

    cfg = HILSERLConfig(
        device=str(device), sac={"image_keys": list(CAMERAS)}, buffer_capacity=16, batch_size=8, human="none"
    )
    try:
        make_learner(image_spaces(), ACTION_DIM, cfg)
    except Exception as exc:  # a finding to report, not a reason to stop the run
        return _first_line(exc)
    return "ok"


def _state_batch(batch: int, seed: int = 0) -> dict:
    """A batch of peg_insert-sized transitions (32-D state, 5-D action), as `bench iql` feeds."""
    from robot_rl.commands.bench.iql import _batch

    return _batch(seed, batch)


class _IQL:
    """IQLAgent.update on a batch already on the device (the learner's Prefetcher)."""

    def __init__(self, device: torch.device, batch: int):
        from robot_rl.policies.iql import IQLAgent, IQLConfig

        self.agent = IQLAgent(IQLConfig(state_dim=PEG_STATE, action_dim=PEG_ACTION)).to(device)
        self.batch = to_device(_state_batch(batch), device)
        self.info: dict = {}

    def step(self) -> int:
        self.info = self.agent.update(self.batch)
        return 1

    def losses(self) -> dict:
        return {k: self.info[k] for k in ("v_loss", "q_loss", "actor_loss")}

    def modules(self) -> list:
        return [self.agent]

    def roundtrip(self, tmp: Path):
        from robot_rl.policies.iql import IQLAgent

        loaded = IQLAgent.load(self.agent.save(tmp / "iql"))
        obs = {"state": torch.randn(8, PEG_STATE, generator=torch.Generator().manual_seed(1))}

        def out(agent):
            agent.eval()
            v = agent.v(agent.features(agent.on_device(obs))).cpu()
            return torch.cat([agent.act(obs).flatten(), v.flatten()])

        return out(self.agent), out(loaded), "deterministic actions and V, 8 states"


class _ICVF:
    """ICVFAgent.update on camera batches (32 px, batch 64, as `robot-rl vptr`) on the device."""

    def __init__(self, device: torch.device, batches: int):
        from robot_rl.commands.bench import icvf as icvf_bench
        from robot_rl.learners.icvf import ICVFAgent, ICVFConfig

        self.size = icvf_bench.SIZE
        self.agent = ICVFAgent(ICVFConfig(image_keys=("image/front",), image_size=self.size, lr=3e-4)).to(
            device
        )
        self.batches = [to_device(b, device) for b in icvf_bench._batches(batches, once=True)]
        self.n, self.info = 0, {}

    def step(self) -> int:
        self.info = self.agent.update(self.batches[self.n % len(self.batches)])
        self.n += 1
        return 1

    def losses(self) -> dict:
        return {k: self.info[k] for k in ("loss", "v_mean")}

    def modules(self) -> list:
        return [self.agent]

    def roundtrip(self, tmp: Path):
        from robot_rl.learners.icvf import ICVFAgent

        loaded = ICVFAgent.load(self.agent.save(tmp / "icvf"))
        g = torch.Generator().manual_seed(1)
        obs, goal = ({"image/front": torch.rand(4, 3, self.size, self.size, generator=g)} for _ in range(2))

        def out(agent):
            agent.eval()
            dev = agent.device
            return agent.values(to_device(obs, dev), to_device(goal, dev)).cpu()

        return out(self.agent), out(loaded), "V(s, g) of 4 frame pairs"


class _IDM:
    """train_inverse_dynamics' step: the NLL of a batch indexed from windows kept on the device."""

    def __init__(self, device: torch.device, batch: int):
        from robot_rl.learners.inverse_dynamics import IDMConfig, IDMTrainConfig, InverseDynamics

        cfg = IDMTrainConfig()
        self.model = InverseDynamics(IDMConfig(PEG_STATE, PEG_ACTION, cfg.hidden, cfg.dropout)).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        g, n = torch.Generator().manual_seed(0), 16 * batch
        self.windows = torch.randn(n, 3, PEG_STATE, generator=g).to(device)
        self.actions = (torch.rand(n, PEG_ACTION, generator=g) * 2 - 1).to(device)
        self.rng, self.batch, self.loss = np.random.default_rng(0), batch, None

    def step(self) -> int:
        index = self.rng.integers(0, len(self.windows), self.batch)
        self.model.train()
        loss = self.model.nll(self.windows[index], self.actions[index])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.model.updates += 1
        self.loss = loss
        return 1

    def losses(self) -> dict:
        return {"nll": float(self.loss.detach())}

    def modules(self) -> list:
        return [self.model]

    def roundtrip(self, tmp: Path):
        from robot_rl.learners.inverse_dynamics import InverseDynamics

        loaded = InverseDynamics.load(self.model.save(tmp / "idm"))
        windows = torch.randn(8, 3, PEG_STATE, generator=torch.Generator().manual_seed(1))

        def out(model):
            model.eval()
            return torch.cat(model(windows.to(_device_of(model))), -1).cpu()

        return out(self.model), out(loaded), "action mean and log-std, 8 windows"


SEGMENT = 1  # conf/label.yaml's default: one frame a side


class _RewardModel:
    """train_reward_model's step: every ensemble member's Bradley-Terry loss on its own batch of
    pairs (stored values indexed on the CPU, prepared onto the device), one Adam step, loss.item()."""

    def __init__(self, device: torch.device, pairs: int, image: int | None):
        from robot_rl.learners.reward_model import (
            PreferenceRewardModel,
            RewardModelConfig,
            RewardModelTrainConfig,
        )

        cfg = RewardModelTrainConfig()
        rng = np.random.default_rng(0)
        steps = 16 * pairs + SEGMENT
        if image:
            self.values = rng.integers(0, 256, (steps, image, image, 3), dtype=np.uint8)
            config = RewardModelConfig("obs/image/front", (image, image, 3), cfg.ensemble, cfg.hidden)
        else:
            self.values = rng.standard_normal((steps, PEG_STATE)).astype(np.float32)
            zeros, ones = (0.0,) * PEG_STATE, (1.0,) * PEG_STATE
            config = RewardModelConfig("obs/state", (PEG_STATE,), cfg.ensemble, cfg.hidden, zeros, ones)
        self.model = PreferenceRewardModel(config).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.pairs = rng.integers(0, steps - SEGMENT + 1, (8 * pairs, 2))
        self.labels = torch.as_tensor(rng.integers(0, 2, len(self.pairs))).to(device)
        self.member_rngs = [np.random.default_rng(m) for m in range(cfg.ensemble)]
        self.batch, self.loss = pairs, None

    def _sums(self, index: np.ndarray, member: int):
        steps = self.pairs[index][:, :, None] + np.arange(SEGMENT)  # (B, 2, segment)
        r = self.model.members[member](self.model.prepare(self.values[steps.reshape(-1)]))
        r = r.reshape(len(index), 2, SEGMENT).sum(-1)
        return r[:, 0], r[:, 1]

    def step(self) -> int:
        from robot_rl.learners.reward_model import bradley_terry_loss

        self.model.train()
        loss = 0.0
        for m, rng in enumerate(self.member_rngs):
            index = rng.integers(0, len(self.pairs), self.batch)
            a, b = self._sums(index, m)
            loss = loss + bradley_terry_loss(a, b, self.labels[index])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.loss = loss.item()
        return 1

    def losses(self) -> dict:
        return {"loss": self.loss}

    def modules(self) -> list:
        return [self.model]

    def roundtrip(self, tmp: Path):
        from robot_rl.learners.reward_model import PreferenceRewardModel

        loaded, _ = PreferenceRewardModel.load(self.model.save(tmp / "reward"))

        def out(model):
            model.eval()
            return model.member_rewards(model.prepare(self.values[:8])).cpu()

        return out(self.model), out(loaded), "every member's reward, 8 stored values"


# --- the cases ----------------------------------------------------------------------------------


@dataclass
class Spec:
    name: str
    learner: str  # its module in robot_rl/learners (or policies)
    update: str  # what one update is
    syncs: str  # the host-device syncs the learner's own code makes
    item_every_update: bool  # .item() (a sync on CUDA) in every update
    build: Callable  # build(device, variant) -> trainer
    size: dict
    variants: tuple[str, ...] = ("fp32",)
    unit: str = "updates/s"


def _specs(s: Settings) -> list[Spec]:
    from robot_rl.policies.sac import SACConfig

    sac_state, sac_action = 34, 5  # cube_lift, as `bench sac`
    specs = []
    for size, label in (("resip", "ResiP-size"), ("demo", "demo-size")):
        unet, batch = s.unets[size], s.diffusion_batch[size]
        specs.append(
            Spec(
                f"diffusion BC, {label} UNet",
                "diffusion_bc",
                f"loss + AdamW + LR schedule + EMA at batch {batch}, horizon 16",
                "loss.item() every step",
                True,
                lambda device, variant, unet=unet, batch=batch: _DiffusionBC(device, unet, batch, variant),
                {**unet, "batch": batch, "state_dim": PEG_STATE, "action_dim": PEG_ACTION},
                ("fp32", "bf16", "compile"),
            )
        )
    minibatch = s.envs * s.rollout_steps // 4
    specs.append(
        Spec(
            "residual PPO update",
            "residual_ppo",
            f"one minibatch of {minibatch} (ppo_losses, clipping, two AdamW steps); _update runs "
            f"{s.ppo_epochs} epoch(s) of 4 a call",
            "kl.item() per epoch (1 in 4 updates)",
            False,
            lambda device, variant: _PPOUpdate(device, s.envs, s.rollout_steps, s.ppo_epochs),
            {"envs": s.envs, "rollout_steps": s.rollout_steps, "hidden": 256},
        )
    )
    for size, label in (("resip", "ResiP-size"), ("demo", "demo-size")):
        unet = s.unets[size]
        specs.append(
            Spec(
                f"residual PPO rollout, {label} base",
                "residual_ppo",
                f"one env step of {s.envs} envs: base chunk (DDIM 4, every 8 steps), residual sample, "
                "log-prob, value",
                "actions to the CPU every step",
                False,
                lambda device, variant, unet=unet: _PPORollout(device, unet, s.envs),
                {**unet, "envs": s.envs},
                unit="env steps/s",
            )
        )
    sac_cases = (
        (
            "SAC, 2 critics",
            "hil_serl",
            SACConfig(sac_state, sac_action),
            "2 critic updates + actor + temperature",
        ),
        (
            "SAC, 10 critics (REDQ, subsample 2)",
            "hil_serl",
            SACConfig(sac_state, sac_action, critic_ensemble=10, critic_subsample=2),
            "2 critic updates + actor + temperature",
        ),
        (
            "SAC, UTD 8 (FastRLAP)",
            "fastrlap",
            SACConfig(
                sac_state,
                sac_action,
                hidden=(256, 256),
                critic_ensemble=10,
                critic_subsample=2,
                cta_ratio=8,
                discount=0.99,
                init_temperature=0.5,
                action_rate_limit=0.2,
            ),
            "8 critic updates (10 critics) + actor + temperature",
        ),
    )
    for name, learner, cfg, what in sac_cases:
        specs.append(
            Spec(
                name,
                learner,
                f"{what} at batch {s.sac_batch}",
                f"{2 * cfg.cta_ratio + 3} .item() per update",
                True,
                lambda device, variant, cfg=cfg: _SAC(device, cfg, s.sac_batch),
                {
                    "critics": cfg.critic_ensemble,
                    "cta_ratio": cfg.cta_ratio,
                    "hidden": list(cfg.hidden),
                    "batch": s.sac_batch,
                },
            )
        )
    specs.append(
        Spec(
            "SAC from 2 cameras (cached maps)",
            "hil_serl",
            f"Learner.step at batch {s.image_batch}: sample the buffers, 2 critic updates + actor",
            "7 .item() + the batch copied in",
            True,
            lambda device, variant: _ImageSAC(device, s.image_batch),
            {"cameras": 2, "image_size": 84, "batch": s.image_batch, "cache_features": True},
        )
    )
    specs.append(
        Spec(
            "IQL",
            "iql",
            f"IQLAgent.update at batch {s.iql_batch} (V, Q and actor losses, one backward)",
            "8 .item() per update",
            True,
            lambda device, variant: _IQL(device, s.iql_batch),
            {"batch": s.iql_batch, "state_dim": PEG_STATE, "action_dim": PEG_ACTION},
        )
    )
    specs.append(
        Spec(
            "ICVF (32 px camera)",
            "icvf",
            "ICVFAgent.update at batch 64, each frame encoded once",
            "4 .item() per update",
            True,
            lambda device, variant: _ICVF(device, 2 if s.quick else 8),
            {"batch": 64, "image_size": 32},
        )
    )
    specs.append(
        Spec(
            "inverse dynamics (IDM)",
            "inverse_dynamics",
            f"NLL + Adam at batch {s.idm_batch}, MLP 1024 x 1024",
            "none (loss read once per epoch)",
            False,
            lambda device, variant: _IDM(device, s.idm_batch),
            {"batch": s.idm_batch, "hidden": [1024, 1024]},
        )
    )
    for name, image in (
        ("preference reward model (state)", None),
        ("preference reward model (camera)", s.reward_image),
    ):
        specs.append(
            Spec(
                name,
                "reward_model",
                f"Bradley-Terry loss of 3 members, {s.reward_pairs} pairs each, one Adam step",
                "loss.item() + the values copied in",
                True,
                lambda device, variant, image=image: _RewardModel(device, s.reward_pairs, image),
                {
                    "pairs": s.reward_pairs,
                    "segment": SEGMENT,
                    "input": f"{image} px camera" if image else "state",
                },
            )
        )
    return specs


def _measure(spec: Spec, trainer_of, device: torch.device, s: Settings, variant: str, warmup: int) -> dict:
    trainer = trainer_of(device, variant)
    warm = sum(trainer.step() for _ in range(warmup))
    rate, updates = _timed(trainer, device, s.seconds, s.min_steps)
    syncs, more = _syncs_per_update(trainer, device)
    losses = {k: float(v) for k, v in trainer.losses().items()}
    return {
        "variant": VARIANT_LABELS[variant],
        "updates_per_s": rate,
        "timed_updates": updates,
        "steps": warm + updates + more,  # the losses and weights below are after these updates
        "finite": _all_finite(losses, trainer.modules()),
        "losses": losses,
        "syncs_seen_per_update": syncs,
        "_trainer": trainer,
    }


def _run_case(
    spec: Spec, device: torch.device, cpu_mode: bool, s: Settings, tmp: Path, deferred: list
) -> dict:
    cpu = torch.device("cpu")
    rec: dict = {
        "name": spec.name,
        "learner": spec.learner,
        "update": spec.update,
        "unit": spec.unit,
        "size": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.size.items()},
        "syncs": spec.syncs,
        "item_every_update": spec.item_every_update,
        "cpu": None,
        "variants": [],
        "roundtrip": None,
    }
    if not cpu_mode:  # the CPU reference: the same code, fp32, briefly
        try:
            torch.manual_seed(0)
            trainer = spec.build(cpu, "fp32")
            trainer.step()
            rate, updates = _timed(trainer, cpu, s.cpu_seconds, s.cpu_min_steps)
            rec["cpu"] = {"updates_per_s": rate, "timed_updates": updates}
        except Exception as exc:
            rec["cpu"] = {"error": _first_line(exc)}
        trainer = None
        _free(cpu)
    for variant in spec.variants:
        label = VARIANT_LABELS[variant]
        if variant != "fp32" and not _is_cuda(device):
            rec["variants"].append({"variant": label, "skipped": "CUDA only"})
            continue
        if variant == "compile":
            if s.quick:
                rec["variants"].append({"variant": label, "skipped": "not in --quick"})
            else:  # last, after every other case: compiling takes tens of seconds
                placeholder = {"variant": label, "skipped": "time budget spent"}
                rec["variants"].append(placeholder)
                deferred.append((spec, rec, placeholder))
            continue
        try:
            torch.manual_seed(0)
            out = _measure(spec, spec.build, device, s, variant, s.warmup)
            trainer = out.pop("_trainer")
            if rec["roundtrip"] is None:
                rec["roundtrip"] = _roundtrip(trainer, tmp / spec.learner)
            trainer = None
        except Exception as exc:
            out = {"variant": label, "error": _first_line(exc)}
        if cpu_mode and variant == "fp32" and "error" not in out:  # one measurement, both sides
            rec["cpu"] = {"updates_per_s": out["updates_per_s"], "timed_updates": out["timed_updates"]}
        rec["variants"].append(out)
        _free(device)
    _speedups(rec)
    return rec


def _speedups(rec: dict) -> None:
    cpu = (rec["cpu"] or {}).get("updates_per_s")
    for v in rec["variants"]:
        if "updates_per_s" in v:
            v["speedup"] = v["updates_per_s"] / cpu if cpu else None


# --- inference latency --------------------------------------------------------------------------


def _latency(device: torch.device, cpu_mode: bool, s: Settings, tmp: Path) -> dict:
    """A ResiP-size DiffusionPolicy's action chunk at batch 1, DDIM 10, as `bench policy` sizes it
    (2 observation steps of 25-D state, 10-D actions, horizon 16): the observation to the device,
    the sampler, the chunk back to the CPU. Median of repeats after two warm-ups."""
    from robot_rl.commands.bench.policy import ACTION_DIM, HORIZON, OBS_STEPS, STATE_DIM
    from robot_rl.policies.diffusion import DiffusionConfig, DiffusionPolicy

    unet = s.unets["resip"]
    config = DiffusionConfig(STATE_DIM, ACTION_DIM, obs_horizon=OBS_STEPS, pred_horizon=HORIZON, **unet)
    obs = {"obs/state": torch.rand(1, OBS_STEPS, STATE_DIM, generator=torch.Generator().manual_seed(1))}
    rec: dict = {
        "name": "diffusion inference, ResiP-size UNet",
        "learner": "diffusion policy (acting)",
        "update": "one action chunk at batch 1, DDIM 10 (observation in, chunk back on the CPU)",
        "unit": "ms",
        "size": {k: list(v) if isinstance(v, tuple) else v for k, v in unet.items()},
        "syncs": "the chunk to the CPU",
        "item_every_update": False,
        "cpu": None,
        "variants": [],
        "roundtrip": None,
        "target_ms": LATENCY_TARGET_MS,
    }

    def build(dev):
        torch.manual_seed(0)
        return (
            DiffusionPolicy(
                config, -np.ones(STATE_DIM), np.ones(STATE_DIM), -np.ones(ACTION_DIM), np.ones(ACTION_DIM)
            )
            .to(dev)
            .eval()
        )

    def chunk(policy, amp: bool) -> torch.Tensor:
        dev = _device_of(policy)
        with torch.inference_mode(), autocast(dev, amp):
            return policy.predict_normalized(to_device(obs, dev), 10, torch.Generator().manual_seed(0)).cpu()

    def median_ms(policy, amp: bool, repeats: int) -> tuple[float, torch.Tensor]:
        for _ in range(2):
            out = chunk(policy, amp)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = chunk(policy, amp)
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1e3), out

    try:
        if not cpu_mode:
            rec["cpu"] = {"ms": median_ms(build(torch.device("cpu")), False, s.cpu_latency_repeats)[0]}
            _free(torch.device("cpu"))
        policy = build(device)
        for variant in ("fp32", "bf16"):
            label = VARIANT_LABELS[variant]
            if variant == "bf16" and not _is_cuda(device):
                rec["variants"].append({"variant": label, "skipped": "CUDA only"})
                continue
            ms, out = median_ms(policy, variant == "bf16", s.latency_repeats)
            rec["variants"].append({"variant": label, "ms": ms, "finite": bool(torch.isfinite(out).all())})
            if cpu_mode and variant == "fp32":
                rec["cpu"] = {"ms": ms}
        loaded = DiffusionPolicy.load(policy.save(tmp / "latency"))
        with _exact_float32():
            pair = (chunk(policy, False), chunk(loaded, False))
        diff = float((pair[0] - pair[1]).abs().max())
        rec["roundtrip"] = {
            "compared": "the DDIM-10 chunk at batch 1",
            "max_abs_diff": diff,
            "match": bool(torch.allclose(*pair, rtol=RTOL, atol=ATOL)),
            "atol": ATOL,
            "rtol": RTOL,
        }
    except Exception as exc:
        rec["variants"].append({"variant": "fp32", "error": _first_line(exc)})
    cpu_ms = (rec["cpu"] or {}).get("ms")
    for v in rec["variants"]:
        if "ms" in v:
            v["speedup"] = cpu_ms / v["ms"] if cpu_ms else None
    measured = [v["ms"] for v in rec["variants"] if "ms" in v]
    rec["target_met"] = (
        bool(min(measured) <= LATENCY_TARGET_MS) if measured and device.type == "cuda" else None
    )
    _free(device)
    return rec


# --- the run ------------------------------------------------------------------------------------


def _case_ok(rec: dict) -> list[str]:
    """What failed in a case (empty when every check passed)."""
    if rec.get("skipped"):
        return [f"{rec['name']}: skipped ({rec['skipped']})"]
    problems = []
    ran = [v for v in rec["variants"] if "error" not in v and "skipped" not in v]
    for v in rec["variants"]:
        if "error" in v:
            problems.append(f"{rec['name']} {v['variant']}: {v['error']}")
        elif "skipped" not in v and not v.get("finite", False):
            problems.append(f"{rec['name']} {v['variant']}: non-finite losses or weights")
    if not ran:
        problems.append(f"{rec['name']}: no variant ran")
    if rec["cpu"] and "error" in rec["cpu"]:
        problems.append(f"{rec['name']} on the CPU: {rec['cpu']['error']}")
    if ran and not (rec["roundtrip"] or {}).get("match"):
        problems.append(f"{rec['name']}: the checkpoint loaded on the CPU does not match the device model")
    for check, result in rec.get("checks", {}).items():
        if result != "ok":
            problems.append(f"{rec['name']}: {check}: {result}")
    return problems


def _progress(name: str, began: float, start: float) -> None:
    """A line on stderr per case: a run cut short still shows how far it got."""
    now = time.monotonic()
    print(f"bench gpu: {name}: {now - began:.1f} s (total {now - start:.0f} s)", file=sys.stderr, flush=True)


def run(quick: bool = False) -> dict:
    s = _settings(quick)
    if quick:
        torch.set_num_threads(1)  # a smoke test on a shared 2-core machine (as the other benches)
    device = resolve_device("auto")
    cpu_mode = device.type != "cuda"
    start = time.monotonic()
    deadline = start + s.budget_s
    results: dict = {
        "device": device.type,
        "cpu_mode": cpu_mode,
        "device_name": torch.cuda.get_device_name(device) if not cpu_mode else "CPU (no CUDA device seen)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "quick": quick,
        "seconds_per_variant": s.seconds,
        "cpu_seconds": s.cpu_seconds,
        "budget_s": s.budget_s,
        "load_average_1min_at_start": os.getloadavg()[0],
        "cases": [],
    }
    # a case is started only if this much is left: its variants and the CPU reference, the
    # round trip, and the builds; compiling is given two minutes
    per_case = 2 * (s.seconds + s.cpu_seconds) + (25.0 if not quick else 0.0)
    deferred: list = []
    with tempfile.TemporaryDirectory(prefix="robot_rl-bench-gpu-") as tmp:
        tmp = Path(tmp)
        for spec in _specs(s):
            if time.monotonic() + per_case > deadline:
                results["cases"].append(
                    {"name": spec.name, "learner": spec.learner, "skipped": "time budget spent"}
                )
                continue
            began = time.monotonic()
            rec = _run_case(spec, device, cpu_mode, s, tmp, deferred)
            if spec.name.startswith("SAC from 2 cameras"):
                rec["checks"] = {"hil_serl.make_learner builds it on the device": _make_learner_check(device)}
            results["cases"].append(rec)
            _progress(spec.name, began, start)
        if time.monotonic() + per_case > deadline:
            results["cases"].append(
                {"name": "diffusion inference, ResiP-size UNet", "skipped": "time budget spent"}
            )
        else:
            began = time.monotonic()
            results["cases"].append(_latency(device, cpu_mode, s, tmp))
            _progress("diffusion inference", began, start)
        for spec, rec, placeholder in deferred:
            if time.monotonic() + 120.0 > deadline:
                continue  # stays "time budget spent"
            began = time.monotonic()
            try:
                out = _measure(spec, spec.build, device, s, "compile", s.warmup + 1)
                out.pop("_trainer")
            except Exception as exc:
                out = {"variant": placeholder["variant"], "error": _first_line(exc)}
            placeholder.clear()
            placeholder.update(out)
            _speedups(rec)
            _free(device)
            _progress(f"{spec.name}, compiled", began, start)
    results["elapsed_s"] = time.monotonic() - start
    results["load_average_1min_at_end"] = os.getloadavg()[0]
    results["failures"] = [p for rec in results["cases"] for p in _case_ok(rec)]
    results["ok"] = not results["failures"]
    return results


# --- the table ----------------------------------------------------------------------------------


def _rate(entry: dict | None) -> str:
    if not entry:
        return "-"
    if "error" in entry:
        return f"error: {entry['error'][:60]}"
    if "skipped" in entry:
        return f"skipped: {entry['skipped']}"
    if "ms" in entry:
        return f"{entry['ms']:.1f} ms"
    return f"{entry['updates_per_s']:,.1f}/s"


def format_table(r: dict) -> str:
    lines = []
    if r["cpu_mode"]:
        lines.append(
            "cpu mode: torch sees no CUDA device, so the CPU is both sides (one measurement, speed-up 1.0 "
            "by construction); these figures are not a GPU result"
        )
    lines += [
        f"device {r['device']} ({r['device_name']}), torch {r['torch']}, CUDA {r['cuda'] or '-'}; "
        f"CPU side: {r['threads']} torch thread(s), {r['cpu_count']} cores; "
        f"{'--quick (tiny stand-in sizes: a smoke test)' if r['quick'] else 'full'} run: "
        f"{r['elapsed_s']:.0f} s "
        f"of a {r['budget_s']:.0f} s budget; "
        f"load average {r['load_average_1min_at_start']:.1f} at start",
        "",
        "| case | variant | device | CPU | speed-up | finite | CPU checkpoint: max abs diff "
        "| syncs per update |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for rec in r["cases"]:
        if rec.get("skipped"):
            lines.append(f"| {rec['name']} | - | skipped: {rec['skipped']} | - | - | - | - | - |")
            continue
        rt = rec["roundtrip"]
        roundtrip = f"{rt['max_abs_diff']:.1e} ({'match' if rt['match'] else 'MISMATCH'})" if rt else "-"
        for i, v in enumerate(rec["variants"]):
            speedup = f"{v['speedup']:.1f}x" if v.get("speedup") else "-"
            finite = "-" if "finite" not in v else ("yes" if v["finite"] else "NO")
            if "steps" in v:
                finite += f" ({v['steps']} steps)"
            syncs = rec["syncs"] if i == 0 else ""
            if v.get("syncs_seen_per_update") is not None:
                syncs = f"{syncs} (seen: {v['syncs_seen_per_update']:.1f})".strip()
            lines.append(
                f"| {rec['name'] if i == 0 else ''} | {v['variant']} | {_rate(v)} | "
                f"{_rate(rec['cpu']) if i == 0 else ''} | {speedup} | {finite} | "
                f"{roundtrip if i == 0 else ''} | {syncs} |"
            )
        notes.append(f"- {rec['name']}: {rec['update']} ({rec['unit']})")
        for check, result in rec.get("checks", {}).items():
            notes.append(f"  {check}: {result}")
    lines += ["", "one update (rates in updates/s unless said):", *notes]
    lat = next((c for c in r["cases"] if c.get("target_ms") is not None), None)
    if lat:
        measured = ", ".join(f"{v['variant']} {v['ms']:.1f} ms" for v in lat["variants"] if "ms" in v)
        verdict = {True: "met", False: "not met", None: "not judged: no GPU"}[lat["target_met"]]
        lines.append(
            f"target: ResiP-size UNet, batch 1, DDIM 10 <= {lat['target_ms']:.0f} ms on an H100: "
            f"{measured} ({verdict})"
        )
    items = dict.fromkeys(
        LEARNERS.get(c["learner"], c["learner"]) for c in r["cases"] if c.get("item_every_update")
    )
    lines.append(
        "learners that call .item() in every update (a host-device sync per step on CUDA): "
        + ", ".join(items)
    )
    if r["ok"]:
        lines.append(
            "every case ran; losses and weights finite; "
            "every checkpoint loaded on the CPU matched the device model"
        )
    else:
        lines += ["FAILED:", *(f"- {p}" for p in r["failures"])]
    return "\n".join(lines)
