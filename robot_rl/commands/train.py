"""`robot-rl train`, `robot-rl eval` and the ResiP demo pipeline: thin functions over the learners."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from omegaconf import OmegaConf

from robot_rl.errors import ConfigError, DatasetError


def _dataclass_from(cls, cfg, **extra):
    values = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    values.pop("name", None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    return cls(**values, **extra)


DIST_KEYS = ("dist", "workers", "ray_address")  # where rollouts run (robot_rl.utils.dist)


def _envs(env_cfg, dist: dict | None = None):
    """The learner's env source; `dist` ({dist, workers, ray_address}) puts vector envs on Ray workers."""
    from robot_rl.factory import env_source

    dist = dist or {}
    workers = dist.get("workers")
    return env_source(env_cfg, dist.get("dist") or "none", 2 if workers is None else int(workers))


def _ray_if(dist: dict | None):
    """A Ray session when `dist` asks for one, else nothing."""
    import contextlib

    from robot_rl.utils.dist import check_dist, ray_session

    mode = check_dist((dist or {}).get("dist"))
    return contextlib.nullcontext() if mode == "none" else ray_session(mode, (dist or {}).get("ray_address"))


def run_folder(cfg) -> str:
    """Where `robot-rl train` writes: `out`, or the run a learner resumes in place."""
    if cfg.learner.get("resume"):  # every learner's resume=RUN goes on in RUN
        return str(cfg.learner.resume)
    return str(cfg.out)


def train_bc(learner_cfg, dataset, out, seed: int, progress: bool = True) -> dict:
    from robot_rl.learners.diffusion_bc import DiffusionBCConfig, train_diffusion_bc

    if not Path(dataset).exists():
        raise DatasetError(f"no episode store at {dataset}")
    cfg = _dataclass_from(DiffusionBCConfig, learner_cfg, seed=seed)
    return train_diffusion_bc(dataset, out, cfg, progress=progress)


def train_residual(learner_cfg, env_cfg, base, out, seed: int, progress: bool = True) -> dict:
    from robot_rl.learners.residual_ppo import ResidualPPOConfig, train_residual_ppo

    if base is None:
        raise ConfigError("residual_ppo needs base=PATH (a diffusion_bc checkpoint folder)")
    values = OmegaConf.to_container(learner_cfg, resolve=True)
    dist = {k: values.pop(k, None) for k in DIST_KEYS}
    cfg = _dataclass_from(ResidualPPOConfig, values, seed=seed)
    with _ray_if(dist):
        return train_residual_ppo(_envs(env_cfg, dist).make_vec, base, out, cfg, progress=progress)


RAY_KEYS = ("dist", "ray_address", "robot_resource", "weights_every")


def train_hil(learner_cfg, env_cfg, out, seed: int, progress: bool = True) -> dict:
    """HIL-SERL: actor and learner in one process (dist=sync) or as Ray actors (dist=ray)."""
    from robot_rl.learners.hil_serl import HILSERLConfig, train_hil_serl

    values = OmegaConf.to_container(learner_cfg, resolve=True)
    ray = {k: values.pop(k, None) for k in RAY_KEYS}
    for key in ("demos", "init_from", "reward_classifier", "encoder_init"):
        if values.get(key) and not Path(values[key]).exists():
            raise DatasetError(f"{key}={values[key]}: no such path")
    cfg = _dataclass_from(HILSERLConfig, values, seed=seed)
    if ray["dist"] in (None, "sync"):
        return train_hil_serl(_envs(env_cfg), out, cfg, progress=progress)
    if ray["dist"] != "ray":
        raise ConfigError(f"dist must be sync or ray, got {ray['dist']!r}")
    from robot_rl.learners.hil_serl_ray import train_hil_serl_ray

    return train_hil_serl_ray(
        _envs(env_cfg),
        out,
        cfg,
        address=ray["ray_address"],
        robot_resource=ray["robot_resource"],
        weights_every=int(ray["weights_every"] or 100),
        progress=progress,
    )


def train_fastrlap_learner(learner_cfg, env_cfg, out, seed: int, progress: bool = True) -> dict:
    from robot_rl.learners.fastrlap import FastRLAPConfig, train_fastrlap

    cfg = _dataclass_from(FastRLAPConfig, learner_cfg, seed=seed)
    for key in ("demo", "encoder_init"):
        if getattr(cfg, key) and not Path(getattr(cfg, key)).exists():
            raise DatasetError(f"{key}={getattr(cfg, key)}: no such path")
    return train_fastrlap(_envs(env_cfg), out, cfg, progress=progress)


