"""`robot-rl bench loop`: timing accuracy and cost of the ControlLoop against the sleep loops a user
would write instead, on an idle CPU and under CPU load.

Three loops drive the same no-op robot, one after the other in the same process, each run in a
fresh thread (so each starts with Linux's default timer slack), in rounds whose order rotates (a
change in the machine's other load then hits every loop alike; figures pool the rounds):

- `control_loop`: the ControlLoop with its full tick (safety filter, RobotEnv, stage timers,
  watchdog thread) on its RateClock (deadline grid, reduced timer slack, a learned spin before
  each deadline that it drops while the CPU is contended).
- `deadline_sleep`, the baseline a careful user writes: do the work, then
  `next_deadline += period; time.sleep(max(0, next_deadline - now))` (no drift, no spin).
- `naive_sleep`, the loop people write first: do the work, then `time.sleep(period)` (it drifts
  below its rate by construction: every period also holds the work and the wake-up delay).

Under load (`--load N`): N busy processes spin in pure Python beside the loop for the whole
loaded run. Processes, not threads: a busy Python thread in the loop's process would hold the GIL,
and the loop would then measure the interpreter's 5 ms GIL switch interval rather than the CPU
scheduler; separate processes compete with the loop for the cores only, as the other programs on
a robot's computer do (camera drivers, a learner, ROS nodes), and leave the loop's process's CPU
time its own.

Reported per loop: mean period (and rate), jitter (|period - nominal|) p50/p99/max, missed
deadlines (ticks that started more than 10 % of a period after their own deadline: the grid for
the two deadline loops, the previous tick + one period for the naive loop), the CPU time of the
loop's process as a fraction of one core, and the work per tick.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from robot_rl.core import ControlLoop, RobotEnv
from robot_rl.core.noop import NoopRobot, NullTask

LOOPS = ("control_loop", "deadline_sleep", "naive_sleep")
RATES = (100, 500)
MISSED_FRACTION = 0.1  # a tick that starts later than this fraction of a period after its deadline
# A busy process that ends with its parent, so a benchmark killed with -9 leaves no spinning orphan.
_HOG = (
    "import os\nparent = os.getppid()\nprint('ready', flush=True)\n"
    "while os.getppid() == parent:\n    for _ in range(100_000):\n        pass\n"
)


@contextmanager
def cpu_load(processes: int):
    """`processes` busy Python processes (each spins one core) for the duration of the block."""
    hogs = [
        subprocess.Popen([sys.executable, "-S", "-c", _HOG], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    try:
        for hog in hogs:  # every hog is spinning before anything is measured
            hog.stdout.readline()
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
            hog.stdout.close()


def _in_thread(fn):
    """fn() in a new thread: each loop starts from the default timer slack (RateClock lowers it)."""
    with ThreadPoolExecutor(1, thread_name_prefix="robot_rl-bench-loop") as pool:
        return pool.submit(fn).result()


def _figures(runs: list[dict], period: float) -> dict:
    """One loop's figures over all its rounds (periods and lateness pooled, CPU over the total time)."""
    periods = np.concatenate([r["periods"] for r in runs])
    lateness = np.concatenate([r["lateness"] for r in runs])
    err = np.abs(periods - period) * 1e6
    missed = int(np.count_nonzero(lateness > MISSED_FRACTION * period))
    overruns = [r.get("overruns") for r in runs]
    contended = [r.get("contended_ticks") for r in runs]
    return {
        "ticks": int(periods.size),
        "period_mean_us": float(periods.mean() * 1e6),
        "achieved_hz": float(1.0 / periods.mean()),
        "period_error_us_p50": float(np.percentile(err, 50)),
        "period_error_us_p99": float(np.percentile(err, 99)),
        "period_error_us_max": float(err.max()),
        "missed_deadlines": missed,
        "missed_fraction": missed / periods.size,
        "overhead_us_per_tick": float(
            np.average([r["work_s"] for r in runs], weights=[len(r["periods"]) for r in runs]) * 1e6
        ),
        "cpu_fraction": sum(r["cpu_s"] for r in runs) / sum(r["wall_s"] for r in runs),
        "overruns": None if None in overruns else sum(overruns),
        "contended_ticks": None if None in contended else sum(contended),
    }


