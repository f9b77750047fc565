"""FastRLAP (Stachowicz et al., `kylestach/fastrlap-release`): a car learns to lap a course fast
from one slow demo lap, practising on its own.

1. A slow demo lap (the scripted driver at `demo_speed` in sim, or the first episode of a
   recorded store) gives the course as checkpoints every `checkpoint_spacing` metres.
2. Practice: one continuous drive through the ControlLoop, cut into stretches of
   `episode_steps` (time limits, bootstrapped through). The reward is the velocity toward the
   next checkpoint minus collision and stuck penalties (`learners.practice.PracticeTask`); when
   the car is stuck, `RecoveryTeleop` reverses it with random steering, and those steps are not
   stored; nothing waits for a human. The demo lap's own transitions (driven again on the
   practice task) are RLPD prior data, half of each batch (`demo_prior`; our addition: without
   it a cheaper learner had not lapped after 5k steps, stuck against the first bend's wall).
3. The learner: SAC with 10 LayerNorm critics (target: min over a random 2, REDQ), 8 critic
   updates per env step (UTD 8) and one actor update, every action within +-0.2 of the previous
   in acting and in the update; on images, a frozen encoder pretrained offline (`encoder_init`).
4. Evaluation: the deterministic policy from the start line for `eval_laps` laps (recovery still
   on), lap times against the demo's, and a PNG of the course with the checkpoints and the
   fastest lap's trajectory.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from robot_rl.core.env import EnvSource
from robot_rl.errors import ConfigError, DatasetError
from robot_rl.utils.checkpoints import LearnerCheckpoints, generator_states, set_generator_states
from robot_rl.utils.device import resolve_device
from robot_rl.utils.training import RunLog, note, seed_everything


@dataclass
class FastRLAPConfig:
    env_steps: int = 30_000  # practice steps at most (10 Hz) ...
    max_minutes: float = 20.0  # ... and at most this much practice, wall clock
    control_hz: float = 10.0  # FastRLAP's rate (overrides the env's)
    demo: str | None = None  # an EpisodeStore whose first episode is the demo lap (else the scripted driver)
    demo_speed: float = 1.0  # m/s: the slow scripted demo lap's top speed
    checkpoint_spacing: float = 1.0  # m between checkpoints along the demo lap
    checkpoint_radius: float = 0.6  # m: a checkpoint counts as reached within this
    lookahead: int = 2  # checkpoints the policy sees ahead
    collision_penalty: float = 1.0  # per step touching a wall
    stuck_penalty: float = 2.0  # once, when found stuck
    stuck_window: int = 30  # positions (3 s at 10 Hz) ...
    stuck_radius: float = 0.3  # ... all within this many metres: stuck
    recovery_steps: int = 10  # 1 s of reversing at 10 Hz
    recovery_speed: float = -0.3  # normalized: -0.9 m/s
    episode_steps: int = 500  # one logged stretch of the continuous drive
    batch_size: int = 256
    buffer_capacity: int = 50_000
    training_starts: int = 1024
    eval_laps: int = 3
    eval_max_steps: int = 1500
    log_every: int = 500
    encoder_init: str | None = None  # images: an IQL or ICVF checkpoint whose CNN, frozen, encodes them
    demo_prior: bool = True  # the demo lap's transitions as RLPD prior data (half of each batch)
    device: str = "auto"  # the learner's device (acting runs there too; actions come back to the CPU)
    compile: bool = False  # torch.compile the critic loss
    seed: int = 0
    # env steps between resumable checkpoints in RUN/checkpoints, each at the end of the episode
    # it falls due in (0: none; Ctrl-C and SIGTERM write one at the step reached). A resumed run
    # practises on from where the car then is (in sim: the start), with its buffers and laps.
    checkpoint_every: int = 0
    resume: str | None = None  # a run folder: continue it from its latest checkpoint, to the same end
    sac: dict = field(default_factory=dict)  # SACConfig overrides

    def __post_init__(self):
        if self.env_steps < 1 or self.episode_steps < 1 or self.batch_size < 2 or self.eval_laps < 1:
            raise ConfigError(
                "env_steps, episode_steps and eval_laps must be at least 1, batch_size at least 2"
            )
        if not self.demo_speed > 0 or not self.max_minutes > 0 or not self.control_hz > 0:
            raise ConfigError("demo_speed, max_minutes and control_hz must be positive")


# --- the demo lap and the course ---------------------------------------------------------------
def scripted_demo_lap(env, driver, speed: float, max_steps: int = 5000) -> dict:
    """Drive one lap of the sim course with the scripted driver (`driver(env, speed)`, the env
    source's) capped at `speed` m/s, through the ControlLoop: the path (T, 2) and the lap time (s)."""
    from robot_rl.core import ControlLoop

    expert = driver(env, speed)
    path = []
    env.task.max_steps = max_steps
    loop = ControlLoop(
        env,
        lambda obs: expert(),
        rate_hz=None,
        execute_k=1,
        on_step=lambda loop, result: path.append(env.robot.pose()[:2].copy()),
    )
    try:
        result = loop.run_episode(seed=0)
    finally:
        loop.close()
    if not env.task.lap_times:
        raise ConfigError(f"the scripted demo lap at {speed} m/s did not finish in {max_steps} steps")
    start = np.array(env.task.course.start_pose[:2])
    return {
        "path": np.concatenate([start[None], np.stack(path)]),
        "lap_time": env.task.lap_times[0],
        "steps": result.steps,
        "collisions": env.task.collisions,
        "source": f"scripted driver at {speed} m/s",
    }


def demo_lap_from_store(path) -> dict:
    """The first episode of a recorded store as the demo lap: positions from the state's pose
    entries, the lap time from its length and the store's fps."""
    from robot_rl.datasets.store import EpisodeStore

    with EpisodeStore.open(path) as store:
        names = list(store.attrs.get("state_names") or [])
        if "pose[0]" not in names or "pose[1]" not in names:
            raise DatasetError(f"{path}: the state has no pose[0], pose[1] to take the demo lap's path from")
        if store.n_episodes == 0:
            raise DatasetError(f"{path} holds no episodes")
        state = store.episode(0, ["obs/state"])["obs/state"]
        fps = float(store.attrs.get("fps") or 0)
    if not fps > 0:
        raise DatasetError(f"{path} records no fps to time the demo lap by")
    xy = state[:, [names.index("pose[0]"), names.index("pose[1]")]].astype(np.float64)
    return {"path": xy, "lap_time": len(xy) / fps, "steps": len(xy), "collisions": None, "source": str(path)}


# --- practice ----------------------------------------------------------------------------------
def practice_env(
    envs: EnvSource, overrides: dict, cfg: FastRLAPConfig, checkpoints: np.ndarray, episode_steps: int
):
    """The car on its course with the practice task in place of the lap task."""
    from robot_rl.core.env import RobotEnv
    from robot_rl.tasks.practice import FlipDetector, PracticeTask, StuckDetector

    env, _ = envs.make(**overrides)
    task = PracticeTask(
        env.robot,
        checkpoints,
        cfg.checkpoint_radius,
        max_steps=episode_steps,
        lookahead=cfg.lookahead,
        collision_penalty=cfg.collision_penalty,
        stuck_penalty=cfg.stuck_penalty,
        stuck=StuckDetector(cfg.stuck_window, cfg.stuck_radius),
        flip=FlipDetector(),
        **envs.extras["practice_hooks"](env),
    )
    return RobotEnv(env.robot, task, env.cameras)


# Typical magnitudes of the car's state entries, which the agent divides them by: SAC takes the
# state as it comes, and a car's readings span 0.35 rad of steering to 60 rad/s of wheel speed.
STATE_SCALE = {
    "velocity": 3.0,
    "gyro": 5.0,
    "accel": 10.0,
    "wheel_speed": 60.0,
    "steer": 0.35,
    "collision": 1.0,
}


def state_scale(env, checkpoints: np.ndarray, cfg: FastRLAPConfig) -> tuple[float, ...]:
    """One divisor per state entry: physical ranges, the course's extent for the pose and the
    look-ahead distance for the checkpoints ahead."""
    extent = float(np.abs(checkpoints).max()) or 1.0
    per_key = {
        **STATE_SCALE,
        "pose": (extent, extent, math.pi),
        "checkpoints_ahead": cfg.lookahead * cfg.checkpoint_spacing + cfg.checkpoint_radius,
    }
    scale = []
    for key, size in env.state_layout.items():
        scale += list(np.broadcast_to(np.asarray(per_key.get(key, 1.0), np.float64), (size,)))
    return tuple(float(x) for x in scale)


def yaw_index(env) -> tuple[int, ...]:
    """Where the pose's yaw sits in the state (it wraps at +-pi: the agent reads cos and sin)."""
    names = env.state_names()
    return (names.index("pose[2]"),) if "pose[2]" in names else ()


def demo_prior_transitions(env, driver, speed: float, max_steps: int = 5000) -> list[dict]:
    """The scripted demo lap driven again on the practice env (its observations and rewards,
    which need the checkpoints the first drive gave): transitions for the prior buffer."""
    from robot_rl.learners.replay import TransitionSink

    expert = driver(env, speed)
    transitions: list[dict] = []
    drive(
        env,
        lambda obs: expert(),
        laps=1,
        max_steps=max_steps,
        seed=0,
        recorder=TransitionSink(transitions.append, keep_prev=True),
    )
    return transitions


def sac_config(env, cfg: FastRLAPConfig, checkpoints: np.ndarray):
    from robot_rl.policies.sac import SACConfig

    # FastRLAP's learner; 64x64 MLPs rather than its 256x256 so that UTD 8 over 10 critics fits 2 CPU
    # cores (docs/methods/fastrlap.md has the measurement).
    defaults = {
        "hidden": (64, 64),
        "critic_ensemble": 10,
        "critic_subsample": 2,
        "cta_ratio": 8,
        "discount": 0.99,
        "init_temperature": 0.5,
        "action_rate_limit": 0.2,
        "state_scale": state_scale(env, checkpoints, cfg),
        "frozen_cnn": bool(cfg.encoder_init),
        "angle_indices": yaw_index(env),
    }
    cameras = [k for k in (cfg.sac.get("image_keys") or []) if k in env.observation_space.spaces]
    if cameras:
        defaults["image_size"] = int(env.observation_space[cameras[0]].shape[0])
    try:
        sac = SACConfig(
            state_dim=env.observation_space["state"].shape[0],
            action_dim=env.action_space.shape[0],
            **{**defaults, **cfg.sac},
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad sac settings: {exc}") from None
    missing = [k for k in sac.image_keys if k not in env.observation_space.spaces]
    if missing:
        raise ConfigError(
            f"sac.image_keys {missing} are not observations of this env "
            f"(it has {', '.join(env.observation_space.spaces)})"
        )
    return sac


def drive(
    env, policy, laps: int, max_steps: int, seed: int, recovery: dict | None = None, recorder=None
) -> dict:
    """The policy drives from the start (the env's first reset) until `laps` laps or `max_steps`
    steps (recovery on when given its settings; each step to `recorder` when given): lap times,
    the trajectory (x, y, speed, time) and the task's counts."""
    from robot_rl.core import ControlLoop
    from robot_rl.tasks.practice import RecoveryTeleop

    task = env.task
    task.max_steps = max_steps
    teleop = RecoveryTeleop(task, seed=seed, **recovery) if recovery is not None else None
    trajectory = []

    def on_step(loop, result):
        trajectory.append(
            [*env.robot.pose()[:2], float(env.raw_obs["velocity"][0]), float(env.raw_obs["timestamp"])]
        )
        if len(task.lap_log) >= laps:
            result.stop_requested = True

    loop = ControlLoop(env, policy, teleop, rate_hz=None, execute_k=1, on_step=on_step, recorder=recorder)
    try:
        with env:
            result = loop.run_episode(seed=seed)
    finally:
        loop.close()
    return {
        "lap_times": [lap["lap_time"] for lap in task.lap_log],
        "laps": task.lap_log,
        "steps": result.steps,
        "recoveries": teleop.manoeuvres if teleop else 0,
        **task.counts,
        "trajectory": np.array(trajectory),
    }


class PracticeStore:
    """Where practice transitions go: the policy's into the learner, the recovery manoeuvre's
    (flagged intervened by the loop) nowhere: they are not the policy's experience."""

    def __init__(self, insert):
        self.insert, self.stored, self.skipped = insert, 0, 0

    def __call__(self, transition: dict) -> None:
        if transition["intervened"]:
            self.skipped += 1
            return
        self.stored += 1
        self.insert(transition)


def train_fastrlap(envs: EnvSource, out_dir, cfg: FastRLAPConfig, progress: bool = True) -> dict:
    from robot_rl.core import ControlLoop
    from robot_rl.learners.hil_serl import Learner
    from robot_rl.learners.replay import TransitionSink, replay_schema
    from robot_rl.policies.sac import AgentPolicy, SACAgent
    from robot_rl.tasks.course import extract_checkpoints
    from robot_rl.tasks.practice import RecoveryTeleop

    if "practice_hooks" not in envs.extras:
        raise ConfigError(f"learner=fastrlap drives the rc_car env, not {envs.name!r}")
    resumable = LearnerCheckpoints(out_dir, "fastrlap", cfg)  # a bad resume= is refused before any work
    settings = envs.settings
    seed_everything(cfg.seed)
    out = Path(out_dir)
    # Only the cameras the agent reads are rendered (none from state).
    cameras = [k.split("/", 1)[1] for k in cfg.sac.get("image_keys") or []]
    overrides = {"control_hz": cfg.control_hz, "laps": 1, "start_noise": False, "cameras": cameras}
    driver = envs.extras["driver"]
    if cfg.demo:
        demo = demo_lap_from_store(cfg.demo)
    else:
        demo_env, _ = envs.make(**{**overrides, "cameras": []})
        with demo_env:
            demo = scripted_demo_lap(demo_env, driver, cfg.demo_speed)
    checkpoints = extract_checkpoints(demo["path"], cfg.checkpoint_spacing)
    env = practice_env(envs, overrides, cfg, checkpoints, cfg.episode_steps)
    task = env.task
    sac = sac_config(env, cfg, checkpoints)
    agent = SACAgent(sac, seed=cfg.seed)
    if cfg.encoder_init:
        from robot_rl.learners.icvf import pretrained_encoder

        agent.init_camera_encoder(pretrained_encoder(cfg.encoder_init, sac.image_keys, sac.image_size))
    agent.to(resolve_device(cfg.device))
    if cfg.compile:
        agent.compile_losses()
    obs_keys = {
        "state": env.observation_space["state"],
        **{k: env.observation_space[k] for k in sac.image_keys},
    }
    learner = Learner(
        agent, replay_schema(obs_keys, sac.action_dim), cfg.buffer_capacity, cfg.batch_size, cfg.seed
    )
    if cfg.demo_prior and not cfg.demo and not cfg.resume:  # a resumed run has them in its buffers
        prior = demo_prior_transitions(
            practice_env(envs, overrides, cfg, checkpoints, cfg.episode_steps), driver, cfg.demo_speed
        )
        learner.prior.add_batch({k: np.stack([t[k] for t in prior]) for k in prior[0]})
    recovery = {"steps": cfg.recovery_steps, "speed": cfg.recovery_speed}
    if resumable.state is not None:  # buffers read before anything is written: damaged ones are refused
        learner.load_training_state(resumable.state["learner"], out)
    log = RunLog(
        out,
        f"FastRLAP on {envs.name} (course {settings.get('course_seed', 0)}), "
        f"demo lap {demo['lap_time']:.1f} s",
    )
    counts = {"env_steps": 0}
    store = PracticeStore(learner.insert)
    run = {"info": {}, "laps": [], "practice_s": 0.0, "episodes": 0}
    teleop = RecoveryTeleop(task, seed=cfg.seed + 1, **recovery)
    saved = resumable.restore(log)
    if saved is not None:
        counts.update(saved["counts"])
        run.update(saved["run"])
        task.counts.update(saved["task"])
        store.stored, store.skipped = saved["store"]
        set_generator_states([teleop], saved["teleop"])
    practice_laps = run["laps"]

    bar = resumable.bar(cfg.env_steps, "FastRLAP", "step", progress, steps=False)
    start, first_update = time.monotonic() - run["practice_s"], learner.steps

    def snapshot() -> dict:
        run.update(practice_s=time.monotonic() - start, episodes=loop.episode)
        return {
            "learner": learner.training_state(out),
            "counts": counts,
            "run": run,
            "task": task.counts,
            "store": [store.stored, store.skipped],
            "teleop": generator_states(teleop),
        }

    snapshot = resumable.snapshot(snapshot, log)

    def on_step(loop, result) -> None:
        counts["env_steps"] += 1
        if len(learner.online) >= cfg.training_starts:
            run["info"] = learner.step()
        info, steps = run["info"], counts["env_steps"]
        if len(task.lap_log) > len(practice_laps):
            lap = {**task.lap_log[-1], "env_step": steps, "wall_s": time.monotonic() - start}
            practice_laps.append(lap)
            log.log(steps, lap_time=lap["lap_time"])
            best = min(x["lap_time"] for x in practice_laps)
            note(
                f"lap {len(practice_laps)}: {lap['lap_time']:.2f} s "
                f"(demo {demo['lap_time']:.2f} s, best {best:.2f} s) "
                f"at step {steps}, {lap['wall_s'] / 60:.1f} min"
            )
        if info and steps % cfg.log_every == 0:
            speed = (learner.steps - first_update) / (time.monotonic() - start - run["practice_s"])
            log.log(steps, **info, updates_per_s=speed)
        bar.update(1)
        bar.set_postfix_str(
            f"laps {len(practice_laps)} stuck {task.counts['stuck']} flips {task.counts['flips']} "
            f"updates {learner.steps}",
            refresh=False,
        )
        if steps >= cfg.env_steps or time.monotonic() - start > 60 * cfg.max_minutes:
            result.stop_requested = True
        resumable.step_done(steps, cfg.env_steps, snapshot, boundary=False)  # Ctrl-C: here, mid-episode

    loop = ControlLoop(
        env,
        AgentPolicy(agent, keep_prev=True),
        teleop,
        rate_hz=None,
        execute_k=1,
        safety=envs.safety,
        recorder=TransitionSink(store, keep_prev=True),
        on_step=on_step,
    )
    loop.episode = run["episodes"]
    try:
        with env, resumable:
            while True:
                result = loop.run_episode(seed=cfg.seed * 1_000_003 + loop.episode)
                log.log(counts["env_steps"], episode_return=result.reward)
                if result.stop_requested or task.flipped:
                    break
                resumable.step_done(counts["env_steps"], cfg.env_steps, snapshot)
        report = loop.report()
    finally:
        loop.close()
        bar.close()
    practice_s = time.monotonic() - start
    if task.flipped:
        note("the car is on its roof: practice stopped (put it back on its wheels and resume)")
    checkpoint = agent.save(out / "checkpoint")
    evaluation = drive(
        practice_env(envs, overrides, cfg, checkpoints, cfg.eval_max_steps),
        AgentPolicy(agent, deterministic=True),
        cfg.eval_laps,
        cfg.eval_max_steps,
        seed=10_000,
        recovery=recovery,
    )
    trajectory = evaluation.pop("trajectory")
    best = min(evaluation["lap_times"]) if evaluation["lap_times"] else None
    plot = plot_course(
        out / "course.png", envs, checkpoints, cfg.checkpoint_radius, demo, evaluation, trajectory
    )
    results = {
        "learner": "fastrlap",
        "env": envs.name,
        "course_seed": int(settings.get("course_seed", 0)),
        "checkpoint": str(checkpoint),
        "config": asdict(cfg),
        "sac": asdict(sac),
        "demo": {k: v for k, v in demo.items() if k != "path"},
        "checkpoints": len(checkpoints),
        **counts,
        "prior_transitions": len(learner.prior),
        "stored": store.stored,
        "recovery_steps": store.skipped,
        "practice_minutes": practice_s / 60,
        "learner_steps": learner.steps,
        "practice": {
            "laps": practice_laps,
            "best_lap": min((x["lap_time"] for x in practice_laps), default=None),
            **task.counts,
        },
        "evaluation": {
            **evaluation,
            "best_lap": best,
            "best_over_demo": best / demo["lap_time"] if best else None,
        },
        "course_plot": str(plot),
        "loop": {"achieved_hz": report["clock"].get("achieved_hz")},
    }
    return log.close(results, curves=("lap_time", "episode_return", "critic_loss", "q", "alpha"))


# --- the picture -------------------------------------------------------------------------------
def plot_course(
    path,
    envs: EnvSource,
    checkpoints: np.ndarray,
    radius: float,
    demo: dict,
    evaluation: dict,
    trajectory: np.ndarray,
) -> Path:
    """The course (walls of the sim course), the checkpoints with their reach, the demo lap, and
    the evaluation's fastest lap coloured by speed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 7))
    for wall in envs.extras["walls"]() if "walls" in envs.extras else ():
        ax.plot(wall[:, 0], wall[:, 1], color="0.2", lw=2)
    ax.plot(
        demo["path"][:, 0],
        demo["path"][:, 1],
        "--",
        color="0.6",
        lw=1,
        label=f"demo lap {demo['lap_time']:.1f} s",
    )
    for i, (x, y) in enumerate(checkpoints):
        ax.add_patch(plt.Circle((x, y), radius, color="tab:orange", alpha=0.12))
        ax.text(x, y, str(i + 1), fontsize=6, ha="center", va="center", color="tab:orange")
    laps = evaluation["laps"]
    if laps:
        best = int(np.argmin([lap["lap_time"] for lap in laps]))
        end = laps[best]["t"]
        begin = laps[best - 1]["t"] if best > 0 else -math.inf
        part = trajectory[(trajectory[:, 3] > begin) & (trajectory[:, 3] <= end)]
        points = ax.scatter(
            part[:, 0],
            part[:, 1],
            c=part[:, 2],
            cmap="viridis",
            s=6,
            label=f"fastest lap {laps[best]['lap_time']:.1f} s",
        )
        fig.colorbar(points, ax=ax, shrink=0.7, label="speed (m/s)")
    elif len(trajectory):
        ax.plot(
            trajectory[:, 0], trajectory[:, 1], color="tab:red", lw=1, label="evaluation drive (no full lap)"
        )
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{envs.name} course {envs.settings.get('course_seed', 0)}: checkpoints and the fastest lap")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
