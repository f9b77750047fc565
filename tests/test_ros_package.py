"""robot_rl is also a ROS 2 package that colcon builds (package.xml, setup.py): the manifest is a
valid format 3 package.xml that agrees with pyproject.toml, colcon can read setup.py's options and
finds in them the ament index marker and package.xml, and the files installed beside the Python
package (launch files, their params files, the `ros2 run` executables) are all listed.
tests/test_wheel.py checks the same files in the installed wheel. colcon and ROS 2 are not here:
setup.py is read the way colcon-python-setup-py reads it (colcon-ros then runs `setup.py install`)."""

import ast
import os
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
MANIFEST = ET.parse(ROOT / "package.xml").getroot()
NODES = ("policy", "collect", "actor")
LAUNCH = ROOT / "robot_rl" / "ros" / "launch"

# What a ROS 2 install prefix must hold besides the Python package: {destination: source}.
EXPECTED = {
    "share/ament_index/resource_index/packages/robot_rl": "resource/robot_rl",
    "share/robot_rl/package.xml": "package.xml",
    **{f"share/robot_rl/launch/{p.name}": str(p.relative_to(ROOT)) for p in LAUNCH.glob("*.launch.xml")},
    **{
        f"share/robot_rl/launch/params/{p.name}": str(p.relative_to(ROOT))
        for p in LAUNCH.glob("params/*.yaml")
    },
    **{f"lib/robot_rl/{node}": f"resource/lib/robot_rl/{node}" for node in NODES},
}

# package_format3.xsd (REP 149): these in this order, then url*, author*, the dependencies in any
# order, group_depend*, member_of_group*, export?
HEAD = ("name", "version", "description", "maintainer", "license", "url", "author")
DEPENDS = {
    "build_depend",
    "build_export_depend",
    "buildtool_depend",
    "buildtool_export_depend",
    "exec_depend",
    "depend",
    "doc_depend",
    "test_depend",
    "conflict",
    "replace",
}
RANK = {
    **{t: i for i, t in enumerate(HEAD)},
    **dict.fromkeys(DEPENDS, len(HEAD)),
    "group_depend": len(HEAD) + 1,
    "member_of_group": len(HEAD) + 2,
    "export": len(HEAD) + 3,
}


def test_package_xml_is_format_3_in_schema_order():
    assert MANIFEST.tag == "package" and MANIFEST.attrib == {"format": "3"}
    tags = [el.tag for el in MANIFEST]  # comments are not elements here
    assert set(tags) <= set(RANK), f"unknown elements {set(tags) - set(RANK)}"
    assert [RANK[t] for t in tags] == sorted(RANK[t] for t in tags), f"out of schema order: {tags}"
    for once in ("name", "version", "description", "export"):
        assert tags.count(once) == 1, once
    assert tags.count("maintainer") >= 1 and tags.count("license") >= 1
    assert all(m.get("email") and m.text for m in MANIFEST.findall("maintainer"))
    assert re.fullmatch(r"[a-z](_?[a-z0-9]+)*", MANIFEST.find("name").text)
    assert re.fullmatch(r"\d+\.\d+\.\d+", MANIFEST.find("version").text)
    assert [(e.tag, e.text) for e in MANIFEST.find("export")] == [("build_type", "ament_python")]


def test_package_xml_agrees_with_pyproject():
    text = {tag: MANIFEST.find(tag).text for tag in ("name", "version", "description", "license")}
    assert text == {
        "name": PYPROJECT["name"].replace("-", "_"),  # what `import robot_rl` and ROS call it
        "version": PYPROJECT["version"],
        "description": PYPROJECT["description"],
        "license": PYPROJECT["license"],
    }
    assert [m.text for m in MANIFEST.findall("maintainer")] == [a["name"] for a in PYPROJECT["authors"]]
    depends = {el.text for el in MANIFEST.findall("exec_depend")}
    assert {"rclpy", "launch_xml", "launch_ros", "python3-numpy"} <= depends


def test_catkin_pkg_reads_it_as_colcon_ros_does():
    """colcon-ros identifies a ROS package with catkin_pkg's parse_package: a manifest it rejects
    is no package at all."""
    package = pytest.importorskip("catkin_pkg.package")
    warnings = []
    pkg = package.parse_package(str(ROOT), warnings=warnings)
    pkg.validate()
    assert not warnings
    assert (pkg.package_format, pkg.name, pkg.version) == (3, "robot_rl", PYPROJECT["version"])
    assert pkg.get_build_type() == "ament_python"
    assert {d.name for d in pkg.exec_depends} >= {"rclpy", "std_msgs", "sensor_msgs", "launch_ros"}


def colcon_read_setup_py() -> dict:
    """setup()'s options as colcon-python-setup-py gets them: setup.py run up to its configuration,
    then repr() in a child Python and ast.literal_eval here."""
    code = (
        "import sys\n"
        "from distutils.core import run_setup\n"
        "dist = run_setup('setup.py', script_args=('--dry-run',), stop_after='config')\n"
        "skip = ('cmdclass', 'distclass', 'ext_modules', 'metadata')\n"
        "data = {k: v for k, v in dist.__dict__.items() if not k.startswith('_') and not callable(v)\n"
        "        and k not in skip and k not in dist.display_option_names}\n"
        "data['metadata'] = {k: v for k, v in dist.metadata.__dict__.items()\n"
        "                    if k not in ('license_files', 'provides_extras')}\n"
        "sys.stdout.write(repr(data))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    return ast.literal_eval(out.stdout)  # fails on an option whose repr is no literal


def test_colcon_reads_setup_py_and_finds_what_ament_python_needs():
    data = colcon_read_setup_py()
    assert (
        data["metadata"]["name"] == PYPROJECT["name"] and data["metadata"]["version"] == PYPROJECT["version"]
    )
    # colcon-core's get_data_files_mapping: {source: destination folder + the source's file name}
    installed = {
        f"{dest}/{os.path.basename(source)}": source
        for dest, sources in data["data_files"]
        for source in sources
    }
    assert installed == EXPECTED  # the marker and package.xml as colcon-ros looks for them, and the rest
    assert all((ROOT / source).is_file() for source in installed.values())
    assert data["entry_points"]["console_scripts"] == ["robot-rl = robot_rl.cli:main"]  # into PREFIX/bin


@pytest.mark.parametrize("node", NODES)
def test_ros2_run_executables(node):
    """What `ros2 run robot_rl <node>` runs: PREFIX/lib/robot_rl/<node>, a POSIX sh script that
    execs robot-rl from PREFIX/bin (else PATH). Executable here and in git, so in every install."""
    path = ROOT / "resource" / "lib" / "robot_rl" / node
    assert path.stat().st_mode & 0o777 == 0o755
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/bin/sh" and lines[-1] == f'exec "$robot_rl" ros {node} "$@"'
    subprocess.run(["sh", "-n", str(path)], check=True)  # parses
    staged = subprocess.run(
        ["git", "ls-files", "--stage", str(path.relative_to(ROOT))], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert not staged or staged.startswith("100755 "), f"git records {node} without its executable bit"


def test_ament_index_marker_is_empty():
    assert (ROOT / "resource" / "robot_rl").read_bytes() == b""
