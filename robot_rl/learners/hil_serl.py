"""Human-in-the-loop RL (HIL-SERL, Luo et al.): SAC/RLPD on the robot's ControlLoop with
demonstrations, human interventions and (optionally) a learned reward.

The pieces: `Learner` (the agent, an online buffer and a demo + intervention buffer, batches
mixed half and half), `AgentPolicy` (the agent acting in the ControlLoop), and two ways to run them:
`train_hil_serl` here (actor and learner in one process, stepping in turn: deterministic for a
seed, used for the measured sim runs) and `robot_rl.learners.hil_serl_ray` (actor and learner as
separate Ray actors, for robots).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from robot_rl.core.env import EnvSource, RobotEnv
from robot_rl.errors import ConfigError
from robot_rl.learners.evaluate import check_video_setup, interim_videos
from robot_rl.learners.replay import (
    ReplayBuffer,
    ReplayJournal,
    TransitionSink,
    replay_schema,
    sample_mixed,
    transitions_from_store,
)
from robot_rl.policies.sac import AgentPolicy, SACAgent, SACConfig, batch_policy, torch_batch
from robot_rl.utils.checkpoints import SUBDIR, LearnerCheckpoints, generator_states, set_generator_states
from robot_rl.utils.device import resolve_device
from robot_rl.utils.training import RunLog, note, seed_everything


@dataclass
class HILSERLConfig:
    env_steps: int = 30_000  # online env steps, interventions included
    batch_size: int = 256  # 128 online + 128 demo/intervention
    utd_ratio: int = 1  # learner steps per env step
    training_starts: int = 100  # online transitions before the first update
    buffer_capacity: int = 200_000
    demos: str | None = None  # an EpisodeStore of demonstrations for the prior buffer
    human: str = "schedule"  # none | drift | schedule (the scripted human in sim)
    human_until: int = 10_000  # env steps over which the human's attention tapers from 1 to 0
    human_takeover: tuple[int, int] = (0, 40)  # step range at which the human takes over ("schedule")
    eval_episodes: int = 100  # at the end, deterministic, no human
    eval_every: int = 5_000  # env steps between interim evaluations (0: none); the best goes to RUN/best
    eval_interim_episodes: int = 20
    eval_video: int = 0  # episodes of each interim evaluation written as mp4 in RUN/videos (and to W&B)
    eval_num_envs: int = 25
    rate_hz: float | None = None  # None: as fast as the simulator runs
    log_every: int = 500  # env steps between logged learner statistics
    reward_classifier: str | None = None  # a classifier checkpoint: its verdict is the reward
    init_from: str | None = None  # a finished run's folder: this new run starts from its weights and buffers
    # env steps between resumable checkpoints in RUN/checkpoints, each written at the end of the
    # episode it falls due in (0: none; Ctrl-C and SIGTERM write one at the step reached)
    checkpoint_every: int = 0
    resume: str | None = None  # a run folder: continue it from its latest checkpoint, to the same end
    encoder_init: str | None = None  # an ICVF or IQL checkpoint: its CNN encodes the cameras (V-PTR)
    encoder_freeze: bool = (
        True  # that CNN frozen (HIL-SERL keeps its pretrained encoder fixed); false: fine-tuned
    )
    device: str = "auto"  # the learner's device (robot_rl.utils.device); the Ray actor acts on the CPU
    compile: bool = False  # torch.compile the critic loss
    seed: int = 0
    sac: dict = field(default_factory=dict)  # SACConfig overrides (critic_ensemble, discount, ...)

    def __post_init__(self):
        if self.human not in ("none", "drift", "schedule"):
            raise ConfigError(f"human must be none, drift or schedule, got {self.human!r}")
        if self.env_steps < 1 or self.batch_size < 2 or self.utd_ratio < 1:
            raise ConfigError("env_steps, utd_ratio must be at least 1 and batch_size at least 2")
        self.human_takeover = tuple(self.human_takeover)


class Learner:
    """The agent and its two buffers. Every transition goes into the online buffer; intervened
    ones (the human's action) into the demo + intervention buffer as well. With the agent's cached
    features the buffers hold each camera frame's feature map (`SACAgent.encode_frames`)."""

    def __init__(self, agent: SACAgent, schema, capacity: int, batch_size: int, seed: int = 0):
        self.agent, self.batch_size = agent, batch_size
        schema = agent.buffer_schema(schema)
        self.online, self.prior = ReplayBuffer(capacity, schema), ReplayBuffer(capacity, schema)
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self._journals: dict[str, ReplayJournal] = {}

    def training_state(self, run_dir) -> dict:
        """What a checkpoint in `run_dir` holds of the learner: the agent's training state, the
        sampler's RNG, the step count, and both buffers, whose new transitions are appended to
        their journals (RUN/checkpoints/buffers)."""
        for name in ("online", "prior"):
            self._journals.setdefault(name, ReplayJournal(Path(run_dir) / SUBDIR / "buffers" / name))
        return {
            "agent": self.agent.training_state(),
            "rng": self.rng.bit_generator.state,
            "steps": self.steps,
            "buffers": {
                name: journal.append(getattr(self, name)) for name, journal in self._journals.items()
            },
        }

    def load_training_state(self, state: dict, run_dir) -> None:
        """Back to a checkpoint's `training_state`: the buffers refilled from their journals."""
        self.agent.load_training_state(state["agent"])
        self.rng.bit_generator.state = state["rng"]
        self.steps = state["steps"]
        for name, segments in state["buffers"].items():
            self._journals[name] = ReplayJournal(Path(run_dir) / SUBDIR / "buffers" / name, segments)
            self._journals[name].restore(getattr(self, name))

    def insert(self, transition: dict) -> None:
        self.insert_batch({k: np.asarray(v)[None] for k, v in transition.items()})

    def insert_batch(self, batch: dict) -> None:
        batch = self.agent.encode_frames(batch)
        self.online.add_batch(batch)
        human = np.asarray(batch["intervened"], bool)
        if human.any():
            self.prior.add_batch({k: np.asarray(v)[human] for k, v in batch.items()})

    def sample(self) -> dict:
        return torch_batch(
            sample_mixed(self.online, self.prior, self.batch_size, self.rng), self.agent.cfg.image_keys
        )

    def step(self, lock=None, batches: list[dict] | None = None) -> dict:
        """One learner step; `lock` guards the sampling when transitions arrive from another
        thread. `batches`: a step's batches sampled beforehand (the Ray learner's prefetcher)."""
        if lock is None:
            lock = contextlib.nullcontext()
        if batches is None:
            batches = self.sample_step(lock)
        info = self.agent.update(batches)
        self.steps += 1
        return info

    def sample_step(self, lock=None) -> list[dict]:
        """The `cta_ratio` batches of one learner step."""
        if lock is None:
            lock = contextlib.nullcontext()
        with lock:
            return [self.sample() for _ in range(self.agent.cfg.cta_ratio)]


def make_agent(obs_spaces: dict, action_dim: int, cfg: HILSERLConfig) -> SACAgent:
    """The agent for these observation spaces (name -> gym Box, as `env.observation_space`) and
    action size: nothing here touches the robot, so a learner can build it anywhere."""
    try:
        pretrained = bool(cfg.encoder_init)
        sac = SACConfig(
            state_dim=obs_spaces["state"].shape[0],
            action_dim=action_dim,
            **{"frozen_cnn": pretrained, "finetune_cnn": pretrained and not cfg.encoder_freeze, **cfg.sac},
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad sac settings: {exc}") from None
    missing = [k for k in sac.image_keys if k not in obs_spaces]
    if missing:
        raise ConfigError(
            f"sac.image_keys {missing} are not observations of this env (it has {', '.join(obs_spaces)})"
        )
    agent = SACAgent(sac, seed=cfg.seed)
    if cfg.encoder_init:
        from robot_rl.learners.icvf import pretrained_encoder

        agent.init_camera_encoder(pretrained_encoder(cfg.encoder_init, sac.image_keys, sac.image_size))
    agent.to(resolve_device(cfg.device))
    if cfg.compile:
        agent.compile_losses()
    return agent


def make_learner(obs_spaces: dict, action_dim: int, cfg: HILSERLConfig) -> Learner:
    """Agent and buffers; the demonstrations in the prior buffer, or a previous run's state."""
    agent = make_agent(obs_spaces, action_dim, cfg)
    keys = {"state": obs_spaces["state"], **{k: obs_spaces[k] for k in agent.cfg.image_keys}}
    schema = replay_schema(keys, action_dim)  # as transitions arrive; the buffers may hold maps for frames
    learner = Learner(agent, schema, cfg.buffer_capacity, cfg.batch_size, cfg.seed)
    if cfg.init_from:
        run = Path(cfg.init_from)
        learner.agent.load_state_dict(SACAgent.load(run / "checkpoint").state_dict())
        expected = learner.online.schema
        learner.online = ReplayBuffer.load(run / "buffers" / "online.zarr", cfg.buffer_capacity)
        learner.prior = ReplayBuffer.load(run / "buffers" / "prior.zarr", cfg.buffer_capacity)
        if learner.online.schema != expected or learner.prior.schema != expected:
            raise ConfigError(f"the buffers in {run} hold other observations than this env gives")
    elif cfg.demos and not cfg.resume:  # a resumed run has them in its checkpoint's buffers
        demos = transitions_from_store(cfg.demos, schema, end_at_success=True)
        learner.prior.add_batch(learner.agent.encode_frames(demos))
    return learner


def make_env(envs: EnvSource, cfg: HILSERLConfig):
    """The training env and its scripted expert; with a reward classifier, its reward."""
    env, expert = envs.make(seed=cfg.seed)
    if cfg.human != "none" and expert is None:
        raise ConfigError(f"env {envs.name} has no scripted expert to stand in for the human; use human=none")
    if cfg.reward_classifier:
        from robot_rl.learners.reward_classifier import ClassifierRewardEnv, RewardClassifier

        env = ClassifierRewardEnv(env, RewardClassifier.load(cfg.reward_classifier))
    return env, expert


def share_frame_features(env, agent: SACAgent) -> None:
    """A reward classifier reads frames through the same frozen backbone as the agent: it takes
    the agent's per-frame cache, so each frame is encoded once for the reward, the action and the
    buffers (instead of once more for the reward)."""
    from robot_rl.learners.reward_classifier import ClassifierRewardEnv

    if isinstance(env, ClassifierRewardEnv) and agent.frame_features is not None:
        env.classifier.features = agent.frame_features


def human_attention(cfg: HILSERLConfig, env_steps: callable):
    """The scripted human's attention: 1 at the start, tapering linearly to 0 at `human_until`."""
    return lambda: max(0.0, 1.0 - env_steps() / cfg.human_until) if cfg.human_until > 0 else 0.0


def evaluate_agent(
    agent: SACAgent,
    envs: EnvSource,
    env: RobotEnv,
    episodes: int,
    num_envs: int,
    seed: int,
    progress: bool = False,
) -> dict:
    """Deterministic success rate with no human: on vector envs for state policies, through the
    ControlLoop on `env` for image policies (vector envs are state-only). Success is the task's
    own verdict, also where a reward classifier gives the training reward."""
    from robot_rl.learners.evaluate import evaluate_policy
    from robot_rl.learners.reward_classifier import ClassifierRewardEnv

    if isinstance(env, ClassifierRewardEnv):
        env = env.env

    agent.eval()
    return evaluate_policy(
        envs,
        None if agent.cfg.image_keys else batch_policy(agent),
        AgentPolicy(agent, deterministic=True),
        episodes,
        num_envs,
        seed,
        progress,
        env=env,
    )


def train_hil_serl(envs: EnvSource, out_dir, cfg: HILSERLConfig, progress: bool = True) -> dict:
    """Actor and learner in one process, in turn: each tick the ControlLoop acts (the human may
    take over), the transition is routed into the buffers, and the learner takes `utd_ratio` steps."""
    from robot_rl.core import ControlLoop
    from robot_rl.tasks.teleops import ScriptedTeleop

    checkpoints = LearnerCheckpoints(out_dir, "hil_serl", cfg)  # a bad resume= is refused before any work
    image_agent = bool((cfg.sac or {}).get("image_keys"))
    check_video_setup(envs if cfg.eval_every else None, cfg.eval_video, image_agent, "eval_video")
    seed_everything(cfg.seed)
    env, expert = make_env(envs, cfg)
    learner = make_learner(env.observation_space.spaces, env.action_space.shape[0], cfg)
    share_frame_features(env, learner.agent)
    if checkpoints.state is not None:  # buffers read before anything is written: damaged ones are refused
        learner.load_training_state(checkpoints.state["learner"], out_dir)
    log = RunLog(out_dir, f"HIL-SERL on {envs.name}")
    counts = {"env_steps": 0, "episodes": 0, "successes": 0, "intervened_steps": 0, "intervened_episodes": 0}
    teleop = None
    if cfg.human != "none":
        teleop = ScriptedTeleop(
            expert,
            mode=cfg.human,
            attention=human_attention(cfg, lambda: counts["env_steps"]),
            takeover_steps=cfg.human_takeover,
            seed=cfg.seed + 1,
        )
    humans = [h for h in (teleop, expert) if h is not None]  # their RNGs go on across a resume
    policy = AgentPolicy(learner.agent)
    run = {"recent": [], "info": {}, "evaluations": [], "next_eval": cfg.eval_every or None}
    saved = checkpoints.restore(log)
    if saved is not None:
        counts.update(saved["counts"])
        run.update(saved["run"])
        set_generator_states(humans, saved["humans"])
    recent, evaluations = run["recent"], run["evaluations"]
    snapshot = checkpoints.snapshot(
        lambda: {
            "learner": learner.training_state(out_dir),
            "counts": counts,
            "run": run,
            "humans": generator_states(*humans),
        },
        log,
    )
    bar = checkpoints.bar(cfg.env_steps, "HIL-SERL", "step", progress, steps=False)
    start, first_update = time.monotonic(), learner.steps

    def on_step(loop, result) -> None:
        counts["env_steps"] += 1
        if len(learner.online) >= cfg.training_starts:
            for _ in range(cfg.utd_ratio):
                run["info"] = learner.step()
        steps = counts["env_steps"]
        if run["info"] and steps % cfg.log_every == 0:
            speed = (learner.steps - first_update) / (time.monotonic() - start)
            log.log(steps, **run["info"], updates_per_s=speed)
        bar.update(1)
        checkpoints.step_done(steps, cfg.env_steps, snapshot, boundary=False)  # Ctrl-C: here, mid-episode

    def on_episode(loop, result) -> None:
        counts["episodes"] += 1
        counts["successes"] += int(result.success)
        counts["intervened_steps"] += result.intervened_steps
        counts["intervened_episodes"] += int(result.intervened_steps > 0)
        recent.append([bool(result.success), int(result.intervened_steps)])
        del recent[:-20]
        rate = np.mean([s for s, _ in recent])
        alone = [s for s, i in recent if i == 0]  # episodes the policy ran without the human
        judged = {}  # with a reward classifier: its verdict against the task's own
        if hasattr(env, "task_success"):
            counts["reward_false_successes"] = counts.get("reward_false_successes", 0) + int(
                result.success and not env.task_success
            )
            counts["reward_missed_successes"] = counts.get("reward_missed_successes", 0) + int(
                env.task_success and not result.success
            )
            judged = {"task_success": float(env.task_success)}
        log.log(
            counts["env_steps"],
            **judged,
            episode_success=float(result.success),
            intervened_steps=result.intervened_steps,
            success_rate_20=rate,
            **({"policy_success_20": np.mean(alone)} if alone else {}),
        )
        bar.set_postfix_str(
            f"ep {counts['episodes']} success(20) {rate:.2f} alone {np.mean(alone) if alone else 0:.2f} "
            f"interventions {counts['intervened_episodes']} updates {learner.steps}",
            refresh=False,
        )

    loop = ControlLoop(
        env,
        policy,
        teleop,
        rate_hz=cfg.rate_hz,
        execute_k=1,
        safety=envs.safety,
        recorder=TransitionSink(learner.insert),
        on_step=on_step,
    )
    try:
        with env, checkpoints:
            while counts["env_steps"] < cfg.env_steps:
                result = loop.run_episode(seed=cfg.seed * 1_000_003 + counts["episodes"])
                on_episode(loop, result)
                steps, due = counts["env_steps"], run["next_eval"]
                if due and steps >= due and steps < cfg.env_steps:
                    evaluations.append(_interim_eval(learner.agent, envs, env, cfg, steps, log))
                    checkpoints.keep_best(evaluations[-1]["success_rate"], steps, learner.agent.save)
                    if cfg.eval_video:
                        act = batch_policy(learner.agent)
                        interim_videos(envs, act, cfg.eval_video, 20_000 + steps, log, steps)
                    run["next_eval"] = due + cfg.eval_every
                checkpoints.step_done(steps, cfg.env_steps, snapshot)
            report = loop.report()
            final = (
                evaluate_agent(
                    learner.agent, envs, env, cfg.eval_episodes, cfg.eval_num_envs, 10_000, progress=progress
                )
                if cfg.eval_episodes
                else None
            )
    finally:
        loop.close()
        bar.close()
    if final is not None:
        log.log(counts["env_steps"], eval_success_rate=final["success_rate"])
    out = Path(out_dir)
    checkpoint = learner.agent.save(out / "checkpoint")
    learner.online.save(out / "buffers" / "online.zarr")
    learner.prior.save(out / "buffers" / "prior.zarr")
    return log.close(
        {
            "learner": "hil_serl",
            "env": envs.name,
            "checkpoint": str(checkpoint),
            "config": asdict(cfg),
            **counts,
            "training_success_rate": counts["successes"] / max(counts["episodes"], 1),
            "learner_steps": learner.steps,
            "evaluation": final,
            "interim_evaluations": evaluations,
            "loop": {
                "achieved_hz": report["clock"].get("achieved_hz"),
                "overruns": report["clock"].get("overruns"),
            },
        },
        curves=(
            "success_rate_20",
            "policy_success_20",
            "eval_success_rate",
            "intervened_steps",
            "critic_loss",
            "q",
            "alpha",
        ),
    )


def _interim_eval(agent, envs: EnvSource, env, cfg: HILSERLConfig, steps: int, log: RunLog) -> dict:
    result = evaluate_agent(
        agent,
        envs,
        env,
        cfg.eval_interim_episodes,
        min(cfg.eval_num_envs, cfg.eval_interim_episodes),
        20_000 + steps,
    )
    log.log(steps, eval_success_rate=result["success_rate"])
    note(
        f"env step {steps}: evaluation success {result['success_rate']:.2f} "
        f"({cfg.eval_interim_episodes} episodes)"
    )
    return {"env_steps": steps, **result}
