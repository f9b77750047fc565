"""Configs: composed from robot_rl/conf with command-line overrides, and type-checked against
their defaults before any command runs.

Each key's type is its default's (YAML's own: 10 is an integer, 1.0e-3 a float, [0, 40] a list of
integers); the tables below name what the defaults cannot tell: keys whose default is null, keys
whose default is an integer but that take fractions, and keys that may be set to null. A value
of another type (`episodes=abc`, `loop.rate_hz=fast`, `seeds=3`) is a ConfigError naming the key,
the value and what it must be, raised before any file is created.
"""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from robot_rl.errors import ConfigError

CONF_DIR = Path(__file__).parent / "conf"

# The learners' config dataclasses ("module:Class", imported when a config uses a learner). Their
# defaults are the learners' defaults: each is in hydra's ConfigStore as learner/<name>_defaults,
# and conf/learner/<name>.yaml builds on it, naming only what differs and the nested settings.
LEARNER_CONFIGS = {
    "diffusion_bc": "robot_rl.learners.diffusion_bc:DiffusionBCConfig",
    "residual_ppo": "robot_rl.learners.residual_ppo:ResidualPPOConfig",
    "hil_serl": "robot_rl.learners.hil_serl:HILSERLConfig",
    "fastrlap": "robot_rl.learners.fastrlap:FastRLAPConfig",
    "reward_classifier": "robot_rl.learners.reward_classifier:ClassifierTrainConfig",
    "iql": "robot_rl.learners.iql:IQLTrainConfig",
    "reward_model": "robot_rl.learners.reward_model:RewardModelTrainConfig",
    "idm": "robot_rl.learners.inverse_dynamics:IDMTrainConfig",
    "icvf": "robot_rl.learners.icvf:ICVFTrainConfig",
}
RUN_KEYS = ("seed",)  # dataclass fields that come from the run (seed=...), not from the learner's config


def learner_config_class(name: str) -> type:
    """The config dataclass of a learner in LEARNER_CONFIGS."""
    import importlib

    module, _, cls = LEARNER_CONFIGS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def learner_defaults(name: str) -> dict:
    """A learner's settings as its config dataclass defines them (tuples as lists)."""
    import dataclasses

    values = {}
    for f in dataclasses.fields(learner_config_class(name)):
        if f.name in RUN_KEYS:
            continue
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default
        values[f.name] = list(value) if isinstance(value, tuple) else value
    return {"name": name, **values}


_registered = False


def _register_learner_defaults() -> None:
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    _registered = True
    for name in LEARNER_CONFIGS:
        store.store(group="learner", name=f"{name}_defaults", node=learner_defaults(name))


# Keys whose default is null, by their last name: what a value must be. Any other null-default key
# is a path, a name or an address (a string; YAML may read a name like 8000 as a number).
NULL_DEFAULT = {
    "rate_hz": "float",
    "max_delta": "float",
    "critic_subsample": "int",
    "ddim_steps": "int",
    "lr": "float",
    "camera_pos_m": "float",
    "camera_angle_rad": "float",
    "obs_noise": "float",
    "action_noise": "float",
    "friction": "list:float",
    "mass": "list:float",
    "actuator_gain": "list:float",
    "light": "list:float",
    "workspace_low": "list:float",
    "workspace_high": "list:float",
    "seeds": "list:int",
    "image_keys": "list:str",
    "use_state": "bool",
    "grid": "dict",
    "random": "dict",
    "gripper": "dict",
    "collect_env": "dict",
    "value": "dict",  # a critic's value head (policies.value_head)
    "max_memory_gb": "float",
}
# Keys with an integer default that take any number.
FLOAT_KEYS = {
    "control_hz",
    "rate_hz",
    "gpus_per_trial",
    "reset_s",
    "timeout_s",
    "max_minutes",
    "fps",
    "max_retry_after_s",
    "cpus_per_trial",
}
# Keys with a non-null default that may be set to null (each documented in its YAML).
NULLABLE = {"rate_hz", "done_key", "imu_topic", "lr_horizon", "collect_env", "seeds"} | set(NULL_DEFAULT)


def compose(config_name: str, overrides: list[str]):
    """Compose a hydra config from robot_rl/conf with command-line overrides (key=value), every
    value type-checked against its default and no mandatory value left out."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Overrides that choose a config group (env=reach, learner@bc=iql) shape the defaults.
    top = CONF_DIR / f"{config_name}.yaml"
    if "learner" in " ".join(overrides) or (top.is_file() and "learner" in top.read_text()):
        _register_learner_defaults()  # imports the learners (torch): only for configs that use one
    groups = [
        o for o in overrides if "=" in o and (CONF_DIR / o.split("=")[0].lstrip("+~").split("@")[0]).is_dir()
    ]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        defaults = _group_defaults(config_name, tuple(groups)) if overrides != groups else cfg
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{config_name} needs {' '.join(f'{k}=...' for k in missing)} (no default)")
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"bad config ({' '.join(overrides) or 'defaults'}): {first}") from exc
    check_types(cfg, defaults)
    return cfg


@functools.lru_cache(maxsize=64)
def _group_defaults(config_name: str, groups: tuple[str, ...]) -> DictConfig:
    """The defaults a config's values are type-checked against: the config with only its group
    choices (env=reach, learner=iql). The same for every call with those choices, so composed
    once per process (a sweep composes one config per trial); read, never changed."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(groups))


_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string (a path or a name)",
    "list": "a list, e.g. [a,b]",
    "dict": "a mapping, e.g. {a: 1}",
}


def kind_of(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (list, ListConfig)):
        return "list"
    if isinstance(value, (dict, DictConfig)):
        return "dict"
    return "str"


def expected_kind(key: str, default) -> str:
    """What a value of `key` must be, given its default ("list:int": a list of integers)."""
    kind = kind_of(default)
    if kind is None:
        return NULL_DEFAULT.get(key, "str")
    return "float" if kind == "int" and key in FLOAT_KEYS else kind


def fits(kind: str, value) -> bool:
    got = kind_of(value)
    if kind == "float":
        return got in ("int", "float")
    if kind == "str":
        return got in ("str", "int", "float")
    return got == kind


def check_types(cfg: DictConfig, defaults: DictConfig) -> None:
    """Raise ConfigError for the first value of `cfg` whose type does not fit its default in `defaults`."""
    _check(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(defaults, resolve=True), "")


def _check(value, default, path: str) -> None:
    key = path.rsplit(".", 1)[-1].split("[")[0]
    if value is None:
        if default is not None and key not in NULLABLE:
            raise ConfigError(
                f"{path} cannot be null: it must be {_NAMES[expected_kind(key, default).split(':')[0]]}"
            )
        return
    kind, _, item_kind = expected_kind(key, default).partition(":")
    if not fits(kind, value):
        raise ConfigError(f"{path}={_show(value)}: {path} must be {_NAMES[kind]}")
    if item_kind:
        for _i, item in enumerate(value):
            if not fits(item_kind, item):
                raise ConfigError(f"{path}={_show(value)}: each item of {path} must be {_NAMES[item_kind]}")
    elif kind == "dict" and isinstance(default, dict):
        for k, v in value.items():
            if k in default:
                _check(v, default[k], f"{path}.{k}" if path else str(k))
    elif kind == "list" and default:
        for i, item in enumerate(value):
            _check(item, default[min(i, len(default) - 1)], f"{path}[{i}]")


def _show(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."
