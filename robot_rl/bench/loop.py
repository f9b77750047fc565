"""`robot-rl bench loop`: timing accuracy and cost of the ControlLoop against a naive sleep loop.

Both run a no-op robot in the same process: the ControlLoop (RateClock deadline scheduling:
reduced timer slack, sleep, then spin a learned margin) with the full tick (safety filter,
RobotEnv, stage timers, watchdog), and the loop people write first: do the work, then
`time.sleep(period)`. Reported: achieved rate, absolute period error p50/p99, work per tick
(overhead) and CPU use as a fraction of one core.
"""

from __future__ import annotations

import time

import numpy as np

from robot_rl.core import ControlLoop, RobotEnv
from robot_rl.core.noop import NoopRobot, NullTask


def _cpu_fraction(run) -> tuple[object, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    return out, (time.process_time() - cpu) / (time.perf_counter() - wall)


def naive_loop(rate_hz: float, seconds: float) -> dict:
    env = RobotEnv(NoopRobot(7), NullTask(10**9))
    period = 1.0 / rate_hz
    action = np.zeros(7, np.float32)
    ticks = int(rate_hz * seconds)

    def run():
        env.reset(seed=0)
        stamps, work = np.zeros(ticks + 1), np.zeros(ticks)
        stamps[0] = time.monotonic()
        for i in range(ticks):
            t0 = time.perf_counter()
            env.step(action)
            work[i] = time.perf_counter() - t0
            time.sleep(period)
            stamps[i + 1] = time.monotonic()
        return stamps, work

    (stamps, work), cpu = _cpu_fraction(run)
    periods = np.diff(stamps)
    err = np.abs(periods - period) * 1e6
    return {
        "achieved_hz": float(1.0 / periods.mean()),
        "period_error_us_p50": float(np.percentile(err, 50)),
        "period_error_us_p99": float(np.percentile(err, 99)),
        "overhead_us_per_tick": float(work.mean() * 1e6),
        "cpu_fraction": cpu,
        "overruns": None,
    }


def control_loop(rate_hz: float, seconds: float) -> dict:
    ticks = int(rate_hz * seconds)
    env = RobotEnv(NoopRobot(7), NullTask(ticks))
    action = np.zeros(7, np.float32)
    loop = ControlLoop(env, policy=lambda obs: action, rate_hz=rate_hz)
    _, cpu = _cpu_fraction(lambda: loop.run(1))
    report = loop.report()
    clock = report["clock"]
    overhead = sum(report["stages"][s]["mean_ms"] for s in ("policy", "command", "observe", "record")) * 1e3
    return {
        "achieved_hz": clock["achieved_hz"],
        "period_error_us_p50": clock["period_error_us_p50"],
        "period_error_us_p99": clock["period_error_us_p99"],
        "overhead_us_per_tick": overhead,
        "cpu_fraction": cpu,
        "overruns": clock["overruns"],
    }


def run(quick: bool = False) -> dict:
    seconds = 1.0 if quick else 5.0
    results = {"seconds_per_run": seconds, "rates": {}}
    for rate in (100, 500):
        ours, naive = control_loop(rate, seconds), naive_loop(rate, seconds)
        results["rates"][str(rate)] = {
            "control_loop": ours,
            "naive_sleep": naive,
            "p99_error_ratio": naive["period_error_us_p99"] / max(ours["period_error_us_p99"], 1e-3),
        }
    return results


def format_table(r: dict) -> str:
    lines = [
        f"loop benchmark: no-op robot, {r['seconds_per_run']:.0f} s per run",
        "",
        f"{'rate':>6}  {'loop':<14}{'achieved Hz':>12}{'err p50 us':>12}{'err p99 us':>12}"
        f"{'work us/tick':>14}{'CPU %':>8}{'overruns':>10}",
    ]
    for rate, entry in r["rates"].items():
        for name in ("control_loop", "naive_sleep"):
            m = entry[name]
            overruns = "-" if m["overruns"] is None else str(m["overruns"])
            lines.append(
                f"{rate:>6}  {name:<14}{m['achieved_hz']:>12.1f}{m['period_error_us_p50']:>12.1f}"
                f"{m['period_error_us_p99']:>12.1f}{m['overhead_us_per_tick']:>14.1f}{m['cpu_fraction'] * 100:>8.1f}{overruns:>10}"
            )
        lines.append(f"{'':>8}p99 period error, naive / ControlLoop: {entry['p99_error_ratio']:.1f}x")
    return "\n".join(lines)
