"""Teleoperated (or scripted) data collection: the control loop recording into an EpisodeStore."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from robot_rl.core import ControlLoop
from robot_rl.core.loop import transition_schema
from robot_rl.datasets import EpisodeRecorder
from robot_rl.errors import ConfigError
from robot_rl.factory import make_sim_env, safety_from_config
from robot_rl.tasks.teleops import RandomTeleop, ScriptedTeleop


def rollout_policy(cfg: DictConfig, env):
    """The checkpoint that acts for teleop=policy, checked against the env's observations."""
    from robot_rl.policies.loading import check_fits, load_policy

    policy, _, needs = load_policy(cfg.policy)
    check_fits(cfg.policy, needs, env, cfg.env.name)
    if cfg.get("policy_sample") and hasattr(policy, "deterministic"):
        policy.deterministic = False  # SAC: its sampled actions, as it explores in training
    return policy


def collect(cfg: DictConfig, replace: bool = False) -> dict:
    """Record `cfg.episodes` episodes into `cfg.out`; returns the loop's report and the store path."""
    if cfg.get("robot"):  # a real robot and a human at a device
        from robot_rl.commands.collect_robot import collect_robot

        return collect_robot(cfg)
    if cfg.teleop not in ("scripted", "random", "policy"):
        raise ConfigError(
            f"unknown teleop {cfg.teleop!r}; in simulation use teleop=scripted, random or policy"
        )
    if cfg.teleop == "policy" and not cfg.get("policy"):
        raise ConfigError("teleop=policy needs policy=CHECKPOINT (whose rollouts are recorded)")
    if cfg.episodes < 1:
        raise ConfigError(f"episodes must be at least 1, got {cfg.episodes}")
    out = Path(cfg.out)
    if replace and out.exists():
        import shutil

        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env, expert = make_sim_env(cfg.env, expert_noise=float(cfg.expert_noise), seed=int(cfg.seed))
    if expert is None and cfg.teleop == "scripted":
        env.close()
        raise ConfigError(f"env {cfg.env.name} has no scripted expert, so teleop=scripted cannot drive it")
    policy = teleop = None  # who acts: chosen (and checked) before anything is written
    if cfg.teleop == "random":
        teleop = RandomTeleop(env.action_space.shape[0], seed=int(cfg.seed))
    elif cfg.teleop == "policy":
        try:
            policy = rollout_policy(cfg, env)
        except BaseException:
            env.close()
            raise
    else:
        teleop = ScriptedTeleop(expert, mode="always")
    recorder = EpisodeRecorder(
        out,
        fps=float(cfg.env.control_hz),
        attrs={
            "robot": cfg.env.robot,
            "env": cfg.env.name,
            "task": str(cfg.task),
            "source": "robot-rl collect",
            "teleop": cfg.teleop,
            "state_names": env.state_names(),
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
        schema=transition_schema(env),
    )
    bar = tqdm(total=int(cfg.episodes), unit="ep", desc=f"collect {out.name}", dynamic_ncols=True)

    def progress(loop: ControlLoop, result) -> None:
        rate = loop.clock.recent_hz()
        bar.set_postfix_str(
            f"episode {loop.episode + 1} step {result.steps} rate {rate:5.1f} Hz "
            f"overruns {loop.clock.overruns}",
            refresh=False,
        )

    def episode_done(loop: ControlLoop, result) -> None:
        if not result.discarded:
            bar.update(1)

    rate = cfg.loop.rate_hz
    loop = ControlLoop(
        env,
        policy,
        teleop=teleop,
        rate_hz=None if rate is None else float(rate),
        execute_k=int(cfg.loop.execute_k),
        safety=safety_from_config(cfg.env.safety),
        recorder=recorder,
        on_step=progress,
        on_episode=episode_done,
    )
    try:
        with env:
            results = loop.run(int(cfg.episodes), seed=int(cfg.seed))
    finally:
        bar.close()
        recorder.close()
    return {
        "store": str(out),
        "episodes": sum(not r.discarded for r in results),
        "successes": sum(r.success for r in results),
        "report": loop.report(),
    }
