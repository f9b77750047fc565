"""The learner registry: every learner config in robot_rl/conf/learner is registered with its config
dataclass and its runner, the dataclass's defaults are the composed defaults, and the YAML names
nothing the dataclass lacks (so a setting cannot drift from the code that reads it)."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from robot_rl.commands.train import DIST_KEYS, LEARNERS, RAY_KEYS
from robot_rl.config import (
    CONF_DIR,
    LEARNER_CONFIGS,
    RUN_KEYS,
    compose,
    learner_config_class,
    learner_defaults,
)
from robot_rl.errors import ConfigError

ROUTING = set(DIST_KEYS) | set(RAY_KEYS)  # where a learner runs: read by the command, not the learner


@pytest.mark.parametrize("name", sorted(LEARNER_CONFIGS))
def test_a_learner_config_is_its_dataclass_defaults_with_the_yaml_on_top(name):
    assert (CONF_DIR / "learner" / f"{name}.yaml").is_file() and name in LEARNERS
    composed = OmegaConf.to_container(compose("train", [f"learner={name}"]).learner, resolve=True)
    fields = {f.name for f in dataclasses.fields(learner_config_class(name))} - set(RUN_KEYS)
    assert set(composed) - ROUTING - {"name"} == fields
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "learner" / f"{name}.yaml"))
    own.pop("defaults")
    for key, value in learner_defaults(name).items():  # a value the YAML does not set is the dataclass's
        if key not in own:
            assert composed[key] == value, key


def test_every_learner_is_registered_once():
    assert set(LEARNERS) == set(LEARNER_CONFIGS) == {p.stem for p in (CONF_DIR / "learner").glob("*.yaml")}


def test_a_dataclass_default_is_type_checked_like_a_yaml_one():
    with pytest.raises(ConfigError, match="learner.steps=abc: learner.steps must be an integer"):
        compose("train", ["learner=iql", "learner.steps=abc"])
    with pytest.raises(ConfigError, match="learner.encoder_freeze"):
        compose("train", ["learner=iql", "learner.encoder_freeze=3"])
