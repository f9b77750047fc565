"""`robot-rl bench sac`: the SAC/RLPD learner's update rate and the actor's control rate.

1. Learner steps/s at batch 256 (one step = `cta_ratio` 2 critic updates + an actor and temperature
   update, state input 34-D as cube_lift, action 5-D), with critic ensembles of 2 and 10 (REDQ
   subsample 2): the batched ensemble (one call for all members) beside the same ensemble as a
   Python loop over separate MLPs, in the same run. One torch thread.
2. The actor's ControlLoop on cube_lift at 20 Hz with the policy acting every tick: alone, with a
   learner training in another process (a Ray actor, as `dist=ray` runs it), and with the learner
   in a thread of the same process. Achieved rate, period error p50/p99 and overruns.
"""

from __future__ import annotations

import os
import threading
import time

import torch

from robot_rl.policies.sac import SACAgent, SACConfig
from robot_rl.policies.sac_networks import CriticEnsemble, LoopCriticEnsemble

STATE_DIM, ACTION_DIM, BATCH = 34, 5, 256


def _batches(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "obs": {"state": torch.randn(BATCH, STATE_DIM, generator=g)},
            "next_obs": {"state": torch.randn(BATCH, STATE_DIM, generator=g)},
            "action": torch.rand(BATCH, ACTION_DIM, generator=g) * 2 - 1,
            "prev_action": torch.rand(BATCH, ACTION_DIM, generator=g) * 2 - 1,
            "reward": torch.rand(BATCH, generator=g),
            "mask": torch.ones(BATCH),
        }
        for _ in range(n)
    ]


def _agent(members: int, critic_cls) -> SACAgent:
    cfg = SACConfig(
        STATE_DIM, ACTION_DIM, critic_ensemble=members, critic_subsample=2 if members > 2 else None
    )
    agent = SACAgent(cfg)
    if critic_cls is not CriticEnsemble:  # the same agent with a per-member loop for the critics
        agent.critic = critic_cls(members, STATE_DIM, ACTION_DIM, cfg.hidden)
        agent.target_critic = critic_cls(members, STATE_DIM, ACTION_DIM, cfg.hidden).requires_grad_(False)
        agent.target_critic.load_state_dict(agent.critic.state_dict())
        agent.critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=cfg.critic_lr)
    return agent


def learner_steps_per_s(members: int, critic_cls, seconds: float) -> float:
    agent = _agent(members, critic_cls)
    batches = _batches(agent.cfg.cta_ratio)
    for _ in range(3):
        agent.update(batches)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        agent.update(batches)
        n += 1
    return n / (time.perf_counter() - start)


def actor_rate(seconds: float, learner: str) -> dict:
    """The ControlLoop's timing at 20 Hz on cube_lift while a learner trains `learner`: none,
    process (a Ray actor) or thread (same process)."""
    from omegaconf import OmegaConf

    from robot_rl.config import CONF_DIR
    from robot_rl.core import ControlLoop
    from robot_rl.factory import make_sim_env
    from robot_rl.policies.sac import AgentPolicy

    env_cfg = OmegaConf.load(CONF_DIR / "env" / "cube_lift.yaml")
    # Episodes no longer than the run (--quick's 1.5 s run would otherwise wait out a 5 s episode).
    env_cfg = OmegaConf.merge(
        env_cfg, {"cameras": [], "max_steps": min(env_cfg.max_steps, max(1, int(20 * seconds)))}
    )
    env, _ = make_sim_env(env_cfg)
    agent = SACAgent(SACConfig(STATE_DIM, ACTION_DIM))
    stop = threading.Event()
    updates = [0]
    remote = None
    if learner == "thread":

        def train():
            trainer, batches = SACAgent(SACConfig(STATE_DIM, ACTION_DIM)), _batches(2)
            while not stop.is_set():
                trainer.update(batches)
                updates[0] += 1

        worker = threading.Thread(target=train, daemon=True)
        worker.start()
    elif learner == "process":
        import ray

        remote = ray.remote(num_cpus=1)(_BusyLearner).remote()
        ray.get(remote.ready.remote())
        remote.train.remote()
    loop = ControlLoop(env, AgentPolicy(agent), rate_hz=20.0, execute_k=1)
    start = time.monotonic()
    with env:
        while time.monotonic() - start < seconds:
            loop.run_episode(seed=int(start))
    stop.set()
    report = loop.report()["clock"]
    if remote is not None:
        import ray

        updates[0] = ray.get(remote.stop.remote())
    loop.close()
    return {
        "learner": learner,
        "achieved_hz": report["achieved_hz"],
        "overruns": report["overruns"],
        "ticks": report["ticks"],
        "period_error_us_p50": report["period_error_us_p50"],
        "period_error_us_p99": report["period_error_us_p99"],
        "learner_updates_per_s": updates[0] / seconds,
    }


