"""Residual PPO (ResiP): PPO on a per-step Gaussian residual over a frozen diffusion policy.

Faithful to Ankile et al. and `ankile/robust-rearrangement`: the base predicts a chunk with a few
DDIM steps and the envs execute it step by step; the residual acts every step on [normalized obs,
base action]; GAE with gamma 0.999 and lambda 0.95; clipped surrogate (0.2), no value clipping, no
entropy bonus, value coefficient 1; many epochs over the batch, stopped at the minibatch whose
approximate KL passes the target; separate AdamW optimizers (actor 3e-4, critic 5e-3, cosine over
`lr_horizon` iterations: the reference sets that horizon from a total-timestep budget far past
where its runs are stopped, so the rate stays near its peak); per-minibatch advantage
normalization; rewards divided by a running std of the discounted return (no centering) and
clipped to +-5; truncation ends the return like termination. One difference by default: each
network's gradient norm is clipped apart (`joint_grad_clip`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robot_rl.core.timing import UNTIMED, PhaseClock
from robot_rl.errors import ConfigError
from robot_rl.policies.diffusion import DiffusionPolicy
from robot_rl.policies.residual import BaseChunks, ResidualConfig, ResidualPolicy, combine, residual_input
from robot_rl.policies.value_head import value_head_config
from robot_rl.utils.checkpoints import LearnerCheckpoints
from robot_rl.utils.device import maybe_compile, resolve_device
from robot_rl.utils.training import RunLog, seed_everything


@dataclass
class ResidualPPOConfig:
    num_envs: int = 64
    rollout_steps: int = 100  # per env per iteration
    iterations: int = 60
    gamma: float = 0.999
    gae_lambda: float = 0.95
    clip: float = 0.2
    update_epochs: int = 50
    num_minibatches: int = 4
    target_kl: float = 0.1
    vf_coef: float = 1.0
    max_grad_norm: float = 1.0
    # True: one gradient norm over actor and critic together, as the reference clips its module;
    # a critic far off its targets then takes the whole norm and shrinks the actor's step.
    # False: each network's own norm (measured against each other in docs/methods/resip.md).
    joint_grad_clip: bool = False
    actor_lr: float = 3e-4
    critic_lr: float = 5e-3
    lr_horizon: int | None = None  # cosine period in iterations; None: anneal to zero at `iterations`
    weight_decay: float = 1e-6
    residual_scale: float = 0.1
    log_std: float = -1.0
    hidden: int = 256
    base_ddim_steps: int = 4
    # How the envs' episodes and the base's plans line up with the rollouts (docs/methods/resip.md):
    # - replan_on_reset: an env plans afresh when its episode resets, so the base runs in many
    #   small calls once episodes have ended at different steps. False, as the reference's shared
    #   action queue: one batched call plans every env when the queue runs out, and an env whose
    #   episode ends mid-chunk finishes that chunk in its next episode.
    # - reset_every_iteration, as the reference (with a rollout as long as an episode): every env
    #   starts a fresh episode with each rollout, so the plans start together and clean; an episode
    #   that a success restarted mid-rollout is cut at the rollout's end. False: episodes run on.
    replan_on_reset: bool = True
    reset_every_iteration: bool = False
    reward_clip: float = 5.0
    # Keep the policy that did best in periodic deterministic evaluations, as the reference keeps
    # its `eval_best.pt` (every 5 iterations there); 0: none, the last policy is the result. The
    # episodes start from `select_seed` on, apart from `robot-rl eval`'s (10,000 on), so a figure
    # reported on those is not the one the choice was made on. Training is the same either way.
    select_every: int = 0
    select_episodes: int = 64
    select_seed: int = 50_000
    # the critic's value head (policies.value_head.ValueHeadConfig): mse, or hl_gauss over bins
    # spanning the normalized returns, e.g. {loss: hl_gauss, v_min: 0, v_max: 10}
    value: dict | None = None
    # torch threads of the PPO update, which runs no physics beside it (rollouts keep one thread:
    # their physics runs on the vector env's threads); on a busy machine more can be slower
    update_threads: int = 1
    device: str = "auto"  # the base, the residual and the rollout buffers (the envs step on the CPU)
    compile: bool = False  # torch.compile the PPO losses
    seed: int = 0
    checkpoint_every: int = 0  # iterations between resumable checkpoints in RUN/checkpoints (0: none)
    resume: str | None = None  # a run folder: continue it from its latest checkpoint, to the same end

    def __post_init__(self):
        value_head_config(self.value)  # a bad value head is refused before any work
        if self.update_threads < 1:
            raise ConfigError(f"update_threads must be at least 1, got {self.update_threads}")
        if self.select_every < 0 or self.select_episodes < 1:
            raise ConfigError(
                f"select_every must be at least 0 and select_episodes at least 1, "
                f"got {self.select_every} and {self.select_episodes}"
            )


class ReturnStd:
    """Rewards divided by the running std of the discounted return (not shifted: a sparse success
    stays positive), then clipped to ±clip, as ResiP's reward normalization does."""

    def __init__(self, num_envs: int, gamma: float, clip: float):
        self.ret, self.gamma, self.clip = np.zeros(num_envs), gamma, clip
        self.count, self.mean, self.m2 = 1e-4, 0.0, 0.0

    def scale(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        self.ret = self.ret * self.gamma + rewards
        for x in self.ret:  # Welford update over this step's returns
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)
        self.ret[dones] = 0.0
        return np.clip(rewards / np.sqrt(self.m2 / self.count + 1e-8), -self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"ret": self.ret.copy(), "count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.ret = np.asarray(state["ret"], np.float64).copy()
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


def gae(rewards, values, dones, last_value, gamma: float, lam: float):
    """Generalized advantage estimation over (T, N) arrays; `dones[t]` ends the return after step t."""
    T = len(rewards)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(T)):
        next_value = last_value if t == T - 1 else values[t + 1]
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        running = delta + gamma * lam * not_done * running
        advantages[t] = running
    return advantages, advantages + values


