"""Every launch file parses, declares its arguments (with descriptions and defaults), uses only
arguments it declares, and starts only executables and parameters that exist, with values of
the types the nodes declare (rclpy refuses a parameter whose type differs from its default's).
Each also takes a params_file (a ROS 2 parameters file, applied last); the ones shipped in
launch/params/ set only parameters the node declares, with its types.
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
LAUNCH_DIR = ROOT / "robot_rl" / "ros" / "launch"
LAUNCH = sorted(LAUNCH_DIR.glob("*.launch.xml"))
PARAMS = sorted((LAUNCH_DIR / "params").glob("*.yaml"))
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
        "params_file",
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
    *named, from_file = node.findall("param")
    # The params file comes last, so its values override the arguments' (launch_ros passes the
    # parameters in order, and the last value of a parameter wins); by default it sets nothing.
    assert from_file.attrib == {"from": "$(var params_file)"}
    assert args["params_file"].get("default") == "$(dirname)/params/none.yaml"
    assert (path.parent / "params" / "none.yaml").is_file()
    params = {p.get("name"): p.get("value") for p in named}
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


def launch_nodes() -> dict[str, tuple[str, str]]:
    """{launch file stem: (node name, node kind)}"""
    nodes_by_file = {}
    for path in LAUNCH:
        (node,) = ET.parse(path).getroot().findall("node")
        nodes_by_file[path.name.removesuffix(".launch.xml")] = (node.get("name"), node.get("args").split()[1])
    return nodes_by_file


def test_the_params_files_are_there():
    assert {p.name for p in PARAMS} == {"none.yaml", "arm_policy.example.yaml"}
    assert yaml.safe_load((LAUNCH_DIR / "params" / "none.yaml").read_text()) == {
        "/**": {"ros__parameters": {}}
    }


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_params_file(path):
    """A ROS 2 parameters file ({node: {ros__parameters: {name: value}}}) for the node of the
    launch file it is named after (X.example.yaml: X.launch.xml), or for every node (none.yaml);
    its parameters are declared by the node, with the node's types."""
    launches = launch_nodes()
    stem = path.name.removesuffix(".yaml").removesuffix(".example")
    targets = [launches[stem]] if stem in launches else list(launches.values())
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data
    for key, body in data.items():
        assert isinstance(body, dict) and set(body) == {"ros__parameters"}, f"{key}: only ros__parameters"
        values = body["ros__parameters"]
        assert isinstance(values, dict)
        for name, kind in targets:
            assert key in ("/**", f"/**/{name}", f"/{name}", name), f"{key} does not name the node {name}"
            declared = {p.name: p.type for p in nodes.NODES[kind]} | {p: bool for p in BUILTIN_PARAMS}
            assert set(values) <= set(declared), (
                f"{path.name}: {kind} declares no {set(values) - set(declared)}"
            )
            for param, value in values.items():
                assert type(value) is declared[param], (
                    f"{path.name}: {param}={value!r} is no {declared[param]}"
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