class _BusyLearner:
    """A learner process that updates as fast as it can on fixed batches (for the actor-rate run)."""

    def __init__(self):
        torch.set_num_threads(1)
        self.agent, self.batches = SACAgent(SACConfig(STATE_DIM, ACTION_DIM)), _batches(2)
        self.updates, self._stop = 0, threading.Event()

    def ready(self) -> bool:
        return True

    def train(self) -> None:
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.agent.update(self.batches)
            self.updates += 1

    def stop(self) -> int:
        self._stop.set()
        return self.updates


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    seconds = 0.5 if quick else 8.0
    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "batch": BATCH,
        "load_average_1min_at_start": os.getloadavg()[0],
        "learner": [],
    }
    for members in (2, 10):
        batched = learner_steps_per_s(members, CriticEnsemble, seconds)
        looped = learner_steps_per_s(members, LoopCriticEnsemble, seconds)
        results["learner"].append(
            {
                "critics": members,
                "batched_steps_per_s": batched,
                "loop_steps_per_s": looped,
                "batched_over_loop": batched / looped,
            }
        )
    actor_seconds = 1.5 if quick else 20.0
    modes = ["none", "thread"]
    try:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        modes.insert(1, "process")
    except ImportError:
        ray = None
    try:
        results["actor"] = [actor_rate(actor_seconds, mode) for mode in modes]
    finally:
        if ray is not None:
            ray.shutdown()
    results["load_average_1min_at_end"] = os.getloadavg()[0]
    return results


def format_table(r: dict) -> str:
    lines = [
        f"SAC benchmark: torch {r['torch']}, {r['threads']} thread(s), {r['cpu_count']} cores, "
        f"batch {r['batch']}; "
        f"load average {r['load_average_1min_at_start']:.2f} at start, "
        f"{r['load_average_1min_at_end']:.2f} at end",
        "",
        "learner steps/s (2 critic updates + 1 actor update each)",
        f"{'critics':<9}{'batched':>10}{'loop':>10}{'ratio':>8}",
    ]
    for m in r["learner"]:
        lines.append(
            f"{m['critics']:<9}{m['batched_steps_per_s']:>10.1f}{m['loop_steps_per_s']:>10.1f}"
            f"{m['batched_over_loop']:>7.2f}x"
        )
    lines += [
        "",
        "actor ControlLoop at 20 Hz on cube_lift (policy every tick)",
        f"{'learner':<10}{'Hz':>8}{'p50 us':>10}{'p99 us':>10}{'overruns':>10}{'learner upd/s':>15}",
    ]
    for m in r["actor"]:
        lines.append(
            f"{m['learner']:<10}{m['achieved_hz']:>8.2f}{m['period_error_us_p50']:>10.0f}"
            f"{m['period_error_us_p99']:>10.0f}{m['overruns']:>10}{m['learner_updates_per_s']:>15.1f}"
        )
    return "\n".join(lines)