def ppo_losses(policy: ResidualPolicy, x, actions, old_logp, advantages, returns, clip: float):
    """(policy loss, value loss, approximate KL) of the clipped PPO objective on one minibatch."""
    dist = policy.dist(x)
    logp = dist.log_prob(actions).sum(-1)
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    value = 0.5 * policy.value_loss(x, returns).mean()
    approx_kl = ((ratio - 1) - log_ratio).mean()
    return pg, value, approx_kl


class RolloutBuffers:
    """One iteration's (T, N) rollout on the learner's device, allocated once for the run."""

    def __init__(self, T: int, N: int, obs_dim: int, action_dim: int, device):
        self.x = torch.zeros(T, N, obs_dim + action_dim, device=device)  # the residual's input
        self.actions = torch.zeros(T, N, action_dim, device=device)  # the sampled residuals
        self.logp, self.rewards, self.values, self.dones = (
            torch.zeros(T, N, device=device) for _ in range(4)
        )


@dataclass
class Rollout:
    buffers: RolloutBuffers
    episodes: int
    successes: int
    advantages: torch.Tensor
    returns: torch.Tensor

    def batch(self) -> tuple:
        """(x, actions, old log-probs, advantages, returns), flattened over time and envs: the PPO
        update's inputs."""
        b = self.buffers
        return tuple(t.flatten(0, 1) for t in (b.x, b.actions, b.logp, self.advantages, self.returns))


@torch.no_grad()
def collect_rollout(
    vec,
    base: DiffusionPolicy,
    policy: ResidualPolicy,
    chunks: BaseChunks,
    reward_scale: ReturnStd,
    state: torch.Tensor,
    buffers: RolloutBuffers,
    cfg: ResidualPPOConfig,
    clock: PhaseClock = UNTIMED,
) -> tuple[torch.Tensor, Rollout]:
    """Step the envs `cfg.rollout_steps` times with base + residual into `buffers`; returns the next
    state and the rollout's counts and GAE. `clock` times the phases (for `robot-rl bench resip`)."""
    device = buffers.x.device
    episodes = successes = 0
    if cfg.reset_every_iteration:
        state = torch.as_tensor(vec.reset()[0], device=device)  # each env's own RNG goes on
        chunks.reset()
        reward_scale.ret[:] = 0.0  # the discounted returns of the cut episodes end here
    for t in range(cfg.rollout_steps):
        with clock("base denoising"):
            base_action = chunks.next(state)
        with clock("residual forward"):
            x = residual_input(base, state, base_action)
            dist = policy.dist(x)
            residual = dist.sample()
            buffers.x[t], buffers.actions[t] = x, residual
            buffers.logp[t], buffers.values[t] = dist.log_prob(residual).sum(-1), policy.value(x)
            action = combine(base, base_action, residual, cfg.residual_scale).cpu().numpy()
        with clock("physics"):
            obs, reward, terminated, truncated, info = vec.step(action)
        with clock("bookkeeping"):
            done = terminated | truncated  # ResiP: truncation ends the return too
            buffers.rewards[t] = torch.as_tensor(reward_scale.scale(reward, done))
            buffers.dones[t] = torch.as_tensor(done, dtype=torch.float32, device=device)
            if cfg.replan_on_reset:
                chunks.reset(np.flatnonzero(done))
            episodes += int(done.sum())
            successes += int(info["success"][done].sum())
            state = torch.as_tensor(obs, device=device)
    with clock("GAE"):
        # Bootstrap with the base action each env will take next; where its queue has run out (a
        # new plan is due) the last queued action stands in, rather than sampling a plan that the
        # next rollout would not use.
        N = len(state)
        upcoming = chunks.queue[np.arange(N), np.minimum(chunks.index, chunks.queue.shape[1] - 1)]
        last_value = policy.value(residual_input(base, state, upcoming))
        advantages, returns = gae(
            buffers.rewards, buffers.values, buffers.dones, last_value, cfg.gamma, cfg.gae_lambda
        )
    return state, Rollout(buffers, episodes, successes, advantages, returns)


