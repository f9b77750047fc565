"""Each rule of the safety filter on hand-computed cases."""

import numpy as np
import pytest

from robot_rl.core import ArraySpec, SafetyConfig, SafetyFilter

SPEC = ArraySpec((3,), low=-0.02, high=0.02)  # end-effector steps of at most 2 cm


def test_clips_to_the_action_range():
    f = SafetyFilter(SPEC)
    np.testing.assert_allclose(f(np.array([2.0, -5.0, 0.3])), [1.0, -1.0, 0.3])
    assert f.counts["clipped"] == 1
    f(np.array([0.1, 0.2, 0.3]))
    assert f.counts["clipped"] == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_nonfinite(bad):
    f = SafetyFilter(SPEC)
    assert f(np.array([0.0, bad, 0.0])) is None
    assert f.counts["nonfinite"] == 1


def test_per_step_delta_limit():
    f = SafetyFilter(SPEC, SafetyConfig(max_delta=0.25))
    np.testing.assert_allclose(f(np.array([0.0, 0.0, 0.0])), 0.0)
    np.testing.assert_allclose(f(np.array([1.0, -1.0, 0.1])), [0.25, -0.25, 0.1])
    np.testing.assert_allclose(f(np.array([1.0, -1.0, 0.1])), [0.5, -0.5, 0.1])
    assert f.counts["delta_limited"] == 2
    f.reset()
    np.testing.assert_allclose(f(np.array([1.0, 1.0, 1.0])), 1.0)  # no history after a reset


def test_workspace_box_in_delta_mode():
    cfg = SafetyConfig(workspace_low=(0.0, -0.1, 0.1), workspace_high=(0.5, 0.1, 0.4))
    f = SafetyFilter(SPEC, cfg)
    # At x = 0.49 a full +2 cm step would leave the box: only 1 cm is allowed (normalized 0.5).
    out = f(np.array([1.0, 0.0, 0.0]), {"ee_pos": np.array([0.49, 0.0, 0.2])})
    np.testing.assert_allclose(out, [0.5, 0.0, 0.0], atol=1e-6)
    assert f.counts["workspace_limited"] == 1
    # Inside with room to spare: untouched.
    out = f(np.array([-1.0, 1.0, 0.5]), {"ee_pos": np.array([0.2, 0.0, 0.2])})
    np.testing.assert_allclose(out, [-1.0, 1.0, 0.5], atol=1e-6)
    # Outside the box: steps back toward it, as far as the action range allows.
    out = f(np.array([0.0, 0.0, 0.0]), {"ee_pos": np.array([0.2, 0.0, 0.5])})
    np.testing.assert_allclose(out, [0.0, 0.0, -1.0], atol=1e-6)


def test_workspace_box_in_absolute_mode():
    spec = ArraySpec((2,), low=-1.0, high=1.0)  # absolute x, y targets in metres
    cfg = SafetyConfig(
        workspace_low=(-0.5, 0.0), workspace_high=(0.5, 0.5), position_dims=(0, 1), position_mode="absolute"
    )
    f = SafetyFilter(spec, cfg)
    np.testing.assert_allclose(f(np.array([0.9, -0.9]), {"ee_pos": np.zeros(2)}), [0.5, 0.0], atol=1e-6)


def test_workspace_needs_the_position():
    f = SafetyFilter(SPEC, SafetyConfig(workspace_low=(0, 0, 0), workspace_high=(1, 1, 1)))
    with pytest.raises(ValueError, match="ee_pos"):
        f(np.zeros(3), {})


def test_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        SafetyFilter(SPEC)(np.zeros(4))


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_delta=0), dict(watchdog_s=-1), dict(position_mode="relative"), dict(workspace_low=(0, 0, 0))],
)
def test_config_is_validated(kwargs):
    with pytest.raises(ValueError):
        SafetyConfig(**kwargs)


@pytest.mark.parametrize("dtype", [complex, str, object, bool])
def test_non_real_actions_are_refused_like_wrong_shapes(dtype):
    """A complex action used to pass with only NumPy's warning, its imaginary part dropped."""
    safety = SafetyFilter(SPEC)
    action = np.zeros(SPEC.shape).astype(dtype)
    if dtype is complex:
        action += 0.5j
    with pytest.raises(ValueError, match="real numbers"):
        safety(action)
    assert safety(np.zeros(SPEC.shape)) is not None


def test_the_watchdog_measures_its_timeout_on_the_clock_it_is_given():
    """Under use_sim_time the loop's clock is the ROS clock: a simulator slower than real time must
    not trip the watchdog between two ticks, and one whose commands stop in its time does."""
    import threading
    import time

    from robot_rl.core.safety import Watchdog

    now, stops = [0.0], []
    dog = Watchdog(0.1, lambda: stops.append(now[0]), threading.Lock(), clock=lambda: now[0])
    try:
        dog.arm()
        time.sleep(0.3)  # three timeouts of host time, none of the given clock's
        assert stops == []
        now[0] = 0.05
        dog.feed()
        now[0] = 0.2  # 0.15 of the clock since the last command
        deadline = time.monotonic() + 2.0
        while not stops and time.monotonic() < deadline:
            time.sleep(0.005)
        assert stops == [0.2] and dog.trips == 1
        now[0] = 0.0  # the clock jumps back (a simulator reset): re-armed from there, no trip
        dog.feed()
        now[0] = -5.0
        time.sleep(0.1)
        assert dog.trips == 1
    finally:
        dog.close()
