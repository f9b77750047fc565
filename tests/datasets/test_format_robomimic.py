"""robomimic HDF5 import and export (robot_rl/datasets/formats/robomimic.py).

robomimic itself is not a test dependency: robomimic 0.3.0 requires egl_probe (built from source
with cmake), tensorboard, torchvision and more. Its SequenceDataset needs only h5py, numpy and
torch, so `test_read_as_sequence_dataset_reads_it` reads the exported file with h5py the way
SequenceDataset does (robomimic/utils/dataset.py: load_demo_info, load_dataset_in_memory,
get_sequence_from_demo), and `test_robomimic_sequence_dataset` runs the real one where robomimic
is installed (checked with robomimic 0.3.0, installed without its dependencies).
"""

import json

import h5py
import numpy as np
import pytest

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore


@pytest.fixture(scope="module")
def exported(collected_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("robomimic") / "reach.hdf5"
    assert main(["dataset", "export", str(collected_store), str(out), "--to", "robomimic"]) == 0
    return out


def test_round_trip_is_exact(collected_store, exported, tmp_path):
    back = tmp_path / "back.zarr"
    assert main(["dataset", "import", str(exported), str(back), "--from", "robomimic"]) == 0
    a, b = EpisodeStore.open(collected_store), EpisodeStore.open(back)
    assert a.schema == b.schema and len(a.keys) == 8  # state, front camera, action, reward, 4 flags
    assert np.array_equal(a.episode_ends, b.episode_ends)
    for key in a.keys:
        assert np.array_equal(a.array(key)[:], b.array(key)[:]), key
    assert b.fps == a.fps == 20.0 and b.attrs["task"] == a.attrs["task"]
    assert b.attrs["source"] == f"robomimic:{exported.resolve()}"


def sequence(f, demo: str, key: str, start: int, length: int) -> np.ndarray:
    """get_sequence_from_demo with pad_seq_length: steps past the end repeat the last one."""
    n = f[f"data/{demo}"].attrs["num_samples"]
    seq = f[f"data/{demo}/{key}"][start : min(n, start + length)]
    return np.concatenate([seq, np.repeat(seq[-1:], start + length - len(seq), axis=0)])


def test_read_as_sequence_dataset_reads_it(collected_store, exported):
    source = EpisodeStore.open(collected_store)
    with h5py.File(exported, "r", swmr=True, libver="latest") as f:
        demos = list(f["data"].keys())  # load_demo_info: every key of data is a demo_<i>
        demos = [demos[i] for i in np.argsort([int(d[5:]) for d in demos])]
        assert demos == ["demo_0", "demo_1"]
        assert f["data"].attrs["total"] == source.n_steps
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args["type"] == 2 and env_args["env_kwargs"]["control_freq"] == 20.0
        assert env_args["env_name"] == "reach"
        for index, demo in enumerate(demos):
            episode = source.episode(index)
            group = f[f"data/{demo}"]
            n = group.attrs["num_samples"]
            assert n == len(episode["action"])
            assert json.loads(group.attrs["ep_meta"])["lang"] == source.attrs["task"]
            assert set(group["obs"]) == set(group["next_obs"]) == {"state", "front_image"}
            for key in ("state", "front_image"):  # load_dataset_in_memory
                obs, following = group[f"obs/{key}"][()], group[f"next_obs/{key}"][()]
                assert obs.shape[0] == following.shape[0] == n
                assert np.array_equal(following, np.concatenate([obs[1:], obs[-1:]]))
            image = group["obs/front_image"][()]
            assert image.dtype == np.uint8 and image.shape == (n, 32, 32, 3)  # HWC uint8
            assert np.array_equal(image, episode["obs/image/front"])
            for key, ours in (("actions", "action"), ("rewards", "reward"), ("dones", "terminated")):
                values = group[key][()].astype("float32")
                assert values.shape[0] == n
                assert np.array_equal(values, episode[ours].astype("float32"))
            assert group["dones"].dtype.kind == "i" and group["dones"][-1] == episode["terminated"][-1]
        window = sequence(f, "demo_1", "actions", n - 2, 4)  # the last window of demo_1, padded
        assert np.array_equal(window[:2], episode["action"][-2:]) and np.array_equal(window[3], window[1])


def test_robomimic_sequence_dataset(collected_store, exported):
    ObsUtils = pytest.importorskip("robomimic.utils.obs_utils", reason="robomimic is not installed")
    from robomimic.utils.dataset import SequenceDataset

    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": ["state"], "rgb": ["front_image"]}})
    dataset = SequenceDataset(
        hdf5_path=str(exported),
        obs_keys=("state", "front_image"),
        dataset_keys=("actions", "rewards", "dones"),
        seq_length=4,
        hdf5_cache_mode="all",
    )
    batch = dataset[0]
    assert len(dataset) == EpisodeStore.open(collected_store).n_steps
    assert batch["obs"]["state"].shape == (4, 12) and batch["obs"]["front_image"].shape == (4, 32, 32, 3)
    assert batch["actions"].shape == (4, 3) and batch["next_obs"]["state"].shape == (4, 12)


def write_lift(path, lang: str | None = "lift the cube", control_freq: float | None = 10):
    """A file as robomimic's scripts write robosuite demos: several low-dim obs, an agentview camera,
    next_obs, float64 actions and rewards, int dones, MuJoCo states, a filter-key mask."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i, n in ((1, 6), (10, 4), (2, 5)):  # robomimic orders demos by number: 1, 2, 10
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = n
            demo["obs/robot0_eef_pos"] = np.full((n, 3), i, dtype=np.float64)
            demo["obs/robot0_gripper_qpos"] = rng.random((n, 2))
            demo["obs/agentview_image"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
            demo["next_obs/robot0_eef_pos"] = rng.random((n, 3))
            demo["actions"] = rng.uniform(-1, 1, (n, 7))
            demo["rewards"] = rng.random(n)
            demo["dones"] = np.r_[np.zeros(n - 1, dtype=np.int64), 1]
            demo["states"] = rng.random((n, 10))
            if lang:
                demo.attrs["ep_meta"] = json.dumps({"lang": lang})
        kwargs = {} if control_freq is None else {"control_freq": control_freq}
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": kwargs})
        data.attrs["total"] = 15
        f["mask/train"] = np.array([b"demo_1"])


def test_import_of_a_robosuite_file(tmp_path, refused):
    src, out = tmp_path / "lift.hdf5", tmp_path / "lift.zarr"
    write_lift(src)
    line = refused("dataset", "import", str(src), str(out), "--from", "robomimic")
    assert "has no obs/state for obs/state" in line and "obs/robot0_eef_pos" in line
    assert "next_obs" not in line and "--key obs/state=NAME" in line and not out.exists()
    joined = "obs/state=obs/robot0_eef_pos+obs/robot0_gripper_qpos"
    assert main(["dataset", "import", str(src), str(out), "--from", "robomimic", "--key", joined]) == 0
    store = EpisodeStore.open(out)
    assert list(store.episode_lengths) == [6, 5, 4]  # demo_1, demo_2, demo_10
    assert store.fps == 10.0 and store.attrs["task"] == "lift the cube"
    assert set(store.keys) == {"obs/state", "obs/image/agentview", "action", "reward", "terminated", "states"}
    episode = store.episode(2)
    assert episode["obs/state"].dtype == np.float32 and episode["obs/state"].shape == (4, 5)
    assert np.all(episode["obs/state"][:, :3] == 10)  # demo_10's eef_pos first, then the gripper
    assert episode["action"].dtype == np.float32 and episode["reward"].dtype == np.float32
    assert episode["terminated"].dtype == np.bool_ and list(episode["terminated"]) == [False] * 3 + [True]
    assert store.schema["states"]["dtype"] == "float64"  # other keys keep their dtype
    assert store.schema["obs/image/agentview"] == {"shape": [8, 8, 3], "dtype": "uint8"}


def test_fps_default_and_differing_tasks(tmp_path):
    src, out = tmp_path / "lift.hdf5", tmp_path / "lift.zarr"
    write_lift(src, lang=None, control_freq=None)
    with h5py.File(src, "a") as f:
        f["data/demo_2"].attrs["ep_meta"] = json.dumps({"lang": "another task"})
    key = ["--key", "obs/state=obs/robot0_eef_pos"]
    assert main(["dataset", "import", str(src), str(out), "--from", "robomimic", *key]) == 0
    store = EpisodeStore.open(out)
    assert store.fps == 20.0 and store.attrs["task"] is None  # the yaml's default; no one task


def test_train_diffusion_bc_on_the_import(exported, tmp_path, diffusion_bc_trains):
    imported = tmp_path / "imported.zarr"
    assert main(["dataset", "import", str(exported), str(imported), "--from", "robomimic"]) == 0
    diffusion_bc_trains(imported)


def test_refusals(collected_store, exported, tmp_path, refused):
    out = str(tmp_path / "out.zarr")
    text = tmp_path / "notes.hdf5"
    text.write_text("not hdf5")
    assert "is not an HDF5 file" in refused("dataset", "import", str(text), out, "--from", "robomimic")
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("other")
    line = refused("dataset", "import", str(tmp_path / "empty.hdf5"), out, "--from", "robomimic")
    assert "not a robomimic dataset (no data group)" in line
    src = tmp_path / "lift.hdf5"
    write_lift(src)
    with h5py.File(src, "a") as f:
        f["data/demo_2/dones"][0] = 2
    key = "obs/state=obs/robot0_eef_pos"
    line = refused("dataset", "import", str(src), out, "--from", "robomimic", "--key", key)
    assert "demo_2: dones holds values other than 0 and 1, so it is not terminated" in line
    assert not (tmp_path / "out.zarr").exists()
    joined = "obs/state=obs/a+obs/b"
    line = refused(
        "dataset",
        "export",
        str(collected_store),
        str(tmp_path / "x.hdf5"),
        "--to",
        "robomimic",
        "--key",
        joined,
    )
    assert "export writes one" in line and not (tmp_path / "x.hdf5").exists()
    line = refused("dataset", "export", str(collected_store), str(exported), "--to", "robomimic")
    assert "already exists" in line