def make_policy(obs_dim: int, action_dim: int, cfg: ResidualPPOConfig, device="cpu") -> ResidualPolicy:
    """The residual actor and critic the config describes, its output layer zero (the base exactly)."""
    config = ResidualConfig(
        obs_dim,
        action_dim,
        cfg.hidden,
        cfg.log_std,
        cfg.residual_scale,
        value=cfg.value,
        base_ddim_steps=cfg.base_ddim_steps,
    )
    return ResidualPolicy(config).to(device)


def optimizers(policy: ResidualPolicy, cfg: ResidualPPOConfig) -> tuple:
    """ResiP's separate AdamW optimizers of the actor and the critic."""
    return tuple(
        torch.optim.AdamW(part.parameters(), lr=lr, eps=1e-5, weight_decay=cfg.weight_decay)
        for part, lr in ((policy.actor, cfg.actor_lr), (policy.critic, cfg.critic_lr))
    )


def cosine_schedules(optimizers, cfg: ResidualPPOConfig) -> list:
    """Cosine learning-rate decay over `lr_horizon` iterations (to zero at `iterations` if unset)."""
    horizon = cfg.lr_horizon or cfg.iterations
    return [torch.optim.lr_scheduler.CosineAnnealingLR(o, horizon) for o in optimizers]


def check_rollout_length(vec, cfg: ResidualPPOConfig) -> None:
    """With reset_every_iteration a rollout must fit an episode, or no episode could time out.
    Checked where the envs are in this process (a VectorEnv; Ray workers' envs are not)."""
    envs = getattr(vec, "envs", None)
    limit = getattr(getattr(envs[0], "task", None), "max_steps", None) if envs else None
    if cfg.reset_every_iteration and limit and cfg.rollout_steps < limit:
        raise ConfigError(
            f"reset_every_iteration needs rollout_steps of at least the episode's {limit} steps "
            f"(got {cfg.rollout_steps}): set rollout_steps={limit}"
        )


def train_residual_ppo(
    make_vec_env, base_checkpoint, out_dir, cfg: ResidualPPOConfig, progress: bool = True
) -> dict:
    checkpoints = LearnerCheckpoints(out_dir, "residual_ppo", cfg)  # a bad resume= is refused first
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    base = DiffusionPolicy.load(base_checkpoint, device=str(device)).requires_grad_(False)
    vec = make_vec_env(cfg.num_envs)
    try:
        check_rollout_length(vec, cfg)
        return _train(vec, make_vec_env, base, base_checkpoint, device, out_dir, cfg, checkpoints, progress)
    finally:
        vec.close()  # also on an error: Ray rollout workers must not outlive the run


