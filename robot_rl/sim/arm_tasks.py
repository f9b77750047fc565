"""Tabletop tasks for the 7-DoF arm: `peg_insert`, `cube_lift`, `cube_place`, with scripted experts.

- peg_insert: a square peg held rigidly in the gripper goes into a square hole with a total
  clearance of 2 mm by default (1 mm a side); the hole's position and yaw are randomized per
  episode. Success: the peg's tip at least 3 cm below the top of the fixture, which only the
  hole allows. The precision task, where behaviour cloning alone is unreliable.
- cube_lift: pick up a 4 cm cube (random position and yaw) and lift it 8 cm.
- cube_place: pick the cube and put it into a bin (both randomized); success once the cube rests
  inside the bin and the gripper has let go.

Movable fixtures are mocap bodies, so their poses live in MjData: every copy of a scene in a
vector env can hold a different layout over one shared MjModel.
"""

from __future__ import annotations

import numpy as np

from robot_rl.core.env import RobotEnv
from robot_rl.core.protocols import Task
from robot_rl.core.specs import ArraySpec
from robot_rl.errors import ConfigError
from robot_rl.sim.arm import HOME_QPOS, MAX_STEP_M, MAX_YAW_STEP, MujocoArm, scene_xml
from robot_rl.sim.randomization import randomization_hooks
from robot_rl.sim.world import MujocoCamera, MujocoWorld
from robot_rl.tasks.arm import yaw_of

TABLE_X = (0.45, 0.62)
TABLE_Y = (-0.18, 0.18)
CUBE_HALF = 0.02
PEG_HALF = 0.0125
PEG_LENGTH = 0.1
HOLE_DEPTH = 0.05
HOLE_WALL = 0.03
INSERTED_DEPTH = 0.03
POSITION_GAIN = 0.6
FINE_SCALE_M = 0.005
CUBE_FINE_SCALE_M = 0.02


