"""Wrong-typed config values never get past the door: every command, every key.

Two layers: every key of every command's composed config, given a value of the wrong kind, fails
the type check (exhaustive, on the composed config); and a property test over the real CLI
(hypothesis draws the command, the key and the wrong value) that ends with exit 2, one line on
stderr, no traceback and no file created.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from robot_rl.cli import main
from robot_rl.config import CONF_DIR, check_types, compose, expected_kind
from robot_rl.errors import ConfigError

# (argv prefix, config name, group choices): every command that takes config overrides, with the
# group choices that bring in every learner, robot and env kind.
COMMANDS = [
    (["collect"], "collect", []),
    (["collect"], "collect", ["robot=widowx250"]),
    (["collect"], "collect", ["robot=ros_car"]),
    (["read-robot"], "collect", ["robot=vesc_car"]),
    (["collect"], "collect", ["robot=ros_arm"]),
    (["demo"], "demo", []),
    (["vlm-iql"], "vlm_iql", []),
    (["idm-iql"], "idm_iql", []),
    (["vptr"], "vptr", []),
    (["eval"], "eval", ["checkpoint=runs/x"]),
    (["sweep"], "sweep", []),
    (["label", "vlm"], "label", []),
    *[(["train"], "train", [f"learner={p.stem}"]) for p in sorted((CONF_DIR / "learner").glob("*.yaml"))],
    (["train"], "train", ["learner=fastrlap", "env=rc_car"]),
    (["train"], "train", ["learner=hil_serl", "env=robosuite_lift"]),
]
IDS = [" ".join(argv + groups) for argv, _, groups in COMMANDS]

WORDS = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda w: w.lower() not in {"true", "false", "null", "nan", "inf"}
)
WRONG = {  # override values of another kind than the key's
    "int": st.one_of(WORDS, st.sampled_from(["1.5", "-0.25", "true", "[1,2]", "{a: 1}"])),
    "float": st.one_of(WORDS, st.sampled_from(["true", "[1,2]", "{a: 1}"])),
    "bool": st.one_of(WORDS, st.sampled_from(["2", "0.5", "[true]", "{a: 1}"])),
    "str": st.sampled_from(["[a,b]", "[]", "{a: 1}"]),
    "list": st.one_of(WORDS, st.sampled_from(["3", "0.5", "{a: 1}"])),
    "dict": st.one_of(WORDS, st.sampled_from(["3", "[1,2]"])),
}
WRONG_PY = {
    "int": ["abc", 1.5, True, [1]],
    "float": ["abc", True, [1.0]],
    "bool": ["abc", 2, [True]],
    "str": [["a"], {"a": 1}],
    "list": ["abc", 3, {"a": 1}],
    "dict": ["abc", 3, [1]],
}


def leaves(config_name, groups):
    """(dotted key, kind) of every value a dotted override can set, and the defaults."""
    cfg = compose(config_name, groups)
    out = []

    def walk(node, path):
        for key, value in node.items():
            dotted = f"{path}.{key}" if path else str(key)
            if isinstance(value, dict) and value:
                walk(value, dotted)
            else:
                out.append((dotted, expected_kind(str(key), value).split(":")[0]))

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out, cfg


@pytest.mark.parametrize("argv, config_name, groups", COMMANDS, ids=IDS)
def test_every_key_refuses_every_wrong_kind(argv, config_name, groups):
    keys, defaults = leaves(config_name, groups)
    assert len(keys) > 5
    for key, kind in keys:
        for wrong in WRONG_PY[kind]:
            bad = OmegaConf.to_container(defaults, resolve=True)
            node = bad
            parts = key.split(".")
            for part in parts[:-1]:
                node = node[part]
            node[parts[-1]] = wrong
            with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
                check_types(OmegaConf.create(bad), defaults)


COMMAND_KEYS = [
    (argv, groups, key, kind) for argv, name, groups in COMMANDS for key, kind in leaves(name, groups)[0]
]


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_cli_property_wrong_types_end_in_one_line_and_exit_2(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, groups, key, kind = data.draw(st.sampled_from(COMMAND_KEYS), label="command and key")
    value = data.draw(WRONG[kind], label="wrong value")
    code = main([*argv, *groups, f"{key}={value}"])
    err = capsys.readouterr().err
    assert code == 2, (argv, key, value, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not os.listdir(tmp_path), f"{argv} {key}={value} left {os.listdir(tmp_path)}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["collect", "episodes=abc"], "episodes must be an integer"),
        (["collect", "loop.rate_hz=fast"], "loop.rate_hz must be a number"),
        (["train", "learner.steps=abc"], "learner.steps must be an integer"),
        (["eval", "checkpoint=x", "episodes=abc"], "episodes must be an integer"),
        (["eval"], "eval needs checkpoint=..."),
        (["collect", "episodes=null"], "episodes cannot be null"),
        (["demo", "seeds=[0,a]"], "each item of seeds must be an integer"),
        (["sweep", "learner=iql", "learner.steps=abc"], "learner.steps must be an integer"),
    ],
)
def test_named_cases(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not os.listdir(tmp_path)


def test_documented_values_still_pass():
    compose("collect", ["loop.rate_hz=null", "episodes=3", "env.cameras=[]"])
    compose("train", ["learner=iql", "learner.done_key=null", "learner.agent.lr=1"])
    compose("demo", ["seeds=[0,1]", "residual.lr_horizon=null"])
    compose("sweep", ["grid={learner.agent.beta:[1,3]}", "gpus_per_trial=0.25"])
