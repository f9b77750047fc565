"""Every launch file parses, declares its arguments (with descriptions and defaults), uses only
arguments it declares, and starts only executables and parameters that exist, with values of
the types the nodes declare (rclpy refuses a parameter whose type differs from its default's).
`ros2 launch` itself needs ROS 2, which this machine lacks: the XML is checked as
launch_ros's frontend reads it (values typed by YAML)."""

import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from robot_rl.commands import ros_nodes as nodes
from robot_rl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = sorted((ROOT / "robot_rl" / "ros" / "launch").glob("*.launch.xml"))
VAR = re.compile(r"\$\(var ([A-Za-z0-9_]+)\)")
BUILTIN_PARAMS = {"use_sim_time"}  # every rclpy node has it


def test_the_five_launch_files_are_there():
    assert {p.name for p in LAUNCH} == {
        "arm_collect.launch.xml",
        "arm_policy.launch.xml",
        "arm_hil_serl_actor.launch.xml",
        "car_collect.launch.xml",
        "car_fastrlap.launch.xml",
    }


def yaml_typed(text: str):
    value = yaml.safe_load(text)
    return text if value is None else value  # launch_ros: an empty value stays the string ""


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_launch_file(path):
    root = ET.parse(path).getroot()
    assert root.tag == "launch"
    args = {a.get("name"): a for a in root.findall("arg")}
    for name, a in args.items():
        assert a.get("default") is not None and a.get("description"), (
            f"{name}: declare a default and a description"
        )
    for needed in (
        "robot_config",
        "checkpoint",
        "namespace",
        "use_sim_time",
        "driver_launch",
        "camera_launch",
    ):
        assert needed in args
    assert "dataset" in args or "demos" in args
    used = {v for el in root.iter() for value in el.attrib.values() for v in VAR.findall(value)}
    assert used <= set(args), f"undeclared arguments {used - set(args)}"
    includes = root.findall("include")
    assert {VAR.findall(i.get("file"))[0] for i in includes} == {"driver_launch", "camera_launch"}
    assert all(i.get("if") for i in includes)  # an empty argument starts nothing

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (node,) = root.findall("node")
    assert node.get("exec") in scripts and node.get("pkg") is None  # a console script on PATH
    command, kind = node.get("args").split()
    assert command == "ros" and kind in nodes.NODES
    assert node.get("namespace") == "$(var namespace)"
    declared = {p.name: p for p in nodes.NODES[kind]}
    params = {p.get("name"): p.get("value") for p in node.findall("param")}
    assert set(params) <= set(declared) | BUILTIN_PARAMS, f"unknown parameters {set(params) - set(declared)}"
    assert {"robot_config", "checkpoint", "teleop"} <= set(params) and set(params) & {"dataset", "demos"}
    for name, value in params.items():
        default = args[VAR.fullmatch(value).group(1)].get("default") if VAR.fullmatch(value) else value
        typed = yaml_typed(default)
        expected = bool if name in BUILTIN_PARAMS else declared[name].type
        assert type(typed) is expected, (
            f"{path.name}: {name}={default!r} is a {type(typed).__name__}, "
            f"the node declares {expected.__name__}"
        )
    assert nodes.robot_config(args["robot_config"].get("default")).kind == (
        "ros_car" if path.name.startswith("car") else "ros_arm"
    )


def test_node_parameters_have_types_and_descriptions():
    for kind, params in nodes.NODES.items():
        names = [p.name for p in params]
        assert len(names) == len(set(names)), kind
        for p in params:
            assert isinstance(p.default, p.type) and p.description, (kind, p.name)


def test_robot_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no robot config nope"):
        nodes.robot_config("nope")
    with pytest.raises(ConfigError, match="ros_arm or ros_car"):
        nodes.robot_config("widowx250")
