"""`reach`: a 3-DoF MuJoCo arm moves its end effector to a randomized target.

Cartesian end-effector control: an action is a position step of at most 2 cm (at 20 Hz), turned
into joint targets by damped least-squares IK on the site Jacobian; physics runs 25 substeps of
2 ms per command. Sparse reward: 1 when the end effector is within 2 cm of the target.
"""

from __future__ import annotations

import mujoco
import numpy as np

from robot_rl.core.env import RobotEnv
from robot_rl.core.protocols import Robot, Task
from robot_rl.core.specs import ArraySpec
from robot_rl.errors import ConfigError
from robot_rl.sim.world import ASSETS, MujocoCamera, MujocoWorld

CONTROL_HZ = 20.0
MAX_STEP_M = 0.02
MAX_TARGET_LEAD = 0.2  # rad: how far the servo target may run ahead of the measured joints
HOME_QPOS = np.array([0.0, 0.2, 0.6])
TARGET_LOW = np.array([0.18, -0.3, 0.08])
TARGET_HIGH = np.array([0.45, 0.3, 0.4])


class MujocoReachArm(Robot):
    def __init__(self, world: MujocoWorld, control_hz: float = CONTROL_HZ, damping: float = 0.05):
        self.world = world
        model = world.model
        self.substeps = int(round(1.0 / (control_hz * model.opt.timestep)))
        self._site = model.site("ee").id
        self._joint_range = model.jnt_range.copy()
        self._damping2 = damping**2
        self._jacp = np.zeros((3, model.nv))
        self.observation_spec = {
            "joint_pos": ArraySpec((3,)),
            "joint_vel": ArraySpec((3,)),
            "ee_pos": ArraySpec((3,)),
            "timestamp": ArraySpec((), "float64"),
        }
        self.action_spec = ArraySpec((3,), low=-MAX_STEP_M, high=MAX_STEP_M, names=("dx", "dy", "dz"))
        self.commands = 0
        self.stops = 0

    def connect(self) -> None:
        self.world.forward()

    def disconnect(self) -> None:
        pass

    def ee_pos(self) -> np.ndarray:
        return self.world.data.site_xpos[self._site].copy()

    def observe(self) -> dict[str, np.ndarray]:
        d = self.world.data
        return {
            "joint_pos": d.qpos[:3].astype(np.float32),
            "joint_vel": d.qvel[:3].astype(np.float32),
            "ee_pos": self.ee_pos().astype(np.float32),
            "timestamp": np.float64(d.time),
        }

    def command(self, action: np.ndarray) -> None:
        self.set_command(action)
        self.step_physics()
        self.commands += 1

    def step_physics(self) -> None:
        """Advance physics by one command period."""
        self.world.step(self.substeps)

    def set_command(self, action: np.ndarray) -> None:
        """Servo targets for an action, without stepping physics."""
        delta = np.clip(np.asarray(action, np.float64), -MAX_STEP_M, MAX_STEP_M)
        m, d = self.world.model, self.world.data
        mujoco.mj_jacSite(m, d, self._jacp, None, self._site)
        jac = self._jacp[:, :3]
        dq = jac.T @ np.linalg.solve(jac @ jac.T + self._damping2 * np.eye(3), delta)
        # Integrate the servo target rather than restarting from the measured joints, so servo lag
        # does not shrink every commanded step; bounded near the measured joints against windup.
        q = d.qpos[:3]
        target = np.clip(d.ctrl[:3] + dq, q - MAX_TARGET_LEAD, q + MAX_TARGET_LEAD)
        d.ctrl[:] = np.clip(target, self._joint_range[:, 0], self._joint_range[:, 1])

    def stop(self) -> None:
        # Hold the current joint positions. Safe from any thread: it only writes the servo targets.
        d = self.world.data
        d.ctrl[:] = d.qpos[:3]
        self.stops += 1

    def reset_joints(self, qpos: np.ndarray) -> None:
        d = self.world.data
        d.qpos[:3] = qpos
        d.qvel[:] = 0.0
        d.ctrl[:] = qpos
        self.world.forward()


