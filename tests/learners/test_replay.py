"""Replay buffers: ring order, zarr round trip, demonstrations from a real episode store, the
ControlLoop's transitions (real MuJoCo cube_lift with the scripted human)."""

import numpy as np
import pytest

from robot_rl.core import ControlLoop
from robot_rl.datasets import EpisodeStore
from robot_rl.errors import DatasetError
from robot_rl.learners.replay import ReplayBuffer, TransitionSink, replay_schema, transitions_from_store
from robot_rl.sim.arm_tasks import make_arm_env, make_expert
from robot_rl.tasks.teleops import ScriptedTeleop


def small_schema():
    return {
        "obs/state": ((2,), "float32"),
        "next_obs/state": ((2,), "float32"),
        "action": ((1,), "float32"),
        "prev_action": ((1,), "float32"),
        "reward": ((), "float32"),
        "mask": ((), "float32"),
        "intervened": ((), "bool"),
    }


def steps(start, n):
    x = np.arange(start, start + n, dtype=np.float32)
    return {
        "obs/state": np.stack([x, x], 1),
        "next_obs/state": np.stack([x + 1, x + 1], 1),
        "action": x[:, None],
        "prev_action": x[:, None] - 1,
        "reward": x,
        "mask": np.ones(n, np.float32),
        "intervened": np.zeros(n, bool),
    }


def test_ring_buffer_keeps_the_newest_and_round_trips_through_zarr(tmp_path):
    buffer = ReplayBuffer(5, small_schema())
    buffer.add_batch(steps(0, 3))
    buffer.add_batch(steps(3, 4))  # 7 added, capacity 5: 2..6 remain
    assert len(buffer) == 5 and buffer.total == 7
    np.testing.assert_array_equal(buffer.contents()["reward"], [2, 3, 4, 5, 6])
    loaded = ReplayBuffer.load(buffer.save(tmp_path / "buffer.zarr"))
    for key, values in buffer.contents().items():
        np.testing.assert_array_equal(loaded.contents()[key], values)
    assert loaded.total == 7 and loaded.capacity == 5
    buffer.add_batch(steps(7, 1))
    buffer.save(tmp_path / "buffer.zarr")  # replaces the old copy
    assert ReplayBuffer.load(tmp_path / "buffer.zarr").contents()["reward"][-1] == 7
    with pytest.raises(DatasetError, match="no replay buffer"):
        ReplayBuffer.load(tmp_path / "missing.zarr")


@pytest.mark.parametrize("how", ["all-zero chunk deleted", "chunk truncated", "metadata garbled"])
def test_a_damaged_saved_buffer_is_one_error_and_a_kill_between_renames_keeps_the_old_copy(tmp_path, how):
    buffer = ReplayBuffer(5, small_schema())
    buffer.add_batch(steps(0, 4))
    path = buffer.save(tmp_path / "buffer.zarr")
    if how == "all-zero chunk deleted":  # `intervened` is all False: zarr would read a missing chunk as that
        (path / "intervened/c/0").unlink()
    elif how == "chunk truncated":
        chunk = path / "reward/c/0"
        chunk.write_bytes(chunk.read_bytes()[:-3])
    else:
        (path / "zarr.json").write_text("{garbled")
    with pytest.raises(DatasetError, match="damaged"):
        ReplayBuffer.load(path)
    # save renames the old copy aside, then the new one into place: killed in between, load finds the old one
    buffer.save(tmp_path / "b2.zarr")
    (tmp_path / "b2.zarr").rename(tmp_path / "b2.zarr.old")
    assert ReplayBuffer.load(tmp_path / "b2.zarr").total == 4
    # and a save over a leftover `.old` (a save killed before it removed it) works
    buffer.save(tmp_path / "b2.zarr")
    (tmp_path / "b2.zarr.old").mkdir()
    (tmp_path / "b2.zarr.old" / "x").write_text("leftover")
    assert ReplayBuffer.load(buffer.save(tmp_path / "b2.zarr")).total == 4


DEMO_SCHEMA = {
    "obs/state": ((2,), "float32"),
    "action": ((1,), "float32"),
    "reward": ((), "float32"),
    "terminated": ((), "bool"),
    "truncated": ((), "bool"),
}