def train_classifier(learner_cfg, dataset, out, seed: int, progress: bool = True) -> dict:
    from robot_rl.learners.reward_classifier import ClassifierTrainConfig, train_reward_classifier

    if not Path(dataset).exists():
        raise DatasetError(f"no episode store at {dataset}")
    cfg = _dataclass_from(ClassifierTrainConfig, learner_cfg, seed=seed)
    return train_reward_classifier(dataset, out, cfg, progress=progress)


def evaluate_checkpoint(
    checkpoint,
    env_cfg,
    episodes: int = 100,
    num_envs: int = 50,
    seed: int = 10_000,
    ddim_steps: int | None = None,
    progress: bool = True,
    dist: dict | None = None,
    video: int = 0,
    video_dir=None,
) -> dict:
    """Success rate of a diffusion checkpoint alone, of a residual checkpoint over its base, of a SAC or an
    IQL agent.
    `dist` ({dist, workers, ray_address}) spreads the envs over Ray rollout workers: the same
    episodes, so the same results, however many workers. `video` > 0 also writes that many episodes
    (the first seeds) as H.264 mp4 into `video_dir`, rendered by the env config's render_camera."""
    from robot_rl.learners.evaluate import check_video_setup, evaluate_policy, evaluation_videos, run_episodes
    from robot_rl.policies.loading import check_fits

    path = Path(checkpoint)
    kind, make_act, extra, loop_act = _checkpoint_policy(path, ddim_steps, seed)
    # checked before the evaluation, whose result would be lost
    check_video_setup(_envs(env_cfg), int(video), loop_act is not None, "video")
    with _ray_if(dist):
        envs = _envs(env_cfg, dist)
        if loop_act is not None:  # an image agent: one env at a time, through the ControlLoop
            policy, needs = loop_act
            env, _ = envs.make(seed=seed)
            try:
                check_fits(path, needs, env, env_cfg.name)
                result = evaluate_policy(envs, None, policy, episodes, num_envs, seed, progress, env=env)
            finally:
                env.close()
        else:
            act = make_act(min(num_envs, episodes))
            result = {**run_episodes(envs.make_vec, act, episodes, num_envs, seed, progress), **extra}
    result = {"checkpoint": str(path), "kind": kind, **result}
    if video:
        result["videos"] = evaluation_videos(envs, make_act(1), int(video), seed, video_dir)
    return result


def _checkpoint_policy(path: Path, ddim_steps: int | None, seed: int):
    """(its kind, a function of the number of envs giving the checkpoint's batch policy, extra
    result fields, (ControlLoop policy, what it reads) for an agent that reads cameras: no batch
    policy then)."""
    from robot_rl.learners.evaluate import diffusion_batch_policy
    from robot_rl.policies.checkpoint import read_meta
    from robot_rl.policies.diffusion import DiffusionPolicy
    from robot_rl.policies.residual import ResidualPolicy

    meta = read_meta(path)
    kind = meta.get("kind")
    if kind in ("sac_agent", "iql_agent"):
        from robot_rl.policies import iql, sac
        from robot_rl.policies.loading import load_policy

        if meta["config"].get("image_keys"):
            policy, _, needs = load_policy(path)
            return kind, None, {}, (policy, needs)
        agent = (sac.SACAgent if kind == "sac_agent" else iql.IQLAgent).load(path).eval()
        agent_batch_policy = sac.batch_policy if kind == "sac_agent" else iql.batch_policy
        return kind, lambda n: agent_batch_policy(agent), {}, None
    residual = None
    if kind == "residual_policy":
        residual, base_path = ResidualPolicy.load(path)
        base = DiffusionPolicy.load(base_path)
        steps = ddim_steps or residual.config.base_ddim_steps  # as the residual was trained
    else:
        base = DiffusionPolicy.load(path)
        steps = ddim_steps or base.config.inference_steps
    return kind, lambda n: diffusion_batch_policy(base, residual, n, steps, seed), {"ddim_steps": steps}, None


def train_iql_learner(learner_cfg, dataset, env_cfg, out, seed: int, progress: bool = True) -> dict:
    from robot_rl.learners.iql import IQLTrainConfig, train_iql

    stores = (
        [str(dataset)] if isinstance(dataset, (str, Path)) else [str(d) for d in dataset]
    )  # a list: their union
    for store in stores:
        if not Path(store).exists():
            raise DatasetError(f"no episode store at {store}")
    cfg = _dataclass_from(IQLTrainConfig, learner_cfg, seed=seed)
    return train_iql(
        stores[0] if len(stores) == 1 else stores,
        None if env_cfg is None else _envs(env_cfg),
        out,
        cfg,
        progress=progress,
    )


