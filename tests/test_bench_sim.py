"""`robot-rl bench sim`'s baseline replays the vector env's physics exactly, also when an episode
ends on the last timed step (the vector env then auto-resets that world; the replay must too)."""

import itertools

import numpy as np
from omegaconf import OmegaConf

from robot_rl.commands.bench import sim
from robot_rl.config import CONF_DIR


def test_the_raw_replay_ends_where_the_vector_env_does(monkeypatch):
    ticks = itertools.count()  # a clock that advances one second per reading: a known number of steps
    monkeypatch.setattr(sim.time, "perf_counter", lambda: float(next(ticks)))
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "env" / "reach.yaml"), {"cameras": [], "max_steps": 3})
    result = sim._vector_and_raw(cfg, num_envs=2, seconds=7, rng=np.random.default_rng(0))
    # 6 steps of 3-step episodes: both worlds were reset after the last step, and twice in all
    assert result["steps_timed"] == 6 and result["resets"] == 4
    assert result["same_final_state"] is True
