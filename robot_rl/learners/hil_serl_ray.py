"""HIL-SERL with the actor and the learner apart, as two Ray actors (the `dist` extra).

- `ActorServer` owns the robot: it runs the ControlLoop at the robot's rate with the current
  policy and the human's teleop, streams transitions to the learner in small batches, and picks
  up new weights in a background thread (applied between ticks, so the loop never waits on them).
- `LearnerServer` owns the buffers and the agent: it takes transitions whenever they arrive,
  updates as fast as it can in its own thread, and publishes the acting weights every
  `weights_every` learner steps.
- Checkpoints (`checkpoint_every` env steps): the actor, at the end of the episode they fall due
  in, sends what it has, waits until the learner has it all, and has the learner write one: the
  agent, its optimizers, both buffers (their new transitions appended) and the actor's counters.
  A resumed run goes on from there: the learner with its buffers, the actor with its counts.
- One machine by default (a local Ray is started); with `address` an existing cluster is joined
  and the actor is placed on the node that offers the custom resource `robot_resource` (start
  that node with `ray start --resources='{"robot_arm": 1}'`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from robot_rl.core.env import EnvSource
from robot_rl.errors import ConfigError, require
from robot_rl.learners.hil_serl import HILSERLConfig
from robot_rl.utils.checkpoints import checkpoint_due

KIND = "hil_serl_ray"  # its checkpoints (not resumable by the one-process run, whose state is more)


class LearnerServer:
    def __init__(self, obs_spaces: dict, action_dim: int, cfg: dict, weights_every: int, run_dir=None):
        import torch

        from robot_rl.learners.hil_serl import make_learner
        from robot_rl.utils.checkpoints import Checkpoints, latest_checkpoint

        torch.set_num_threads(1)
        self.cfg = HILSERLConfig(**cfg)
        torch.manual_seed(self.cfg.seed)
        # Spaces come from the actor: the learner never builds the robot's env.
        self.learner = make_learner(obs_spaces, action_dim, self.cfg)
        self.run_dir = run_dir
        self.checkpoints = Checkpoints(run_dir, KIND) if run_dir else None
        if self.cfg.resume:
            self.learner.load_training_state(latest_checkpoint(self.cfg.resume, KIND)["learner"], run_dir)
        self.weights_every = weights_every
        self.lock = threading.Lock()
        self.stepping = threading.Lock()  # held by each update: a checkpoint falls between two
        self.version, self.weights = 0, self.learner.agent.acting_state()
        self.received, self.info = (self.learner.online.total if self.cfg.resume else 0), {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()

    def insert(self, batch: dict) -> int:
        with self.lock:
            self.learner.insert_batch(batch)
            self.received += len(batch["action"])
        return self.received

    def start(self) -> None:
        if self._thread is not None:  # a second actor joining a named learner
            return
        self._thread = threading.Thread(target=self._train, daemon=True, name="learner")
        self._thread.start()

    def _train(self) -> None:
        from robot_rl.utils.device import Prefetcher

        learner = self.learner
        while len(learner.online) < self.cfg.training_starts:
            if self._stop.wait(0.01):
                return
        # The next steps' batches are sampled (under the insert lock) while this one updates.
        with Prefetcher(lambda: {"batches": learner.sample_step(self.lock)}, learner.agent.device) as batches:
            while not self._stop.is_set():
                with self.stepping:
                    self.info = learner.step(batches=next(batches)["batches"])
                if learner.steps % self.weights_every == 0:
                    self.weights, self.version = learner.agent.acting_state(), self.version + 1

    def checkpoint(self, step: int, actor: dict, settings: dict) -> str:
        """Write a checkpoint of env step `step`, between two updates, with the actor's state."""
        if self.checkpoints is None:
            raise ConfigError("checkpoint_every needs the learner to have a run folder")
        with self.stepping, self.lock:
            state = {"config": settings, "learner": self.learner.training_state(self.run_dir), "actor": actor}
            return str(self.checkpoints.save(step, state))

    def get_weights(self, have_version: int):
        """(version, weights) when newer than `have_version`, else None."""
        return (self.version, self.weights) if self.version > have_version else None

    def status(self) -> dict:
        elapsed = time.monotonic() - self.started
        return {
            "learner_steps": self.learner.steps,
            "received": self.received,
            "version": self.version,
            "updates_per_s": self.learner.steps / max(elapsed, 1e-9),
            **{k: float(v) for k, v in self.info.items()},
        }

    def finish(self, out_dir: str) -> dict:
        """Stop training; save the agent and both buffers under `out_dir`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        out = Path(out_dir)
        checkpoint = self.learner.agent.save(out / "checkpoint")
        self.learner.online.save(out / "buffers" / "online.zarr")
        self.learner.prior.save(out / "buffers" / "prior.zarr")
        return {"checkpoint": str(checkpoint), **self.status()}


class ActorServer:
    """The acting side. In sim (`env` None) it makes its env from `envs` and the scripted expert
    stands in for the human; on a robot (the ROS actor node) it is given the robot's env, the
    operator's teleop device and the safety settings."""

    def __init__(
        self,
        envs: EnvSource | None,
        cfg: dict,
        send_every: int = 50,
        env=None,
        teleop=None,
        safety=None,
        time_source=None,
        observer=None,
        resumed: dict | None = None,
    ):
        """On a robot: `env`, `teleop` and `safety` are the robot's; `time_source` paces the loop
        on another clock (ControlLoop's), `observer(loop, result)` sees every tick. `resumed`: the
        actor's part of the checkpoint a run resumes from."""
        import torch

        from robot_rl.core import ControlLoop
        from robot_rl.learners.hil_serl import human_attention, make_agent, make_env, share_frame_features
        from robot_rl.learners.replay import TransitionSink
        from robot_rl.policies.sac import AgentPolicy
        from robot_rl.tasks.teleops import ScriptedTeleop

        torch.set_num_threads(1)
        self.cfg = HILSERLConfig(**cfg)
        self.counts = {
            "env_steps": 0,
            "episodes": 0,
            "successes": 0,
            "intervened_steps": 0,
            "intervened_episodes": 0,
        }
        if env is None:
            env, expert = make_env(envs, self.cfg)
            safety = envs.safety
            if self.cfg.human != "none":
                teleop = ScriptedTeleop(
                    expert,
                    mode=self.cfg.human,
                    takeover_steps=self.cfg.human_takeover,
                    attention=human_attention(self.cfg, lambda: self.counts["env_steps"]),
                    seed=self.cfg.seed + 1,
                )
        self.env = env
        # The acting copy stays on the CPU, beside the robot; the learner's device is the learner's.
        self.agent = make_agent(
            self.env.observation_space.spaces,
            self.env.action_space.shape[0],
            dataclasses.replace(self.cfg, device="cpu"),
        )
        share_frame_features(self.env, self.agent)
        self.learner, self.send_every = None, send_every
        self.recent: list[bool] = []
        self.pending: list[dict] = []
        self._in_flight: list = []
        self.humans = [h for h in (teleop, getattr(teleop, "expert", None)) if h is not None]
        if resumed is not None:  # where the checkpoint left the actor, and the weights it acted with
            from robot_rl.utils.checkpoints import set_generator_states

            self.counts.update(resumed["counts"])
            self.recent = list(resumed["recent"])
            set_generator_states(self.humans, resumed["humans"])
            self.agent.load_state_dict(resumed["model"])
        self.checkpoint_every, self._stop_asked = self.cfg.checkpoint_every, threading.Event()
        self.version, self._new_weights = 0, None
        self._stop = threading.Event()
        self.loop = ControlLoop(
            self.env,
            self._act_with_latest(AgentPolicy(self.agent)),
            teleop,
            rate_hz=self.cfg.rate_hz,
            execute_k=1,
            safety=safety,
            recorder=TransitionSink(self.pending.append),
            on_step=self._on_step,
            time_source=time_source,
        )
        self.observer = observer

    def connect_learner(self, learner) -> None:
        self.learner = learner

    def spaces(self) -> tuple[dict, int]:
        """The observation spaces and action size the learner builds its agent for."""
        return self.env.observation_space.spaces, int(self.env.action_space.shape[0])

    def _act_with_latest(self, policy):
        def act(obs):
            new = self._new_weights
            if new is not None:  # weights fetched in the background: swap them in between ticks
                self._new_weights = None
                self.agent.load_acting_state(new)
            return policy(obs)

        act.reset = policy.reset
        return act

    def _poll_weights(self) -> None:
        import ray

        while not self._stop.is_set():
            got = ray.get(self.learner.get_weights.remote(self.version))
            if got is not None:
                self.version, self._new_weights = got
            self._stop.wait(0.2)

    def _flush(self) -> None:
        if self.pending:
            batch = {k: np.stack([t[k] for t in self.pending]) for k in self.pending[0]}
            self.pending.clear()
            import ray

            self._in_flight.append(self.learner.insert.remote(batch))  # the loop never waits on the learner
            _, self._in_flight = ray.wait(self._in_flight, num_returns=len(self._in_flight), timeout=0)

    def _delivered(self) -> None:
        """Every transition sent has reached the learner."""
        import ray

        self._flush()
        ray.get(self._in_flight)
        self._in_flight.clear()

    def _checkpoint(self) -> None:
        import ray

        from robot_rl.utils.checkpoints import generator_states, settings_of

        self._delivered()
        actor = {
            "counts": self.counts,
            "recent": self.recent,
            "humans": generator_states(*self.humans),
            "model": self.agent.state_dict(),
        }
        ray.get(self.learner.checkpoint.remote(self.counts["env_steps"], actor, settings_of(self.cfg)))
        self._checkpointed = self.counts["env_steps"]

    def stop(self) -> None:
        """Stop at the next tick (the robot stops), with a checkpoint of the step reached."""
        self._stop_asked.set()

    def _on_step(self, loop, result) -> None:
        self.counts["env_steps"] += 1
        if self.observer is not None:
            self.observer(loop, result)
        if len(self.pending) >= self.send_every:
            self._flush()
        if self._stop_asked.is_set():
            raise KeyboardInterrupt  # out of the episode: the loop stops the robot first

    def run(self, env_steps: int) -> dict:
        """Act until `env_steps`; {counts..., "stopped": whether `stop()` ended it first}."""
        poller = threading.Thread(target=self._poll_weights, daemon=True, name="weights")
        poller.start()
        every, self._checkpointed, stopped = self.checkpoint_every, self.counts["env_steps"], False
        try:
            with self.env:
                while self.counts["env_steps"] < env_steps:
                    try:
                        result = self.loop.run_episode(
                            seed=self.cfg.seed * 1_000_003 + self.counts["episodes"]
                        )
                    except KeyboardInterrupt:
                        if not self._stop_asked.is_set():
                            raise
                        self._checkpoint()
                        stopped = True
                        break
                    self._flush()
                    c = self.counts
                    c["episodes"] += 1
                    c["successes"] += int(result.success)
                    c["intervened_steps"] += result.intervened_steps
                    c["intervened_episodes"] += int(result.intervened_steps > 0)
                    self.recent = (self.recent + [bool(result.success)])[-20:]
                    if checkpoint_due(c["env_steps"], self._checkpointed, every, env_steps):
                        self._checkpoint()
        finally:
            self._stop.set()
            poller.join()
            self.loop.close()
        self._delivered()  # the last batch has arrived before anyone asks the learner to finish
        return {
            **self.counts,
            "loop": self.loop.report()["clock"],
            "weights_version": self.version,
            "stopped": stopped,
        }

    def status(self) -> dict:
        clock = self.loop.clock.report()
        return {
            **self.counts,
            "success_rate_20": float(np.mean(self.recent)) if self.recent else 0.0,
            "actor_hz": clock.get("achieved_hz", 0.0),
            "weights_version": self.version,
        }


