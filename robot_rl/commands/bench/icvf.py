"""`robot-rl bench icvf`: ICVF updates/s on camera frames (32 px, batch 64, as `robot-rl vptr`).

The library's batch encodes each sampled frame once per network (`frame_rows`: goals and intents
repeat observations) beside the same update with every role's frames encoded separately, as
icvf_release does (observations, next observations, goals and intents each through the encoder).
Same agent class, same losses, same samples; one torch thread; alternating rounds.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from robot_rl.learners.icvf import GoalSampler, ICVFAgent, ICVFConfig, frame_batch
from robot_rl.policies.encoders import images_to_float

SIZE, BATCH, EPISODES, LENGTH = 32, 64, 200, 28  # the vptr video store: 200 episodes of about 28 frames


def _batches(n: int, once: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (EPISODES * LENGTH, SIZE, SIZE, 3), dtype=np.uint8)
    sampler = GoalSampler(np.arange(1, EPISODES + 1) * LENGTH)
    batches = []
    for _ in range(n):
        s = sampler.sample(BATCH, rng)
        batch = frame_batch(s, lambda index: {"image/front": images_to_float(frames[index])})
        if not once:  # online/ holds obs, goal, intent one after another; next/ the next observations
            batch["online/image/front"] = images_to_float(
                frames[np.concatenate([s["idx"], s["goal"], s["intent"]])]
            )
            batch["next/image/front"] = images_to_float(frames[s["next"]])
            rows = torch.arange(BATCH)
            batch.update(
                obs_at=rows, goal_at=rows + BATCH, intent_at=rows + 2 * BATCH, next_at=rows + 3 * BATCH
            )
        batches.append(batch)
    return batches


def updates_per_s(once: bool, seconds: float) -> tuple[float, float]:
    """Updates/s and the mean number of frames encoded per batch (both networks' inputs)."""
    torch.manual_seed(0)
    agent = ICVFAgent(ICVFConfig(image_keys=("image/front",), image_size=SIZE, lr=3e-4))
    batches = _batches(20, once)
    frames = float(np.mean([len(b["online/image/front"]) + len(b["next/image/front"]) for b in batches]))
    for batch in batches[:3]:
        agent.update(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        agent.update(batches[n % len(batches)])
        n += 1
    return n / (time.perf_counter() - start), frames


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    seconds = 1.0 if quick else 8.0
    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "batch": BATCH,
        "image_size": SIZE,
        "load_average_1min_at_start": os.getloadavg()[0],
        "rounds": [],
    }
    for _ in range(1 if quick else 3):  # alternate, so a change in machine load hits both
        (once, frames_once), (per_role, frames_per_role) = (
            updates_per_s(True, seconds),
            updates_per_s(False, seconds),
        )
        results["rounds"].append(
            {"frames_once_updates_per_s": once, "per_role_updates_per_s": per_role, "ratio": once / per_role}
        )
        results["frames_per_batch"] = {"once": frames_once, "per_role": frames_per_role}
    results["once_over_per_role"] = sorted(r["ratio"] for r in results["rounds"])[len(results["rounds"]) // 2]
    results["load_average_1min_at_end"] = os.getloadavg()[0]
    return results


def format_table(r: dict) -> str:
    f = r["frames_per_batch"]
    lines = [
        f"ICVF benchmark: torch {r['torch']}, {r['threads']} thread(s), {r['cpu_count']} cores, "
        f"batch {r['batch']} "
        f"at {r['image_size']} px; load average {r['load_average_1min_at_start']:.2f} at start, "
        f"{r['load_average_1min_at_end']:.2f} at end; frames encoded per batch: {f['once']:.0f} once, "
        f"{f['per_role']:.0f} per role",
        "",
        f"{'round':<7}{'once upd/s':>12}{'per role upd/s':>16}{'ratio':>8}",
    ]
    for i, m in enumerate(r["rounds"]):
        lines.append(
            f"{i:<7}{m['frames_once_updates_per_s']:>12.1f}{m['per_role_updates_per_s']:>16.1f}{m['ratio']:>7.2f}x"
        )
    lines.append(f"median ratio {r['once_over_per_role']:.2f}x")
    return "\n".join(lines)