def train_preference_reward(learner_cfg, dataset, out, seed: int, progress: bool = True) -> dict:
    from robot_rl.learners.reward_model import RewardModelTrainConfig, train_reward_model

    if not Path(dataset).exists():
        raise DatasetError(f"no episode store at {dataset}")
    cfg = _dataclass_from(RewardModelTrainConfig, learner_cfg, seed=seed)
    return train_reward_model(dataset, out, cfg, progress=progress)


def train_idm(learner_cfg, dataset, out, seed: int, progress: bool = True) -> dict:
    from robot_rl.learners.inverse_dynamics import IDMTrainConfig, train_inverse_dynamics

    if not Path(dataset).exists():
        raise DatasetError(f"no episode store at {dataset}")
    cfg = _dataclass_from(IDMTrainConfig, learner_cfg, seed=seed)
    return train_inverse_dynamics(dataset, out, cfg, progress=progress)


def train_icvf_learner(learner_cfg, dataset, out, seed: int, progress: bool = True) -> dict:
    from robot_rl.learners.icvf import ICVFTrainConfig, train_icvf

    if not Path(dataset).exists():
        raise DatasetError(f"no episode store at {dataset}")
    cfg = _dataclass_from(ICVFTrainConfig, learner_cfg, seed=seed)
    agent = {k: v for k, v in (cfg.agent or {}).items() if v is not None}  # null: the learner's default
    return train_icvf(dataset, out, dataclasses.replace(cfg, agent=agent), progress=progress)


def _train_residual_and_evaluate(cfg) -> dict:
    result = train_residual(cfg.learner, cfg.env, cfg.base, run_folder(cfg), int(cfg.seed))
    if cfg.eval_episodes:
        result["evaluation"] = evaluate_checkpoint(
            result["checkpoint"],
            cfg.env,
            int(cfg.eval_episodes),
            dist={k: cfg.learner.get(k) for k in DIST_KEYS},
        )
        Path(result["results"]).write_text(json.dumps(result, indent=2))
    return result


# Every learner `robot-rl train learner=<name>` runs, and how it runs from the composed train
# config. Its settings are its config dataclass (robot_rl.config.LEARNER_CONFIGS, whose defaults
# conf/learner/<name>.yaml builds on); the runner checks and routes them, then calls the learner.
LEARNERS = {
    "diffusion_bc": lambda cfg: train_bc(cfg.learner, cfg.dataset, run_folder(cfg), int(cfg.seed)),
    "residual_ppo": _train_residual_and_evaluate,
    "hil_serl": lambda cfg: train_hil(cfg.learner, cfg.env, run_folder(cfg), int(cfg.seed)),
    "fastrlap": lambda cfg: train_fastrlap_learner(cfg.learner, cfg.env, run_folder(cfg), int(cfg.seed)),
    "reward_classifier": lambda cfg: train_classifier(
        cfg.learner, cfg.dataset, run_folder(cfg), int(cfg.seed)
    ),
    "iql": lambda cfg: train_iql_learner(cfg.learner, cfg.dataset, cfg.env, run_folder(cfg), int(cfg.seed)),
    "reward_model": lambda cfg: train_preference_reward(
        cfg.learner, cfg.dataset, run_folder(cfg), int(cfg.seed)
    ),
    "idm": lambda cfg: train_idm(cfg.learner, cfg.dataset, run_folder(cfg), int(cfg.seed)),
    "icvf": lambda cfg: train_icvf_learner(cfg.learner, cfg.dataset, run_folder(cfg), int(cfg.seed)),
}


def train(cfg) -> dict:
    from robot_rl.utils.device import resolve_device

    name = cfg.learner.name
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r} ({', '.join(LEARNERS)})")
    if cfg.learner.get("dist") != "ray":  # on Ray the learner runs where the cluster puts it
        resolve_device(cfg.learner.get("device"))  # a device this machine lacks: one line, before any work
    from omegaconf import OmegaConf

    from robot_rl.utils.training import logging_to

    with logging_to(cfg.logger, cfg.wandb_project, OmegaConf.to_container(cfg, resolve=True)):
        return LEARNERS[name](cfg)