def named_learner(
    obs_spaces: dict,
    action_dim: int,
    cfg: HILSERLConfig,
    name: str,
    weights_every: int = 100,
    run_dir: str | None = None,
):
    """(the cluster's learner called `name`, whether it was made here): made (detached, so other
    actors can join it) when no such learner runs yet, and started; its checkpoints go to
    `run_dir`. How an actor on a robot (the ROS actor node) connects to its learner. Ray must be
    initialized."""
    import ray

    if weights_every < 1:
        raise ConfigError(f"weights_every must be at least 1, got {weights_every}")
    try:
        learner, made = ray.get_actor(name, namespace="robot_rl"), False
    except ValueError:  # none runs yet
        from robot_rl.utils.dist import gpus_for

        cls = ray.remote(num_cpus=1, num_gpus=gpus_for(cfg.device), max_concurrency=8)(LearnerServer)
        learner = cls.options(
            name=name, namespace="robot_rl", get_if_exists=True, lifetime="detached"
        ).remote(obs_spaces, action_dim, asdict(cfg), weights_every, run_dir)
        made = True
    ray.get(learner.start.remote())
    return learner, made


def train_hil_serl_ray(
    envs: EnvSource,
    out_dir,
    cfg: HILSERLConfig,
    address: str | None = None,
    robot_resource: str | None = None,
    weights_every: int = 100,
    progress: bool = True,
) -> dict:
    """Run the actor and the learner as Ray actors until `cfg.env_steps`; live status in a bar."""
    from tqdm import tqdm

    from robot_rl.utils.checkpoints import LearnerCheckpoints
    from robot_rl.utils.training import RunLog

    ray = require("ray", "dist", "the actor/learner split")
    if weights_every < 1:
        raise ConfigError(f"weights_every must be at least 1, got {weights_every}")
    checkpoints = LearnerCheckpoints(out_dir, KIND, cfg)  # a bad resume= is refused before any work
    resumed = checkpoints.state["actor"] if checkpoints.state else None
    cfg_dict = asdict(cfg)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            **({} if address else {"num_cpus": 2}),
        )
    try:
        placement = {"resources": {robot_resource: 0.01}} if robot_resource else {}
        from robot_rl.utils.dist import gpus_for

        learner_cls = ray.remote(num_cpus=1, num_gpus=gpus_for(cfg.device), max_concurrency=8)(LearnerServer)
        actor_cls = ray.remote(num_cpus=1, max_concurrency=4, **placement)(ActorServer)
        # The actor (on the robot's node) is made first; the learner gets its spaces from it.
        actor = actor_cls.remote(envs, cfg_dict, resumed=resumed)
        obs_spaces, action_dim = ray.get(actor.spaces.remote())
        learner = learner_cls.remote(obs_spaces, action_dim, cfg_dict, weights_every, str(out_dir))
        ray.get([learner.start.remote(), actor.connect_learner.remote(learner)])
        log = RunLog(out_dir, f"HIL-SERL (Ray actor/learner) on {envs.name}")
        done = actor.run.remote(cfg.env_steps)
        bar = tqdm(
            total=cfg.env_steps, desc="HIL-SERL (ray)", unit="step", disable=not progress, dynamic_ncols=True
        )
        with checkpoints:  # Ctrl-C and SIGTERM: the actor stops at its next tick, with a checkpoint
            while not ray.wait([done], timeout=0.2 if checkpoints.stop_requested else 1.0)[0]:
                if checkpoints.stop_requested:
                    ray.get(actor.stop.remote())
                    continue
                a, lrn = ray.get([actor.status.remote(), learner.status.remote()])
                log.log(
                    a["env_steps"],
                    success_rate_20=a["success_rate_20"],
                    actor_hz=a["actor_hz"],
                    updates_per_s=lrn["updates_per_s"],
                    intervened_episodes=a["intervened_episodes"],
                )
                bar.n = min(a["env_steps"], cfg.env_steps)
                bar.set_postfix_str(
                    f"success(20) {a['success_rate_20']:.2f} interventions {a['intervened_episodes']} "
                    f"actor {a['actor_hz']:.1f} Hz learner {lrn['updates_per_s']:.1f} upd/s "
                    f"weights v{a['weights_version']}",
                    refresh=True,
                )
        bar.close()
        acted = ray.get(done)
        if acted["stopped"]:
            raise KeyboardInterrupt  # after the actor's checkpoint; the learner saves nothing more
        learned = ray.get(learner.finish.remote(str(out_dir)))
    finally:
        if started_here:
            ray.shutdown()
    evaluation = _evaluate(learned["checkpoint"], envs, cfg) if cfg.eval_episodes else None
    return log.close(
        {
            "learner": "hil_serl",
            "dist": "ray",
            "env": envs.name,
            "config": cfg_dict,
            "actor": acted,
            "learner_stats": learned,
            "checkpoint": learned["checkpoint"],
            "evaluation": evaluation,
        },
        curves=("success_rate_20", "actor_hz", "updates_per_s", "intervened_episodes"),
    )


def _evaluate(checkpoint: str, envs: EnvSource, cfg: HILSERLConfig) -> dict:
    """The saved agent in simulation, deterministic and without the human (here, in the driver)."""
    from robot_rl.learners.hil_serl import evaluate_agent, make_env
    from robot_rl.policies.sac import SACAgent

    env, _ = make_env(envs, cfg)
    try:
        with env:
            return evaluate_agent(
                SACAgent.load(checkpoint), envs, env, cfg.eval_episodes, cfg.eval_num_envs, 10_000
            )
    finally:
        env.close()
