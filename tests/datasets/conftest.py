"""What the dataset format tests share: one collected store, read by all of them, the check of a
command's one-line refusal, and a short diffusion_bc training on an imported store."""

import hashlib
from pathlib import Path

import pytest

from robot_rl.cli import main


def _digest(root: Path) -> str:
    files = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        files.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return files.hexdigest()


@pytest.fixture(scope="session")
def collected_store(tmp_path_factory) -> Path:
    """A reach store of 2 episodes with a 32x32 front camera, collected once for the session.
    Read it only: a test that writes works in its own tmp_path (checked when the session ends)."""
    path = tmp_path_factory.mktemp("collected") / "reach.zarr"
    argv = ["collect", "env=reach", "episodes=2", "loop.rate_hz=null", "env.image_size=32", f"out={path}"]
    assert main(argv) == 0
    before = _digest(path)
    yield path
    assert _digest(path) == before, f"a test changed the shared store {path}"


@pytest.fixture
def refused(capsys):
    """refused(*argv): the error line a command that exits 2 ends its stderr with, no traceback
    before it; with alone=True, the only thing the command writes to stderr (no progress bar)."""

    def run(*argv: str, alone: bool = False) -> str:
        if alone:
            capsys.readouterr()
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith("robot-rl: error: ")
        assert not alone or err == line + "\n", err
        return line

    return run


@pytest.fixture
def diffusion_bc_trains(tmp_path):
    """diffusion_bc_trains(store): a few steps of diffusion_bc on a store train and save a checkpoint."""

    def train(store) -> None:
        out = tmp_path / "diffusion_bc"
        argv = [
            "train",
            "learner=diffusion_bc",
            f"dataset={store}",
            "learner.steps=3",
            "learner.batch_size=4",
            "learner.policy.down_dims=[8,16]",
            "learner.policy.diffusion_step_embed_dim=8",
            "learner.device=cpu",
            f"out={out}",
        ]
        assert main(argv) == 0
        assert (out / "checkpoint").exists()

    return train