def _sleep_loop(rate_hz: float, seconds: float, deadline: bool) -> dict:
    env = RobotEnv(NoopRobot(7), NullTask(10**9))
    period = 1.0 / rate_hz
    action = np.zeros(7, np.float32)
    ticks = int(rate_hz * seconds)
    env.reset(seed=0)
    stamps, work = np.zeros(ticks + 1), np.zeros(ticks)
    wall, cpu = time.perf_counter(), time.process_time()
    stamps[0] = next_deadline = time.monotonic()
    for i in range(ticks):
        t0 = time.perf_counter()
        env.step(action)
        work[i] = time.perf_counter() - t0
        if deadline:
            next_deadline += period
            time.sleep(max(0.0, next_deadline - time.monotonic()))
        else:
            time.sleep(period)
        stamps[i + 1] = time.monotonic()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    periods = np.diff(stamps)
    if deadline:
        lateness = stamps[1:] - (stamps[0] + period * np.arange(1, ticks + 1))
    else:  # the naive loop's own deadline: one period after its previous tick
        lateness = periods - period
    return {
        "periods": periods,
        "lateness": lateness,
        "work_s": float(work.mean()),
        "cpu_s": cpu,
        "wall_s": wall,
    }


def deadline_loop(rate_hz: float, seconds: float) -> dict:
    return _sleep_loop(rate_hz, seconds, deadline=True)


def naive_loop(rate_hz: float, seconds: float) -> dict:
    return _sleep_loop(rate_hz, seconds, deadline=False)


def control_loop(rate_hz: float, seconds: float) -> dict:
    ticks = int(rate_hz * seconds)
    env = RobotEnv(NoopRobot(7), NullTask(ticks))
    action = np.zeros(7, np.float32)
    marks: list[tuple[float, float]] = []

    def on_step(loop, result):  # CPU from clock.start() to the last tick, not the episode's set-up
        mark = (time.perf_counter(), time.process_time())
        marks[1:] = [mark]

    def policy(obs):
        if not marks:  # the first call comes right after clock.start() (reset and gc.collect are before)
            marks.append((time.perf_counter(), time.process_time()))
        return action

    loop = ControlLoop(env, policy=policy, rate_hz=rate_hz, on_step=on_step)
    loop.run(1)
    (wall0, cpu0), (wall1, cpu1) = marks
    report = loop.report()
    clock = report["clock"]
    return {
        # The first period runs from clock.start() to the first tick, as the sleep loops' first does.
        "periods": np.asarray(loop.clock.periods),
        "lateness": np.asarray(loop.clock.lateness),
        "work_s": sum(report["stages"][s]["mean_ms"] for s in ("policy", "command", "observe", "record"))
        * 1e-3,
        "cpu_s": cpu1 - cpu0,
        "wall_s": wall1 - wall0,
        "overruns": clock["overruns"],
        "contended_ticks": clock["contended_ticks"],
    }


LOOP_FNS = {"control_loop": control_loop, "deadline_sleep": deadline_loop, "naive_sleep": naive_loop}


def _condition(seconds: float, rounds: int) -> dict:
    """Every loop at every rate, in `rounds` rounds of `seconds` each, the loops' order rotated every
    round: a change in the machine's other load hits all of them alike."""
    runs = {}
    for rate in RATES:
        raw: dict[str, list[dict]] = {name: [] for name in LOOPS}
        for k in range(rounds):
            for name in LOOPS[k % len(LOOPS) :] + LOOPS[: k % len(LOOPS)]:
                raw[name].append(_in_thread(lambda fn=LOOP_FNS[name], rate=rate: fn(rate, seconds)))
        entry = {name: _figures(raw[name], 1.0 / rate) for name in LOOPS}
        ours = max(entry["control_loop"]["period_error_us_p99"], 1e-3)
        entry["p99_error_ratio_deadline"] = entry["deadline_sleep"]["period_error_us_p99"] / ours
        entry["p99_error_ratio_naive"] = entry["naive_sleep"]["period_error_us_p99"] / ours
        runs[str(rate)] = entry
    return {"rates": runs, "load_average_1min_at_end": os.getloadavg()[0]}


