"""The built wheel works outside the repository: it is built with `pip wheel .`, installed into a
new virtual environment, and `robot-rl` is run from a temporary folder, where the checkout is not
on the path. The new environment sees this one's site-packages (for torch, mujoco, ...) through a
plain path in a .pth file, so robot_rl's editable install here stays out of sight and no
dependency is installed twice. The install prefix is also a ROS 2 package prefix (what colcon
installs too): the ament index marker, package.xml, the launch files and the executables of
`ros2 run robot_rl ...` (tests/test_ros_package.py checks the package files themselves)."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROS_NODES = ("policy", "collect", "actor")


def tracked() -> list[str]:
    """The checkout's files: committed or new, but not ignored (nor deleted)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    return [name for name in files if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the tracked files: setuptools' build/ folder in a checkout keeps modules
    # deleted since, which would then ship, and this test would not see it.
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in tracked():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    # No build isolation: setuptools from this environment (the dev extra), no download.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        cwd=out,
        timeout=240,
    )
    (path,) = out.glob("robot_rl-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A new venv with the wheel installed; returns its bin folder."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        timeout=120,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "deps_from_test_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    return env_dir / "bin"


def run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "MUJOCO_GL": "egl",
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",  # the node it starts stays on this host
    }
    env.pop("PYTHONPATH", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_the_wheel_holds_exactly_the_packages_files(wheel):
    package = {p for p in tracked() if p.startswith("robot_rl/")}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert {n for n in names if n.startswith("robot_rl/")} == package  # none missing, none extra
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta and "Requires-Python: >=3.11" in meta
    requirements = [
        line.split(":", 1)[1].split(";")[0] for line in meta.splitlines() if line.startswith("Requires-Dist:")
    ]
    assert " torch>=2.13.0" in requirements and not [r for r in requirements if "==" in r], "ranges, not pins"


def test_the_wheel_holds_the_ros_package_files(wheel):
    """Beside the Python package, under PREFIX: what `ros2 launch robot_rl ...` and `ros2 run
    robot_rl ...` look for, executables with their mode (pip sets it from the wheel)."""
    launch = {p for p in tracked() if p.startswith("robot_rl/ros/launch/")}
    expected = {
        "share/ament_index/resource_index/packages/robot_rl",
        "share/robot_rl/package.xml",
        *(f"share/robot_rl/launch/{p.removeprefix('robot_rl/ros/launch/')}" for p in launch),
        *(f"lib/robot_rl/{node}" for node in ROS_NODES),
    }
    with zipfile.ZipFile(wheel) as zf:
        data = {
            i.filename.split(".data/data/", 1)[1]: i.external_attr >> 16
            for i in zf.infolist()
            if ".data/data/" in i.filename
        }
    assert set(data) == expected
    assert {name for name, mode in data.items() if mode & 0o111} == {f"lib/robot_rl/{n}" for n in ROS_NODES}


def test_robot_rl_runs_from_the_wheel_in_any_folder(installed, tmp_path):
    where = run(installed, tmp_path, "python", "-c", "import robot_rl; print(robot_rl.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), "imported the checkout, not the wheel"

    collect = run(installed, tmp_path, "robot-rl", "collect", "env=reach", "episodes=1")
    assert collect.returncode == 0, collect.stderr
    assert (tmp_path / "datasets" / "reach.zarr").is_dir()  # the data root is the working folder

    info = run(installed, tmp_path, "robot-rl", "dataset", "info", "datasets/reach.zarr", "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["episodes"] == 1

    launch = run(installed, tmp_path, "robot-rl", "ros", "launch-dir")
    assert launch.returncode == 0, launch.stderr
    assert len(list(Path(launch.stdout.strip()).glob("*.launch.xml"))) == 5


def test_the_install_prefix_is_a_ros_package_prefix(installed, tmp_path):
    prefix = installed.parent
    share = prefix / "share" / "robot_rl"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "robot_rl").is_file()
    assert (share / "package.xml").read_bytes() == (ROOT / "package.xml").read_bytes()
    for name in ("arm_policy.launch.xml", "params/none.yaml", "params/arm_policy.example.yaml"):
        assert (share / "launch" / name).read_bytes() == (ROOT / "robot_rl/ros/launch" / name).read_bytes()
    for node in ROS_NODES:
        assert os.access(prefix / "lib" / "robot_rl" / node, os.X_OK), node

    # `ros2 run robot_rl policy --ros-args --params-file ...`: the script runs this install's
    # robot-rl, whose node reads the params file (where rclpy is importable) and then stops, as it
    # has no checkpoint. robot-rl's one-line error either way.
    example = share / "launch" / "params" / "arm_policy.example.yaml"
    node = run(
        installed, tmp_path, str(prefix / "lib/robot_rl/policy"), "--ros-args", "--params-file", str(example)
    )
    assert node.returncode == 2, node.stderr
    assert "robot-rl: error: " in node.stderr, node.stderr
    if "rclpy is not importable" not in node.stderr:
        assert "/robot_rl_policy: " in node.stderr and "episodes=5, teleop='keyboard'" in node.stderr, (
            node.stderr
        )
        assert "the policy node needs a checkpoint" in node.stderr, node.stderr