class ReachTask(Task):
    """observe_target=False leaves the target out of the state: only a camera shows it (the
    visual variant, `reach_visual`, where image pretraining has something to find). target_height
    puts every target on one horizontal plane, so that a single camera determines it.
    end_on_success=False runs every episode to its length (rewarded at each step on the target),
    as recorded datasets are (conf/vlm_iql.yaml's collect_env)."""

    text = "move the arm's end effector to the red target"

    def __init__(
        self,
        arm: MujocoReachArm,
        max_steps: int = 80,
        tolerance: float = 0.02,
        observe_target: bool = True,
        target_height: float | None = None,
        end_on_success: bool = True,
    ):
        self.arm, self.world, self.max_steps, self.tolerance = arm, arm.world, max_steps, tolerance
        self.observe_target, self.end_on_success = observe_target, end_on_success
        self._low, self._high = TARGET_LOW.copy(), TARGET_HIGH.copy()
        if target_height is not None:
            if not TARGET_LOW[2] <= target_height <= TARGET_HIGH[2]:
                raise ConfigError(
                    f"target_height must be in [{TARGET_LOW[2]}, {TARGET_HIGH[2]}] m, got {target_height}"
                )
            self._low[2] = self._high[2] = target_height
        self._mocap = self.world.model.body("target").mocapid[0]

    @property
    def target(self) -> np.ndarray:
        return self.world.data.mocap_pos[self._mocap].copy()

    def observation_spec(self) -> dict[str, ArraySpec]:
        return {"target_pos": ArraySpec((3,))} if self.observe_target else {}

    def observe(self) -> dict[str, np.ndarray]:
        return {"target_pos": self.target.astype(np.float32)} if self.observe_target else {}

    def reset(self, rng: np.random.Generator) -> None:
        self.world.data.time = 0.0
        self.arm.reset_joints(HOME_QPOS + rng.uniform(-0.15, 0.15, size=3))
        # A target at least 8 cm away, so every episode is a real reach.
        target = rng.uniform(self._low, self._high)
        while np.linalg.norm(target - self.arm.ee_pos()) < 0.08:
            target = rng.uniform(self._low, self._high)
        self.world.data.mocap_pos[self._mocap] = target
        self.world.forward()

    def distance(self) -> float:
        return float(np.linalg.norm(self.arm.ee_pos() - self.target))

    def evaluate(self, obs) -> tuple[float, bool, bool]:
        success = self.distance() < self.tolerance
        return float(success), success, success and self.end_on_success


def make_reach_env(
    cameras: tuple[str, ...] = ("front",),
    image_size: int = 84,
    max_steps: int = 80,
    observe_target: bool = True,
    target_height: float | None = None,
    end_on_success: bool = True,
) -> RobotEnv:
    world = MujocoWorld(ASSETS / "reach_arm.xml")
    arm = MujocoReachArm(world)
    task = ReachTask(
        arm,
        max_steps=max_steps,
        observe_target=observe_target,
        target_height=target_height,
        end_on_success=end_on_success,
    )
    cams = [MujocoCamera(world, name, image_size, image_size) for name in cameras]
    return RobotEnv(arm, task, cams)


class ReachExpert:
    """Steps straight toward the target; `noise` adds Gaussian noise (normalized action units)."""

    def __init__(self, task: ReachTask, noise: float = 0.0, seed: int | None = None):
        self.task, self.noise = task, noise
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs=None) -> np.ndarray:
        step = (self.task.target - self.task.arm.ee_pos()) / MAX_STEP_M
        action = np.clip(step, -1.0, 1.0)
        if self.noise:
            action = action + self.noise * self.rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def distance(self) -> float:
        return self.task.distance()


def from_config(cfg, expert_noise: float = 0.0, seed: int | None = None):
    height = cfg.get("target_height")
    env = make_reach_env(
        cameras=tuple(cfg.cameras),
        image_size=int(cfg.image_size),
        max_steps=int(cfg.max_steps),
        observe_target=bool(cfg.get("observe_target", True)),
        target_height=None if height is None else float(height),
        end_on_success=bool(cfg.get("end_on_success", True)),
    )
    return env, ReachExpert(env.task, noise=expert_noise, seed=seed)