def run(quick: bool = False, load: int = 0) -> dict:
    """Idle, then (with `load` > 0) the same runs beside `load` busy processes."""
    if load < 0:
        raise ValueError(f"load must be 0 or more processes, got {load}")
    seconds, rounds = (0.5, 1) if quick else (1.0, 5)
    results = {
        "seconds_per_round": seconds,
        "rounds": rounds,
        "rates_hz": list(RATES),
        "load_processes": load,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": os.getloadavg()[0],
        "missed_means_late_by_more_than": f"{MISSED_FRACTION:.0%} of a period",
        "conditions": {"idle": _condition(seconds, rounds)},
    }
    if load:
        with cpu_load(load):
            results["conditions"][f"load {load}"] = _condition(seconds, rounds)
    return results


def format_table(r: dict) -> str:
    header = (
        f"loop benchmark: no-op robot, {r['rounds']} round(s) of {r['seconds_per_round']:g} s per loop and "
        f"rate (order rotated each round), {r['cpu_count']} cores, load average "
        f"{r['load_average_1min_at_start']:.2f} at start"
    )
    lines = [
        header,
        "control_loop   = the ControlLoop's full tick on its RateClock "
        "(deadline grid; spins only while uncontended)",
        "deadline_sleep = baseline: work; next_deadline += period; time.sleep(max(0, next_deadline - now))",
        "naive_sleep    = baseline: work; time.sleep(period)   (drifts by construction)",
    ]
    if r["load_processes"]:
        lines.append(
            f"load {r['load_processes']}: {r['load_processes']} busy Python processes beside the loop "
            "(processes: they compete for the cores, not for this process's GIL)"
        )
    lines += [
        (
            "jitter = |period - nominal|; "
            f"missed = ticks late by more than {r['missed_means_late_by_more_than']}; "
            "CPU = the loop's process, % of one core"
        ),
        "",
        (
            f"{'condition':<10}{'rate':>5}  {'loop':<15}{'period us':>10}{'Hz':>8}"
            f"{'jitter p50':>11}{'p99 us':>9}"
            f"{'max us':>9}{'missed':>14}{'CPU %':>7}{'work us':>9}"
        ),
    ]
    for condition, c in r["conditions"].items():
        for rate, entry in c["rates"].items():
            for name in LOOPS:
                m = entry[name]
                missed = f"{m['missed_deadlines']} ({m['missed_fraction']:.1%})"
                lines.append(
                    f"{condition:<10}{rate:>5}  {name:<15}"
                    f"{m['period_mean_us']:>10.1f}{m['achieved_hz']:>8.1f}"
                    f"{m['period_error_us_p50']:>11.1f}{m['period_error_us_p99']:>9.1f}"
                    f"{m['period_error_us_max']:>9.0f}"
                    f"{missed:>14}{m['cpu_fraction'] * 100:>7.1f}{m['overhead_us_per_tick']:>9.1f}"
                )
            ours = entry["control_loop"]
            lines.append(
                f"{'':>17}p99 jitter vs ControlLoop's: "
                f"deadline_sleep {entry['p99_error_ratio_deadline']:.2f}x, "
                f"naive_sleep {entry['p99_error_ratio_naive']:.2f}x; ControlLoop ticks that slept without a "
                f"spin (CPU contended): {ours['contended_ticks']} of {ours['ticks']}"
            )
    return "\n".join(lines)