def test_demonstrations_from_a_store(tmp_path):
    store = EpisodeStore.create(tmp_path / "demos.zarr", DEMO_SCHEMA, fps=20)
    for n, terminated in ((4, True), (3, False)):
        x = np.arange(n, dtype=np.float32)
        store.append_episode(
            {
                "obs/state": np.stack([x, x], 1),
                "action": x[:, None],
                "reward": (x == n - 1).astype(np.float32),
                "terminated": np.arange(n) == n - 1 if terminated else np.zeros(n, bool),
                "truncated": np.zeros(n, bool) if terminated else np.arange(n) == n - 1,
            }
        )
    store.close()
    t = transitions_from_store(
        tmp_path / "demos.zarr",
        replay_schema({"state": __import__("gymnasium").spaces.Box(-1, 1, (2,), np.float32)}, 1),
    )
    # Episode 0: 4 steps, the last terminal (mask 0). Episode 1 ended on the time limit: its last
    # step has no next observation and is left out.
    assert len(t["action"]) == 4 + 2
    np.testing.assert_array_equal(t["next_obs/state"][:3, 0], [1, 2, 3])
    np.testing.assert_array_equal(t["mask"], [1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(
        t["prev_action"][:4, 0], [0, 0, 1, 2]
    )  # the first action stands in at the start
    assert t["intervened"].all()


def test_control_loop_transitions_carry_the_human_action_and_next_obs():
    env = make_arm_env("cube_lift", cameras=())
    expert = make_expert(env, seed=0)
    received = []
    policy_action = np.zeros(5, np.float32)
    teleop = ScriptedTeleop(expert, mode="schedule", takeover_steps=(10, 10), seed=0)
    loop = ControlLoop(
        env,
        lambda obs: policy_action,
        teleop,
        rate_hz=None,
        execute_k=1,
        recorder=TransitionSink(received.append),
    )
    with env:
        result = loop.run_episode(seed=0)
    assert len(received) == result.steps
    human = [t for t in received if t["intervened"]]
    assert len(human) == result.steps - 10 and not any(t["intervened"] for t in received[:10])
    assert all(np.array_equal(t["action"], policy_action) for t in received[:10])
    assert not np.array_equal(human[0]["action"], policy_action)  # the expert's, not the policy's
    for a, b in zip(received, received[1:]):
        np.testing.assert_array_equal(a["next_obs/state"], b["obs/state"])
        np.testing.assert_array_equal(b["prev_action"], a["action"])
    assert result.success and received[-1]["mask"] == 0.0 and received[-1]["reward"] == 1.0


def test_scripted_human_attention_schedule():
    env = make_arm_env("cube_lift", cameras=())
    never = ScriptedTeleop(make_expert(env), mode="schedule", attention=0.0, seed=0)
    always = ScriptedTeleop(
        make_expert(env), mode="schedule", attention=lambda: 1.0, takeover_steps=(3, 3), seed=0
    )
    with env:
        env.reset(seed=0)
        never.reset()
        always.reset()
        flags = [(never.read().intervening, always.read().intervening) for _ in range(6)]
    assert [n for n, _ in flags] == [False] * 6
    assert [a for _, a in flags] == [False, False, False, True, True, True]


def test_demonstrations_recorded_past_the_success_end_at_their_first_rewarded_step(tmp_path):
    store = EpisodeStore.create(tmp_path / "demos.zarr", DEMO_SCHEMA, fps=20)
    x = np.arange(6, dtype=np.float32)
    store.append_episode(  # success from step 3 on, recorded to the time limit (end_on_success=false)
        {
            "obs/state": np.stack([x, x], 1),
            "action": x[:, None],
            "reward": (x >= 3).astype(np.float32),
            "terminated": np.zeros(6, bool),
            "truncated": x == 5,
        }
    )
    store.close()
    space = __import__("gymnasium").spaces.Box(-1, 1, (2,), np.float32)
    whole = transitions_from_store(tmp_path / "demos.zarr", replay_schema({"state": space}, 1))
    cut = transitions_from_store(
        tmp_path / "demos.zarr", replay_schema({"state": space}, 1), end_at_success=True
    )
    assert len(whole["action"]) == 5 and whole["mask"].all()  # as recorded: the success goes on
    np.testing.assert_array_equal(cut["obs/state"][:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(cut["reward"], [0, 0, 0, 1])
    np.testing.assert_array_equal(cut["mask"], [1, 1, 1, 0])  # ended there, as the learner's episodes do
