"""Device selection falls back to the CPU cleanly; the prefetcher keeps the sampling order (so
runs stay reproducible) and hands sampling errors to the training loop; agents take CPU inputs
and give CPU actions whatever their device; checkpoints are CPU tensors."""

import numpy as np
import pytest
import torch

from robot_rl.cli import main
from robot_rl.errors import ConfigError
from robot_rl.policies.iql import IQLAgent, IQLConfig
from robot_rl.utils.device import Prefetcher, resolve_device, to_device


def test_auto_is_cuda_only_when_there_is_one():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            resolve_device("cuda")


def test_cuda_on_a_cpu_machine_is_one_line_from_the_cli(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "learner=iql", "env=reach", "dataset=nowhere.zarr", "learner.device=cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sees no CUDA device" in err


def test_prefetcher_keeps_the_order_and_raises_sampling_errors():
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    with Prefetcher(
        lambda: {"x": torch.as_tensor(rng_a.normal(size=3))}, torch.device("cpu"), depth=3
    ) as batches:
        got = [next(batches)["x"] for _ in range(10)]
    for x in got:
        np.testing.assert_array_equal(x.numpy(), rng_b.normal(size=3))
    calls = {"n": 0}

    def failing():
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("bad index")
        return {"x": torch.zeros(1)}

    with Prefetcher(failing, torch.device("cpu")) as batches:
        next(batches), next(batches)
        with pytest.raises(ValueError, match="bad index"):
            next(batches)


def test_agents_take_cpu_inputs_and_save_cpu_checkpoints(tmp_path):
    device = resolve_device("auto")
    agent = IQLAgent(IQLConfig(state_dim=3, action_dim=2, hidden=(8,))).to(device)
    batch = {
        "obs/state": torch.randn(4, 3),
        "next_obs/state": torch.randn(4, 3),
        "action": torch.rand(4, 2) - 0.5,
        "reward": torch.ones(4),
        "mask": torch.ones(4),
    }
    agent.update(batch)  # CPU batch, agent wherever auto put it
    assert agent.act({"state": torch.randn(2, 3)}).device.type == "cpu"
    from safetensors.torch import load_file

    path = agent.save(tmp_path / "iql")
    assert all(t.device.type == "cpu" for t in load_file(path / "model.safetensors").values())
    assert to_device({"a": {"b": torch.zeros(1)}, "c": None}, torch.device("cpu"))["c"] is None


def test_compiled_iql_update_matches_the_eager_one():
    import shutil

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile's CPU backend needs a C++ compiler, and this machine has none")
    from robot_rl.utils.device import maybe_compile

    torch.manual_seed(0)
    eager = IQLAgent(IQLConfig(state_dim=3, action_dim=2, hidden=(8,)))
    compiled = IQLAgent(IQLConfig(state_dim=3, action_dim=2, hidden=(8,)))
    compiled.load_state_dict(eager.state_dict())
    compiled.losses = maybe_compile(compiled.losses, True)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        batch = {
            "obs/state": torch.randn(16, 3, generator=g),
            "next_obs/state": torch.randn(16, 3, generator=g),
            "action": torch.rand(16, 2, generator=g) - 0.5,
            "reward": torch.rand(16, generator=g),
            "mask": torch.ones(16),
        }
        a, b = eager.update(batch), compiled.update(batch)
        for key in ("q_loss", "v_loss", "actor_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6)