def _quat_yaw(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def _square_yaw_error(yaw: float, target: float) -> float:
    """Yaw difference for a square part (symmetric every 90 degrees), in [-pi/4, pi/4)."""
    return float((target - yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class ArmTask(Task):
    """Shared reset and helpers; subclasses add their objects, success test and expert."""

    text = ""
    # False: success does not end the episode, which runs to max_steps (fixed-length episodes,
    # as a recording that carries no rewards has: an end at success would tell the success).
    end_on_success = True

    def __init__(self, arm: MujocoArm, max_steps: int):
        self.arm, self.world, self.max_steps = arm, arm.world, max_steps

    def succeeded(self) -> bool:
        raise NotImplementedError

    def evaluate(self, obs):
        success = bool(self.succeeded())
        return float(success), success, success and self.end_on_success

    def reset(self, rng: np.random.Generator) -> None:
        self.world.data.time = 0.0
        self.arm.reset_joints(
            HOME_QPOS + rng.uniform(-0.05, 0.05, size=7), gripper_open=self.initial_gripper()
        )
        self.place_objects(rng)
        self.world.forward()

    def initial_gripper(self) -> float:
        return 0.04

    def place_objects(self, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _set_mocap(self, body: str, pos, yaw: float) -> None:
        mocap = self.world.model.body(body).mocapid[0]
        self.world.data.mocap_pos[mocap] = pos
        self.world.data.mocap_quat[mocap] = _quat_yaw(yaw)

    def _set_free(self, body: str, pos, yaw: float) -> None:
        joint = self.world.model.body(body).jntadr[0]
        adr = self.world.model.jnt_qposadr[joint]
        self.world.data.qpos[adr : adr + 3] = pos
        self.world.data.qpos[adr + 3 : adr + 7] = _quat_yaw(yaw)


# --- peg_insert -------------------------------------------------------------------------------
def peg_scene(clearance: float) -> str:
    gap = PEG_HALF + clearance / 2  # half-width of the hole
    half_depth = HOLE_DEPTH / 2
    walls = []
    for i, (x, y, sx, sy) in enumerate(
        [
            (gap + HOLE_WALL, 0, HOLE_WALL, gap + 2 * HOLE_WALL),
            (-gap - HOLE_WALL, 0, HOLE_WALL, gap + 2 * HOLE_WALL),
            (0, gap + HOLE_WALL, gap, HOLE_WALL),
            (0, -gap - HOLE_WALL, gap, HOLE_WALL),
        ]
    ):
        walls.append(
            f'<geom name="hole_wall{i}" class="fixture" type="box" size="{sx} {sy} {half_depth}" '
            f'pos="{x} {y} {half_depth}"/>'
        )
    peg = (
        f'<geom name="peg" type="box" size="{PEG_HALF} {PEG_HALF} {PEG_LENGTH / 2}" '
        f'pos="0 0 {0.105 + 0.07 - PEG_LENGTH / 2}" '
        'contype="1" conaffinity="1" condim="3" friction="0.4 0.005 0.0001" solref="0.004 1" '
        'solimp="0.95 0.99 0.001" '
        'rgba="0.85 0.65 0.1 1"/>\n'
        f'<site name="peg_tip" pos="0 0 {0.105 + 0.07}" size="0.004" rgba="1 0 0 1"/>'
    )
    fixture = """
    <default><default class="fixture"><geom contype="1" conaffinity="1" condim="3" friction="0.4 0.005 0.0001"
        solref="0.004 1" solimp="0.95 0.99 0.001" rgba="0.3 0.45 0.7 1"/></default></default>"""
    worldbody = (
        f'<body name="hole" mocap="true" pos="0.55 0 0">{"".join(walls)}'
        f'<site name="hole_top" pos="0 0 {HOLE_DEPTH}" size="0.004"/></body>'
    )
    return scene_xml(worldbody, hand_extra=peg).replace("<worldbody>", fixture + "\n  <worldbody>", 1)


class PegInsertTask(ArmTask):
    text = "insert the peg into the hole"

    def __init__(self, arm: MujocoArm, max_steps: int = 120, clearance: float = 0.002):
        super().__init__(arm, max_steps)
        self.clearance = clearance
        self._tip = self.world.model.site("peg_tip").id
        self._hole = self.world.model.body("hole").mocapid[0]

    def initial_gripper(self) -> float:
        return PEG_HALF  # the fingers close on the peg

    def place_objects(self, rng):
        x, y = rng.uniform(*TABLE_X), rng.uniform(*TABLE_Y)
        self._set_mocap("hole", [x, y, 0.0], rng.uniform(-np.pi / 4, np.pi / 4))

    @property
    def hole_pos(self) -> np.ndarray:
        return self.world.data.mocap_pos[self._hole].copy()

    @property
    def hole_yaw(self) -> float:
        w, _, _, z = self.world.data.mocap_quat[self._hole]
        return float(2 * np.arctan2(z, w))

    def tip(self) -> np.ndarray:
        return self.world.data.site_xpos[self._tip].copy()

    def observation_spec(self):
        return {
            "hole_pos": ArraySpec((3,)),
            "hole_yaw": ArraySpec((2,)),
            "tip_to_hole": ArraySpec((3,)),
            "tip_to_hole_fine": ArraySpec((3,)),
            "yaw_to_hole": ArraySpec((1,)),
        }

    def observe(self):
        # The hole is symmetric every 90 degrees: encode 4*yaw so equivalent poses look the same.
        yaw = 4 * self.hole_yaw
        # The peg relative to the hole, as a perception system would report it: the millimetre-scale
        # signal the insertion depends on, not left to a difference of two absolute positions that
        # the normalizer scales by the whole table. The fine copy saturates at a few millimetres, so
        # after min-max normalization a millimetre still spans a tenth of its range.
        to_hole = self.tip_to_hole()
        return {
            "hole_pos": self.hole_pos.astype(np.float32),
            "hole_yaw": np.array([np.cos(yaw), np.sin(yaw)], np.float32),
            "tip_to_hole": to_hole.astype(np.float32),
            "tip_to_hole_fine": np.tanh(to_hole / FINE_SCALE_M).astype(np.float32),
            "yaw_to_hole": np.array(
                [_square_yaw_error(yaw_of(self.arm.ee_rotation()), self.hole_yaw)], np.float32
            ),
        }

    def tip_to_hole(self) -> np.ndarray:
        """The hole's mouth (top centre) minus the peg's tip."""
        return self.hole_pos + np.array([0.0, 0.0, HOLE_DEPTH]) - self.tip()

    def succeeded(self) -> bool:
        tip = self.tip()
        depth = HOLE_DEPTH - tip[2]
        lateral = np.linalg.norm(tip[:2] - self.hole_pos[:2])
        return depth >= INSERTED_DEPTH and lateral < PEG_HALF


# --- cube_lift / cube_place ---------------------------------------------------------------------
CUBE_XML = f"""
<body name="cube" pos="0.5 0 {CUBE_HALF}">
  <freejoint/>
  <geom name="cube" type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" contype="1" conaffinity="1"
        condim="4"
        friction="1.2 0.02 0.001" solref="0.004 1" density="600" rgba="0.85 0.15 0.15 1"/>
</body>"""

BIN_HALF, BIN_WALL, BIN_HEIGHT = 0.07, 0.008, 0.035
BIN_XML = f"""
<body name="bin" mocap="true" pos="0.5 0.15 0">
  <geom type="box" size="{BIN_HALF + BIN_WALL} {BIN_HALF + BIN_WALL} 0.004" pos="0 0 0.004"
        contype="1" conaffinity="1" rgba="0.3 0.55 0.35 1"/>
  <geom type="box" size="{BIN_WALL} {BIN_HALF + BIN_WALL} {BIN_HEIGHT / 2}"
        pos="{BIN_HALF + BIN_WALL} 0 {BIN_HEIGHT / 2}" contype="1" conaffinity="1" rgba="0.3 0.55 0.35 1"/>
  <geom type="box" size="{BIN_WALL} {BIN_HALF + BIN_WALL} {BIN_HEIGHT / 2}"
        pos="{-BIN_HALF - BIN_WALL} 0 {BIN_HEIGHT / 2}" contype="1" conaffinity="1" rgba="0.3 0.55 0.35 1"/>
  <geom type="box" size="{BIN_HALF} {BIN_WALL} {BIN_HEIGHT / 2}"
        pos="0 {BIN_HALF + BIN_WALL} {BIN_HEIGHT / 2}" contype="1" conaffinity="1" rgba="0.3 0.55 0.35 1"/>
  <geom type="box" size="{BIN_HALF} {BIN_WALL} {BIN_HEIGHT / 2}"
        pos="0 {-BIN_HALF - BIN_WALL} {BIN_HEIGHT / 2}" contype="1" conaffinity="1" rgba="0.3 0.55 0.35 1"/>
</body>"""


class CubeTask(ArmTask):
    LIFT_M = 0.08

    def __init__(self, arm: MujocoArm, max_steps: int):
        super().__init__(arm, max_steps)
        body = self.world.model.body("cube")
        self._cube_body = body.id
        self._cube_adr = self.world.model.jnt_qposadr[body.jntadr[0]]

    @property
    def cube_pos(self) -> np.ndarray:
        return self.world.data.xpos[self._cube_body].copy()

    @property
    def cube_yaw(self) -> float:
        return yaw_of(self.world.data.xmat[self._cube_body].reshape(3, 3))

    def observation_spec(self):
        return {
            "cube_pos": ArraySpec((3,)),
            "cube_quat": ArraySpec((4,)),
            "ee_to_cube": ArraySpec((3,)),
            "ee_to_cube_fine": ArraySpec((3,)),
            "yaw_to_cube": ArraySpec((1,)),
        }

    def observe(self):
        # Besides the cube's pose, the cube relative to the gripper, as robosuite's Lift reports it
        # (gripper_to_cube_pos): a grasp needs the offset to a few millimetres, which a network
        # would otherwise have to find as the difference of two absolute positions in metres.
        # The fine copy saturates at a few centimetres, where the grasp is decided; the yaw error
        # is folded every 90 degrees, as the cube's faces are.
        quat = self.world.data.qpos[self._cube_adr + 3 : self._cube_adr + 7]
        to_cube = self.cube_pos - self.arm.ee_pos()
        return {
            "cube_pos": self.cube_pos.astype(np.float32),
            "cube_quat": quat.astype(np.float32),
            "ee_to_cube": to_cube.astype(np.float32),
            "ee_to_cube_fine": np.tanh(to_cube / CUBE_FINE_SCALE_M).astype(np.float32),
            "yaw_to_cube": np.array(
                [_square_yaw_error(yaw_of(self.arm.ee_rotation()), self.cube_yaw)], np.float32
            ),
        }

    def place_objects(self, rng):
        self._set_free(
            "cube",
            [rng.uniform(*TABLE_X), rng.uniform(*TABLE_Y), CUBE_HALF],
            rng.uniform(-np.pi / 4, np.pi / 4),
        )


class CubeLiftTask(CubeTask):
    text = "pick up the red cube and lift it"

    def __init__(self, arm: MujocoArm, max_steps: int = 100):
        super().__init__(arm, max_steps)

    def succeeded(self) -> bool:
        return self.cube_pos[2] > CUBE_HALF + self.LIFT_M


class CubePlaceTask(CubeTask):
    text = "put the red cube into the green bin"

    def __init__(self, arm: MujocoArm, max_steps: int = 160):
        super().__init__(arm, max_steps)
        self._bin = self.world.model.body("bin").mocapid[0]

    @property
    def bin_pos(self) -> np.ndarray:
        return self.world.data.mocap_pos[self._bin].copy()

    def observation_spec(self):
        return {**super().observation_spec(), "bin_pos": ArraySpec((3,))}

    def observe(self):
        return {**super().observe(), "bin_pos": self.bin_pos.astype(np.float32)}

    def place_objects(self, rng):
        # Cube and bin on opposite sides of the table's centre line, sides chosen at random.
        side = rng.choice([-1.0, 1.0])
        self._set_free(
            "cube",
            [rng.uniform(*TABLE_X), side * rng.uniform(0.05, 0.18), CUBE_HALF],
            rng.uniform(-np.pi / 4, np.pi / 4),
        )
        self._set_mocap("bin", [rng.uniform(*TABLE_X), -side * rng.uniform(0.1, 0.18), 0.0], 0.0)

    def succeeded(self) -> bool:
        offset = np.abs(self.cube_pos[:2] - self.bin_pos[:2])
        inside = bool(
            np.all(offset < BIN_HALF - CUBE_HALF * 0.5) and self.cube_pos[2] < BIN_HEIGHT + CUBE_HALF
        )
        released = self.arm.gripper_width() > 2 * CUBE_HALF + 0.01
        return inside and released


# --- scripted experts ---------------------------------------------------------------------------
class ArmExpert:
    """A waypoint-following scripted expert: each call returns the normalized action that moves the
    gripper toward the current phase's goal; phases advance on reaching their goal.

    `noise` adds Gaussian noise (std, normalized action units) for demonstrations of lower quality.
    """

    def __init__(self, task: ArmTask, noise: float = 0.0, seed: int | None = None):
        self.task, self.arm, self.noise = task, task.arm, noise
        self.rng = np.random.default_rng(seed)
        self.phase, self._wait = 0, 0

    def reset(self) -> None:
        self.phase, self._wait = 0, 0

    def plan(self) -> tuple[np.ndarray, float, float, float, float, int]:
        """For the current phase: (goal position, goal yaw, gripper command, tolerance in metres,
        speed limit in normalized action units, steps to wait at the goal before moving on)."""
        raise NotImplementedError

    def __call__(self, obs=None) -> np.ndarray:
        goal, yaw, grip, speed = self._plan_with_advance()
        error = goal - self.arm.ee_pos()
        # A gain below 1: the servos lag a little behind each step, and a full (deadbeat) correction
        # would overshoot into a limit cycle of about a millimetre, wider than the peg's clearance.
        move = np.clip(POSITION_GAIN * error / MAX_STEP_M, -speed, speed)
        turn = np.clip(_square_yaw_error(self.arm.target_yaw, yaw) / MAX_YAW_STEP, -1.0, 1.0)
        return self._noisy(np.concatenate([move, [turn, grip]]))

    def _noisy(self, action: np.ndarray) -> np.ndarray:
        if self.noise:
            action = action + self.noise * self.rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _plan_with_advance(self):
        while True:
            goal, yaw, grip, tolerance, speed, wait = self.plan()
            reached = np.linalg.norm(goal - self.arm.ee_pos()) < tolerance
            if reached and self._wait >= wait:
                if not self.advance():
                    return goal, yaw, grip, speed
                self._wait = 0
                continue
            self._wait = self._wait + 1 if reached else 0
            return goal, yaw, grip, speed

    def advance(self) -> bool:
        """Go to the next phase; False when the last phase is holding."""
        if self.phase + 1 < self.n_phases:
            self.phase += 1
            return True
        return False

    def distance(self) -> float:
        goal = self.plan()[0]
        return float(np.linalg.norm(goal - self.arm.ee_pos()))


class PegInsertExpert(ArmExpert):
    """Memoryless: the action is a function of the current state (the tip relative to the hole's
    mouth and the yaw error, both observed; the yaw is taken from the arm's yaw target, which the
    measured yaw tracks) with no phases, so a policy that sees one observation can clone
    it. The peg moves over the hole at a hover height that shrinks with the misalignment and goes
    below the mouth only once aligned within about a millimetre: a funnel in state space."""

    HOVER_M = 0.03  # height above the mouth while far off
    DEEP_M = INSERTED_DEPTH + 0.01  # how far below the mouth the tip is driven
    ALIGNED_M = 0.0005  # misalignment up to which the target is the full depth
    FUNNEL_M = 0.001  # misalignment over which the target rises from full depth to the hover
    NEAR_M = 0.005  # within this, descend slowly: faster drags the tip sideways
    DESCENT = 0.125  # the slow descent's speed limit (2.5 mm a step)

    def __call__(self, obs=None) -> np.ndarray:
        t: PegInsertTask = self.task
        to_mouth = t.tip_to_hole()
        yaw_error = _square_yaw_error(self.arm.target_yaw, t.hole_yaw)
        # A yaw error moves the peg's corners sideways by half a diagonal times the angle.
        misalign = float(np.linalg.norm(to_mouth[:2])) + np.sqrt(2) * PEG_HALF * abs(yaw_error)
        if to_mouth[2] > 0.001:  # the tip is already inside the hole: keep going down
            height = -self.DEEP_M
        else:
            rise = np.clip((misalign - self.ALIGNED_M) / self.FUNNEL_M, 0.0, 1.0)
            height = -self.DEEP_M + (self.HOVER_M + self.DEEP_M) * rise
        # Target minus tip: the mouth's axis sideways, the chosen height above the mouth vertically.
        error = np.array([to_mouth[0], to_mouth[1], to_mouth[2] + height])
        speed = np.array([1.0, 1.0, self.DESCENT if misalign < self.NEAR_M or to_mouth[2] > 0 else 1.0])
        move = np.clip(POSITION_GAIN * error / MAX_STEP_M, -speed, speed)
        turn = np.clip(yaw_error / MAX_YAW_STEP, -1.0, 1.0)
        return self._noisy(np.concatenate([move, [turn, 1.0]]))

    def distance(self) -> float:
        return float(np.linalg.norm(self.task.tip_to_hole()))


class CubeExpert(ArmExpert):
    """Grasp phases shared by lift and place: above, down, close, up."""

    def grasp_plan(self):
        t: CubeTask = self.task
        cube, yaw = t.cube_pos, t.cube_yaw
        if self.phase == 0:
            return cube + [0, 0, 0.1], yaw, -1.0, 0.01, 1.0, 0
        if self.phase == 1:
            return cube + [0, 0, 0.005], yaw, -1.0, 0.006, 1.0, 1
        if self.phase == 2:  # close and wait for the fingers to squeeze
            return self._hold, yaw, 1.0, 0.02, 1.0, 4
        return None

    def advance(self) -> bool:
        if self.phase == 1:
            self._hold = self.arm.ee_pos()
        return super().advance()


class CubeLiftExpert(CubeExpert):
    n_phases = 4

    def plan(self):
        return self.grasp_plan() or (self._lifted(), self.task.cube_yaw, 1.0, 0.01, 1.0, 100)

    def _lifted(self):
        return self._hold + [0, 0, 0.15]


class CubePlaceExpert(CubeExpert):
    n_phases = 7

    def plan(self):
        grasp = self.grasp_plan()
        if grasp is not None:
            return grasp
        t: CubePlaceTask = self.task
        yaw = self.arm.target_yaw
        if self.phase == 3:
            return self._hold + [0, 0, 0.12], yaw, 1.0, 0.02, 1.0, 0
        above_bin = t.bin_pos + [0, 0, 0.14]
        if self.phase == 4:
            return above_bin, yaw, 1.0, 0.012, 1.0, 0
        if self.phase == 5:
            return t.bin_pos + [0, 0, 0.08], yaw, 1.0, 0.015, 1.0, 0
        return t.bin_pos + [0, 0, 0.14], yaw, -1.0, 0.02, 0.5, 100  # let go and back off


# --- construction ---------------------------------------------------------------------------
TASKS = {
    "peg_insert": (PegInsertTask, PegInsertExpert),
    "cube_lift": (CubeLiftTask, CubeLiftExpert),
    "cube_place": (CubePlaceTask, CubePlaceExpert),
}


def make_arm_env(
    task: str,
    cameras=("front",),
    image_size: int = 84,
    max_steps: int | None = None,
    clearance: float = 0.002,
    randomization: dict | None = None,
    end_on_success: bool = True,
    task_state: bool = True,
) -> RobotEnv:
    if task not in TASKS:
        raise ConfigError(f"unknown arm task {task!r}; known: {', '.join(TASKS)}")
    if task == "peg_insert":
        xml = peg_scene(clearance)
    elif task == "cube_lift":
        xml = scene_xml(CUBE_XML)
    else:
        xml = scene_xml(CUBE_XML + BIN_XML)
    world = MujocoWorld(xml=xml)
    arm = MujocoArm(world)
    task_cls, _ = TASKS[task]
    kwargs = {"max_steps": max_steps} if max_steps else {}
    if task == "peg_insert":
        kwargs["clearance"] = clearance
    env_task = task_cls(arm, **kwargs)
    env_task.end_on_success = end_on_success
    cams = [MujocoCamera(world, name, image_size, image_size) for name in cameras]
    hooks = randomization_hooks(world.model, randomization)
    return RobotEnv(arm, env_task, cams, hooks=hooks, task_state=task_state)


def make_expert(env: RobotEnv, noise: float = 0.0, seed: int | None = None) -> ArmExpert:
    for _name, (task_cls, expert_cls) in TASKS.items():
        if type(env.task) is task_cls:
            return expert_cls(env.task, noise=noise, seed=seed)
    raise ConfigError(f"no scripted expert for {type(env.task).__name__}")


def from_config(cfg, expert_noise: float = 0.0, seed: int | None = None):
    env = make_arm_env(
        cfg.task,
        cameras=tuple(cfg.cameras),
        image_size=int(cfg.image_size),
        max_steps=int(cfg.max_steps),
        clearance=float(cfg.get("clearance_mm", 2.0)) / 1000,
        randomization=cfg.get("randomization"),
        end_on_success=bool(cfg.get("end_on_success", True)),
        task_state=bool(cfg.get("task_state", True)),
    )
    return env, make_expert(env, noise=expert_noise, seed=seed)
