"""`robot-rl bench iql`: IQL updates/s at batch 256 from state (32-D as peg_insert, action 5-D).

The library's update (`IQLAgent.update`: the three losses from one forward pass over shared
features, one backward pass, every soft target update in one foreach call) beside a
straightforward unfused one in the same run, on the same networks: V, Q and the actor each with
their own forward, backward and optimizer step, as CORL's iql.py writes them, and the target
update as a loop over parameters. One torch thread.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from robot_rl.policies.iql import EXP_ADV_MAX, IQLAgent, IQLConfig, expectile_loss

STATE_DIM, ACTION_DIM, BATCH = 32, 5, 256


def _batch(seed: int = 0, batch: int = BATCH) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs/state": torch.randn(batch, STATE_DIM, generator=g),
        "next_obs/state": torch.randn(batch, STATE_DIM, generator=g),
        "action": torch.rand(batch, ACTION_DIM, generator=g) * 1.8 - 0.9,
        "reward": torch.rand(batch, generator=g),
        "mask": torch.ones(batch),
    }


def unfused_update(agent: IQLAgent, batch: dict) -> None:
    cfg = agent.cfg
    s, s2, a = (
        agent.features({"state": batch["obs/state"]}),
        agent.features({"state": batch["next_obs/state"]}),
        batch["action"],
    )
    # V
    with torch.no_grad():
        target_q = agent.min_target_q(s, a)
    adv = target_q - agent.v(s).squeeze(-1)
    v_loss = expectile_loss(adv, cfg.expectile)
    agent.v_opt.zero_grad()
    v_loss.backward()
    agent.v_opt.step()
    # Q
    with torch.no_grad():
        y = batch["reward"] + cfg.discount * batch["mask"] * agent.v(s2).squeeze(-1)
    x = torch.cat([s, a], -1)
    q_loss = (F.mse_loss(agent.q1(x).squeeze(-1), y) + F.mse_loss(agent.q2(x).squeeze(-1), y)) / 2
    agent.q_opt.zero_grad()
    q_loss.backward()
    agent.q_opt.step()
    for target, online in ((agent.target_q1, agent.q1), (agent.target_q2, agent.q2)):
        for t, p in zip(target.parameters(), online.parameters()):
            t.data.mul_(1 - cfg.tau).add_(p.data, alpha=cfg.tau)
    # actor
    weights = torch.exp(cfg.beta * adv.detach()).clamp(max=EXP_ADV_MAX)
    actor_loss = (weights * -agent.log_prob(s, a)).mean()
    agent.actor_opt.zero_grad()
    actor_loss.backward()
    agent.actor_opt.step()
    agent.actor_schedule.step()


def updates_per_s(fused: bool, seconds: float) -> float:
    torch.manual_seed(0)
    agent = IQLAgent(IQLConfig(state_dim=STATE_DIM, action_dim=ACTION_DIM))
    batch = _batch()
    step = agent.update if fused else (lambda b: unfused_update(agent, b))
    for _ in range(5):
        step(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(batch)
        n += 1
    return n / (time.perf_counter() - start)


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    seconds = 1.0 if quick else 8.0
    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "batch": BATCH,
        "load_average_1min_at_start": os.getloadavg()[0],
        "rounds": [],
    }
    for _ in range(1 if quick else 3):  # alternate, so a change in machine load hits both
        fused, unfused = updates_per_s(True, seconds), updates_per_s(False, seconds)
        results["rounds"].append(
            {"fused_updates_per_s": fused, "unfused_updates_per_s": unfused, "ratio": fused / unfused}
        )
    results["fused_over_unfused"] = sorted(r["ratio"] for r in results["rounds"])[len(results["rounds"]) // 2]
    results["load_average_1min_at_end"] = os.getloadavg()[0]
    return results


def format_table(r: dict) -> str:
    lines = [
        f"IQL benchmark: torch {r['torch']}, {r['threads']} thread(s), {r['cpu_count']} cores, "
        f"batch {r['batch']}; "
        f"load average {r['load_average_1min_at_start']:.2f} at start, "
        f"{r['load_average_1min_at_end']:.2f} at end",
        "",
        f"{'round':<7}{'fused upd/s':>13}{'unfused upd/s':>15}{'ratio':>8}",
    ]
    for i, m in enumerate(r["rounds"]):
        lines.append(
            f"{i:<7}{m['fused_updates_per_s']:>13.1f}{m['unfused_updates_per_s']:>15.1f}{m['ratio']:>7.2f}x"
        )
    lines.append(f"median ratio {r['fused_over_unfused']:.2f}x")
    return "\n".join(lines)