def _train(
    vec,
    make_vec_env,
    base: DiffusionPolicy,
    base_checkpoint,
    device,
    out_dir,
    cfg: ResidualPPOConfig,
    checkpoints: LearnerCheckpoints,
    progress: bool,
) -> dict:
    obs_dim, action_dim = vec.single_observation_space.shape[0], base.config.action_dim
    policy = make_policy(obs_dim, action_dim, cfg, device)
    actor_opt, critic_opt = optimizers(policy, cfg)
    schedules = cosine_schedules((actor_opt, critic_opt), cfg)
    chunks = BaseChunks(base, cfg.num_envs, cfg.base_ddim_steps, cfg.seed)
    reward_scale = ReturnStd(cfg.num_envs, cfg.gamma, cfg.reward_clip)
    log = RunLog(out_dir, "residual PPO")
    buffers = RolloutBuffers(cfg.rollout_steps, cfg.num_envs, obs_dim, action_dim, device)
    parts = {"policy": policy, "actor_opt": actor_opt, "critic_opt": critic_opt, "reward_scale": reward_scale}
    parts.update({f"schedule{i}": s for i, s in enumerate(schedules)})
    counts = {"episodes": 0, "successes": 0, "env_steps": 0}
    if (saved := checkpoints.restore(log)) is not None:
        for key, part in parts.items():
            part.load_state_dict(saved[key])
        chunks.load_state_dict(saved["chunks"])
        counts = saved["counts"]
        obs = vec.restore(saved["envs"])  # each env replays its episode so far
    else:
        obs, _ = vec.reset(seed=cfg.seed)
    state = torch.as_tensor(obs, device=device)
    snapshot = checkpoints.snapshot(
        lambda: {
            **{key: part.state_dict() for key, part in parts.items()},
            "chunks": chunks.state_dict(),
            "counts": counts,
            "envs": vec.episode_state(),
        },
        log,
    )

    bar = checkpoints.bar(cfg.iterations, "residual PPO", "it", progress)
    with checkpoints:  # Ctrl-C and SIGTERM: a checkpoint at the end of the iteration, then stop
        for it in bar:
            state, rollout = collect_rollout(vec, base, policy, chunks, reward_scale, state, buffers, cfg)
            counts["env_steps"] += cfg.rollout_steps * cfg.num_envs
            counts["episodes"] += rollout.episodes
            counts["successes"] += rollout.successes
            torch.set_num_threads(cfg.update_threads)
            stats = ppo_update(policy, actor_opt, critic_opt, cfg, *rollout.batch())
            torch.set_num_threads(1)
            for s in schedules:
                s.step()
            rate = rollout.successes / max(rollout.episodes, 1)
            log.log(counts["env_steps"], success_rate=rate, episodes=rollout.episodes, **stats)
            kl, epochs = stats["approx_kl"], stats["epochs"]
            bar.set_postfix_str(f"success {rate:.2f} ({rollout.episodes} ep) kl {kl:.3f} epochs {epochs}")
            if cfg.select_every and (it + 1) % cfg.select_every == 0:
                select(make_vec_env, base, policy, base_checkpoint, out_dir, cfg, counts, it + 1, log)
            checkpoints.step_done(it + 1, cfg.iterations, snapshot)
    episodes, successes, env_steps = counts["episodes"], counts["successes"], counts["env_steps"]
    checkpoint = policy.save(Path(out_dir) / "checkpoint", base_checkpoint)
    selected = {}
    if "selected_iteration" in counts:  # the result is the best evaluated policy, the last one kept too
        selected = {k: counts[k] for k in ("selected_iteration", "selected_success_rate")}
        selected["last_checkpoint"], checkpoint = str(checkpoint), Path(out_dir) / "best_checkpoint"
    return log.close(
        {
            "learner": "residual_ppo",
            "checkpoint": str(checkpoint),
            **selected,
            "base_checkpoint": str(base_checkpoint),
            "env_steps": env_steps,
            "training_episodes": episodes,
            "training_success_rate": successes / max(episodes, 1),
        },
        curves=("success_rate", "policy_loss", "value_loss", "approx_kl"),
    )


def select(make_vec_env, base, policy, base_checkpoint, out_dir, cfg: ResidualPPOConfig, counts, it, log):
    """Evaluate the residual's mean on the selection episodes; save it as the best if it beats the
    best so far (the first evaluation always does). Uses no training RNG: training is unchanged."""
    from robot_rl.learners.evaluate import evaluate_diffusion

    result = evaluate_diffusion(
        make_vec_env,
        base,
        policy,
        episodes=cfg.select_episodes,
        num_envs=min(cfg.num_envs, cfg.select_episodes),
        seed=cfg.select_seed,
        ddim_steps=cfg.base_ddim_steps,
        progress=False,
    )
    log.log(counts["env_steps"], selection_success_rate=result["success_rate"])
    if result["success_rate"] > counts.get("selected_success_rate", -1.0):
        policy.save(Path(out_dir) / "best_checkpoint", base_checkpoint)
        counts["selected_success_rate"], counts["selected_iteration"] = result["success_rate"], it


def ppo_update(
    policy, actor_opt, critic_opt, cfg: ResidualPPOConfig, x, actions, old_logp, advantages, returns
) -> dict:
    losses = maybe_compile(ppo_losses, cfg.compile)
    n = len(x)
    size = n // cfg.num_minibatches
    nets = (policy,) if cfg.joint_grad_clip else (policy.actor, policy.critic)
    grad_clip_groups = [list(net.parameters()) for net in nets]
    epochs_done, kl, stop = 0, torch.tensor(0.0), False
    for _ in range(cfg.update_epochs):
        epochs_done += 1
        order = torch.randperm(n)
        for start in range(0, n - size + 1, size):
            idx = order[start : start + size]
            pg, value, kl = losses(
                policy, x[idx], actions[idx], old_logp[idx], advantages[idx], returns[idx], cfg.clip
            )
            actor_opt.zero_grad(set_to_none=True)
            critic_opt.zero_grad(set_to_none=True)
            (pg + cfg.vf_coef * value).backward()
            for params in grad_clip_groups:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            actor_opt.step()
            critic_opt.step()
            stop = kl.item() > cfg.target_kl  # the policy moved far enough for this batch
            if stop:  # as the reference, at the minibatch that crossed it
                break
        if stop:
            break
    return {
        "policy_loss": pg.item(),
        "value_loss": value.item(),
        "approx_kl": kl.item(),
        "epochs": epochs_done,
    }
