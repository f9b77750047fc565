"""RateClock's scheduling rules (no timing assertions: the rules, on planted wake-up delays)."""

import threading
import time

import pytest

from robot_rl.core.clock import RateClock


def test_spin_is_capped_by_the_period_and_an_absolute_limit():
    assert RateClock(500).max_spin_s == pytest.approx(0.2 * 2e-3)
    assert RateClock(100).max_spin_s == pytest.approx(500e-6)  # not 20 % of 10 ms


def test_prompt_wake_ups_spin_late_ones_sleep_to_the_deadline():
    clock = RateClock(100)
    clock._overshoots.clear()
    clock._overshoots.extend([50e-6] * 64)  # a quiet CPU: spin 1.5x the worst + 30 us
    assert clock.spin_margin == pytest.approx(1.5 * 50e-6 + 30e-6)
    clock._overshoots.extend([2e-3] * 3)  # a rare late wake-up: a longer spin, up to the cap
    assert clock.spin_margin == pytest.approx(500e-6)
    clock._overshoots.extend([2e-3] * 7)  # one in ten late by milliseconds: contended, no spin
    assert clock.spin_margin == 0.0
    clock._overshoots.extend([50e-6] * 64)  # quiet again: the spin comes back
    assert clock.spin_margin > 0.0


def test_a_tick_less_than_half_a_period_late_keeps_the_grid():
    clock = RateClock(10)  # 100 ms period
    clock.start()
    late = time.monotonic() - 0.03
    clock._deadline = late
    clock.wait()  # an overrun: returns at once
    assert clock.overruns == 1 and clock._deadline == pytest.approx(late + 0.1)


@pytest.mark.parametrize("behind_s", [0.07, 0.25])
def test_a_tick_half_a_period_or_more_late_re_anchors_without_catch_up(behind_s):
    clock = RateClock(10)
    clock.start()
    clock._deadline = time.monotonic() - behind_s
    clock.wait()
    assert clock.overruns == 1
    assert clock._deadline - time.monotonic() == pytest.approx(0.1, abs=0.05)  # a full period from now


def test_a_time_source_sets_the_grid_and_a_stopped_source_holds_the_tick():
    """On another clock (the ROS clock under use_sim_time) the ticks follow that clock: a tick
    waits until the source passes its deadline, whatever the host time."""
    now = [100.0]
    clock = RateClock(10, time_source=lambda: now[0], poll_s=1e-4)
    clock.start()
    assert clock._deadline == pytest.approx(100.1)
    ticked = threading.Event()
    waiter = threading.Thread(target=lambda: (clock.wait(), ticked.set()))
    waiter.start()
    time.sleep(0.15)  # more than a period of host time: the source has not moved, no tick
    assert not ticked.is_set()
    now[0] = 100.1
    waiter.join(2.0)
    assert ticked.is_set() and clock.overruns == 0 and clock._deadline == pytest.approx(100.2)
    assert clock.periods[-1] == pytest.approx(0.1)  # measured on the source
    now[0] = 100.5  # far past the next deadline: an overrun, re-anchored on the source
    clock.wait()
    assert clock.overruns == 1 and clock._deadline == pytest.approx(100.6)
    now[0] = 3.0  # the source jumped back (a simulator reset): a tick now, a new grid from there
    clock.wait()
    assert (
        clock.overruns == 1
        and clock._deadline == pytest.approx(3.1)
        and clock.periods[-1] == pytest.approx(0.1)
    )


def test_reduced_timer_slack_only_while_spinning():
    """Contended (here: a planted run-queue wait), the thread gets its own timer slack back."""
    from robot_rl.core.clock import timer_slack

    seen = {}

    def in_a_fresh_thread():  # timer slack is per thread: leave the test runner's alone
        seen["own"] = timer_slack()
        clock = RateClock(1000)
        clock.start()
        seen["started"] = timer_slack()
        clock._contended.append(True)
        clock._contended_count = 1
        clock._probe = None  # keep the planted contention
        clock.wait()
        seen["contended"] = timer_slack()

    thread = threading.Thread(target=in_a_fresh_thread)
    thread.start()
    thread.join()
    if seen["own"] is None:
        pytest.skip("no timer slack here (not Linux)")
    assert seen["started"] == 1000 and seen["contended"] == seen["own"]


def test_the_probe_sees_more_busy_processes_than_cpus():
    import os
    import sys

    from robot_rl.commands.bench.loop import cpu_load
    from robot_rl.core.clock import ContentionProbe

    if not sys.platform.startswith("linux"):
        pytest.skip("the probe reads Linux's /proc")
    probe = ContentionProbe()
    with cpu_load(len(os.sched_getaffinity(0)) + 1):  # runnable tasks now outnumber this thread's CPUs
        samples = [probe.sample() for _ in range(5)]
    probe.close()
    assert any(samples)
