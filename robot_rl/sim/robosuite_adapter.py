"""robosuite environments (Lift, NutAssemblySquare, PickPlaceCan, ...) behind robot_rl's interfaces.

One `robosuite.make(...)` env is wrapped as a Robot (proprioception, OSC commands), one Camera per
requested camera and a Task (robosuite's own success check, sparse reward, privileged object state).

- Control: the robot's default composite controller (for the Panda an OSC_POSE arm in delta mode
  plus a gripper). The action is robosuite's own: 6 pose deltas and one gripper value, all in
  [-1, 1] (`env.action_spec`); the Panda's controller scales them to at most 5 cm and 0.5 rad
  per step, relative to the pose reached (robosuite's default "achieved" goal update).
  These "robot units" are normalized already, so the safety layer's workspace box (metres, per
  step) does not apply to them: the env configs leave it off.
- Physics advances only in `RobosuiteRobot.command` (one `env.step`: control_timestep / 2 ms
  substeps). `stop()` sends nothing and steps nothing: the sim is frozen until the next command,
  and for delta OSC a zero command would mean "hold the current pose" anyway.
- Observations are recomputed from the current sim state (`env.step` returns observables sampled
  on their own clocks, which can lag the sim by a substep or more), so state, images and the
  success check all describe the same instant.
- The env is made with `use_camera_obs=False`, so `env.step` renders nothing; each Camera renders
  its view on `read()` with robosuite's offscreen context, only for the cameras asked for.
- `hard_reset=False`: a reset reuses the compiled model (fast), so what robosuite randomizes only
  when it builds the model (the Lift cube's size) is fixed per env, by the `seed` it is made with.

State layout (Panda, single arm; other robots get the same entries per arm / robot):
    ee_pos (3), ee_quat (4, xyzw), gripper_qpos (2), joint_pos_cos (7), joint_pos_sin (7),
    joint_vel (7), then the task's object_state (robosuite's "object-state": Lift 10, Square 14,
    Can 14).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import mujoco
import numpy as np

from robot_rl.core.env import RobotEnv
from robot_rl.core.protocols import Camera, Robot, Task
from robot_rl.core.specs import ArraySpec, Frame
from robot_rl.errors import ConfigError, require

CONTROL_HZ = 20
HORIZON = 2**31 - 1  # robosuite's own episode limit, unused: the Task truncates (ignore_done=True)
ARM_KEYS = ("eef_pos", "eef_quat", "gripper_qpos")  # per arm
ROBOT_KEYS = ("joint_pos_cos", "joint_pos_sin", "joint_vel")  # per robot


def import_robosuite():
    """Import robosuite lazily (the `sim` extra), without its import-time chatter on stderr."""
    # robosuite logs warnings while importing (no private macro file, optional packages missing)
    # and an INFO line per controller config: noise on the CLI's stderr. Hide them; keep real
    # warnings that come later.
    log = logging.getLogger("robosuite_logs")

    def quiet(record: logging.LogRecord) -> bool:
        return False  # drop every record while robosuite imports

    log.addFilter(quiet)
    try:
        suite = require("robosuite", "sim", "the robosuite environments")
    finally:
        log.removeFilter(quiet)
    log.setLevel(logging.WARNING)
    return suite


def make_suite_env(
    env_name: str,
    robot: str = "Panda",
    control_hz: float = CONTROL_HZ,
    offscreen: bool = False,
    seed: int | None = 0,
):
    """`robosuite.make` with the settings this adapter relies on (see the module docstring)."""
    suite = import_robosuite()
    if env_name not in suite.ALL_ENVIRONMENTS:
        raise ConfigError(
            f"unknown robosuite env {env_name!r}; known: {', '.join(sorted(suite.ALL_ENVIRONMENTS))}"
        )
    if robot not in suite.ALL_ROBOTS:
        raise ConfigError(f"unknown robosuite robot {robot!r}; known: {', '.join(sorted(suite.ALL_ROBOTS))}")
    return suite.make(
        env_name,
        robots=robot,
        controller_configs=suite.load_composite_controller_config(controller=None, robot=robot),
        use_camera_obs=False,
        use_object_obs=True,
        reward_shaping=False,
        has_renderer=False,
        has_offscreen_renderer=offscreen,  # the GL context costs time and memory: only for cameras
        renderer="mujoco",  # no viewer object at all (the default "mjviewer" is torn down on reset)
        control_freq=control_hz,
        horizon=HORIZON,
        ignore_done=True,
        hard_reset=False,
        seed=seed,
    )


def fast_rendering(env) -> None:
    """Trade robosuite's render quality for speed, as robot_rl's MujocoCamera does.

    No multisampling, shadows or reflections: about 3x faster with software (llvmpipe) EGL, and
    at policy resolutions (84 px) the images look the same. Call once, before reading cameras.
    """
    import mujoco

    ctx = env.sim._render_context_offscreen
    ctx.gl_ctx.make_current()
    flags = ctx.scn.flags
    flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    # MSAA is fixed when the MuJoCo render context is created: recreate it without.
    env.sim.model.vis.quality.offsamples = 0
    ctx.con.free()
    ctx._set_mujoco_context_and_buffers()


def _proprio_keys(env) -> dict[str, str]:
    """Our state entry name -> robosuite observation key, for every robot and arm of `env`."""
    keys = {}
    for i, robot in enumerate(env.robots):
        prefix = robot.robot_model.naming_prefix  # "robot0_"
        ours = "" if i == 0 else prefix  # robot 0 is "the" robot: ee_pos, as the safety layer expects
        arms = [""] if len(robot.arms) == 1 else [f"{arm}_" for arm in robot.arms]
        for arm in arms:
            for key in ARM_KEYS:
                keys[ours + arm + key.replace("eef_", "ee_")] = prefix + arm + key
        for key in ROBOT_KEYS:
            keys[ours + key] = prefix + key
    return keys


class RobosuiteRobot(Robot):
    """The robot(s) of one robosuite env: proprioception in, robosuite actions out."""

    def __init__(self, env):
        self.env = env
        obs = self.sim_observations()
        self._keys = {ours: theirs for ours, theirs in _proprio_keys(env).items() if theirs in obs}
        self.observation_spec = {
            ours: ArraySpec(np.shape(obs[theirs])) for ours, theirs in self._keys.items()
        }
        self.observation_spec["timestamp"] = ArraySpec((), "float64")
        low, high = (np.asarray(b, np.float64) for b in env.action_spec)
        self.action_spec = ArraySpec(low.shape, low=low, high=high)
        self.commands = 0
        self.stops = 0

    def sim_observations(self) -> dict[str, np.ndarray]:
        """All of robosuite's (non-image) observations, computed from the current sim state."""
        return self.env._get_observations(force_update=True)

    @property
    def time(self) -> float:
        return float(self.env.sim.data.time)

    def connect(self) -> None:
        pass  # the sim exists from construction on and lives as long as this object

    def disconnect(self) -> None:
        pass  # nothing to release per session; RobotEnv may reconnect and reset again

    def observe(self) -> dict[str, np.ndarray]:
        obs = self.sim_observations()
        out = {ours: np.asarray(obs[theirs], np.float32) for ours, theirs in self._keys.items()}
        out["timestamp"] = np.float64(self.time)
        return out

    def command(self, action: np.ndarray) -> None:
        low, high = self.action_spec.bounds()
        self.env.step(np.clip(np.asarray(action, np.float64), low, high))
        self.commands += 1

    def stop(self) -> None:
        # Nothing to send: physics advances only in command(), so the robot is frozen until the
        # next one. Touches no sim state, so it is safe from the watchdog thread at any time.
        self.stops += 1


class RobosuiteCamera(Camera):
    """One named camera of a robosuite env, rendered on `read()` at the current sim state.

    MuJoCo's offscreen buffer is read bottom row first: frames are flipped to upright here.
    Timestamps are sim time, as for the robot's observations.
    """

    def __init__(self, robot: RobosuiteRobot, name: str, height: int = 84, width: int = 84):
        sim = robot.env.sim
        if name not in sim.model.camera_names:
            known = ", ".join(sim.model.camera_names)
            raise ConfigError(f"{type(robot.env).__name__} has no camera {name!r}; it has {known}")
        if sim._render_context_offscreen is None:
            raise ValueError("the robosuite env was made without an offscreen renderer (offscreen=True)")
        self.robot, self.name, self.shape = robot, name, (height, width, 3)

    def connect(self) -> None:
        # robosuite made the render context together with the env; rebuild its GL objects if a
        # disconnect released them (the cameras of one env share one context).
        context = self.robot.env.sim._render_context_offscreen
        if getattr(context, "_robot_rl_released", False):
            context.gl_ctx.make_current()
            context._set_mujoco_context_and_buffers()
            context._robot_rl_released = False

    def disconnect(self) -> None:
        # Free the render context's GL objects now, with its own GL context current. robosuite
        # frees them in MjRenderContext.__del__, under whatever context happens to be current
        # when the garbage collector gets to it: that deletes the framebuffer of another env's
        # camera (seen as garbage frames in a second env). Freed here, __del__ has nothing left.
        context = self.robot.env.sim._render_context_offscreen
        if context is not None and not getattr(context, "_robot_rl_released", False):
            context.gl_ctx.make_current()
            context.con.free()
            context._robot_rl_released = True

    def render_raw(self) -> np.ndarray:
        """The image as MuJoCo returns it: upside down."""
        sim = self.robot.env.sim
        # Another GL context (a second env, a mujoco.Renderer) may have been made current since
        # this one was created; robosuite's render() does not switch back by itself.
        context = sim._render_context_offscreen
        context.gl_ctx.make_current()
        # Rebind this context's offscreen buffer too, as mujoco.Renderer does before every render.
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, context.con)
        h, w, _ = self.shape
        return sim.render(width=w, height=h, camera_name=self.name)

    def read(self) -> Frame:
        return Frame(image=np.ascontiguousarray(self.render_raw()[::-1]), timestamp=self.robot.time)


class RobosuiteTask(Task):
    """robosuite's own success check; sparse reward 1 on success, which ends the episode.

    The task observation is robosuite's "object-state" (privileged sim state: object poses and
    their offsets to the gripper). Reset is seeded from the rng it is given.
    """

    def __init__(self, robot: RobosuiteRobot, max_steps: int = 200, text: str = ""):
        self.robot, self.env, self.max_steps, self.text = robot, robot.env, max_steps, text
        obs = robot.sim_observations()
        self._has_objects = "object-state" in obs
        self._object_dim = int(np.size(obs["object-state"])) if self._has_objects else 0
        self.episode = 0  # counts resets, so experts can tell a new episode began

    def observation_spec(self) -> dict[str, ArraySpec]:
        return {"object_state": ArraySpec((self._object_dim,))} if self._has_objects else {}

    def observe(self) -> dict[str, np.ndarray]:
        if not self._has_objects:
            return {}
        return {"object_state": np.asarray(self.robot.sim_observations()["object-state"], np.float32)}

    def reset(self, rng: np.random.Generator) -> None:
        # Everything robosuite randomizes on reset (object placement samplers, the robot's initial
        # joint noise, which nut or object to use) draws from `env.rng`, and the samplers hold
        # references to that very Generator: reseed it in place rather than replacing it.
        seed = int(rng.integers(2**63))
        self.env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self.env.reset()
        self.episode += 1

    def success(self) -> bool:
        return bool(self.env._check_success())

    def evaluate(self, obs) -> tuple[float, bool, bool]:
        success = self.success()
        return float(success), success, success


class _ArmExpert:
    """What the scripted robosuite experts share: privileged state of the (first) arm, and turning
    a world-frame position target and rotation error into a normalized OSC delta action.

    `noise` adds Gaussian noise to the normalized action; `seed` seeds that noise.
    """

    ENV = ""  # the robosuite env class this expert drives
    GAIN = 1.5  # a position error of 5 cm / GAIN asks for the controller's full 5 cm step

    def __init__(
        self, robot: RobosuiteRobot, task: RobosuiteTask, noise: float = 0.0, seed: int | None = None
    ):
        env = robot.env
        if type(env).__name__ != self.ENV:
            raise ValueError(f"{type(self).__name__} drives {self.ENV}, not {type(env).__name__}")
        self.robot, self.task, self.env, self.noise = robot, task, env, noise
        self.rng = np.random.default_rng(seed)
        self._arm = env.robots[0].arms[0]
        # The controller's largest step per action unit: metres for dims 0-2, radians for 3-5.
        output_max = np.asarray(env.robots[0].part_controllers[self._arm].output_max, np.float64)
        self._max_step, self._max_turn = output_max[:3], output_max[3:6]
        self._base_body = env.sim.model.body_name2id(env.robots[0].robot_model.root_body)
        self._episode = -1
        self._closing = 0
        self._home_rot = np.eye(3)

    def reset(self) -> None:
        self._episode = self.task.episode
        self._closing = 0
        self._home_rot = self._ee_rot()

    # --- privileged state ----------------------------------------------------------------------
    def _ee_pos(self) -> np.ndarray:
        return self.env.sim.data.site_xpos[self.env.robots[0].eef_site_id[self._arm]].copy()

    def _ee_rot(self) -> np.ndarray:
        return self.env.sim.data.site_xmat[self.env.robots[0].eef_site_id[self._arm]].reshape(3, 3).copy()

    def _base_rot(self) -> np.ndarray:
        return self.env.sim.data.body_xmat[self._base_body].reshape(3, 3)

    def _table_z(self) -> float:
        return float(self.env.model.mujoco_arena.table_offset[2])

    # --- action --------------------------------------------------------------------------------
    def _action(self, target: np.ndarray, rotation: np.ndarray, gripper: float) -> np.ndarray:
        """The normalized action toward `target` (world, m), turning by `rotation` (world axis-angle)."""
        # OSC takes its deltas in the robot base frame: rotate the world-frame errors into it.
        to_base = self._base_rot().T
        move = np.clip(self.GAIN * (to_base @ (target - self._ee_pos())) / self._max_step, -1.0, 1.0)
        action = np.concatenate([move, to_base @ rotation / self._max_turn, [gripper]])
        if self.noise:
            action = action + self.noise * self.rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _rotation_error(self, target: np.ndarray | None = None) -> np.ndarray:
        """Axis-angle rotation (world frame) from the current orientation to `target` (default: the
        episode's starting orientation)."""
        error = (self._home_rot if target is None else target) @ self._ee_rot().T
        angle = np.arccos(np.clip((np.trace(error) - 1.0) / 2.0, -1.0, 1.0))
        if angle < 1e-6:
            return np.zeros(3)
        axis = np.array([error[2, 1] - error[1, 2], error[0, 2] - error[2, 0], error[1, 0] - error[0, 1]])
        return axis / (2.0 * np.sin(angle)) * angle


class LiftExpert(_ArmExpert):
    """Scripted Lift demonstrator with privileged state: above the cube, down, grasp, lift.

    The phase follows from the state (so it recovers when noise or an operator pushes it off),
    plus one counter: how long the gripper has been closing around the cube. Rotation is held at
    the orientation the episode started with. `noise` adds Gaussian noise to the normalized action.
    """

    ENV = "Lift"
    APPROACH_HEIGHT = 0.08  # m above the cube centre before descending
    XY_TOLERANCE = 0.01  # m: close enough above the cube to descend all the way
    CLEAR_XY = 0.03  # m: this far off, stay at approach height
    GRASP_TOLERANCE = 0.012  # m: close enough to the cube centre to close the fingers
    HOLD_RADIUS = 0.03  # m: the cube is still between the fingers
    CLOSE_STEPS = 6  # steps the fingers get to close before lifting
    LIFT_HEIGHT = 0.15  # m above the table; success needs 0.04

    def cube_pos(self) -> np.ndarray:
        return self.env.sim.data.body_xpos[self.env.cube_body_id].copy()

    def distance(self) -> float:
        """How far from done: gripper-to-cube distance plus the height still to lift (metres)."""
        cube = self.cube_pos()
        to_lift = max(0.0, self._table_z() + self.LIFT_HEIGHT - cube[2])
        return float(np.linalg.norm(cube - self._ee_pos()) + to_lift)

    def __call__(self, obs=None) -> np.ndarray:
        if self._episode != self.task.episode:
            self.reset()
        ee, cube = self._ee_pos(), self.cube_pos()
        offset = cube - ee
        xy_error = np.linalg.norm(offset[:2])
        at_cube = xy_error < self.GRASP_TOLERANCE and abs(offset[2]) < self.GRASP_TOLERANCE
        # Once the fingers start closing, keep going while the cube stays between them (noise and
        # the closing fingers themselves nudge it) rather than re-opening at every wobble.
        holding = self._closing > 0 and np.linalg.norm(offset) < self.HOLD_RADIUS
        if at_cube or holding:
            # Close the fingers in place, then lift straight up with the cube between them.
            self._closing += 1
            gripper = 1.0
            target = cube.copy()
            if self._closing >= self.CLOSE_STEPS:
                target[2] = self._table_z() + self.LIFT_HEIGHT
        else:
            # Open. Descend only as far as the xy alignment allows: fully within XY_TOLERANCE, not
            # at all beyond CLEAR_XY (where a finger would land on the cube), linearly between.
            # Smooth, so noise makes it hover rather than bounce between approach and descent.
            self._closing = 0
            gripper = -1.0
            height = np.clip((xy_error - self.XY_TOLERANCE) / (self.CLEAR_XY - self.XY_TOLERANCE), 0.0, 1.0)
            target = cube + [0.0, 0.0, height * self.APPROACH_HEIGHT]
        return self._action(target, self._rotation_error(), gripper)


def _yaw(rot: np.ndarray) -> float:
    """Heading (rad, about world z) of a frame's x axis."""
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def _wrap(angle: float, period: float) -> float:
    """`angle` wrapped into [-period / 2, period / 2)."""
    return float((angle + period / 2) % period - period / 2)


def _ramp(error: float, low: float, high: float) -> float:
    """0 below `low`, 1 above `high`, linear between."""
    return float(np.clip((error - low) / (high - low), 0.0, 1.0))


class SquareExpert(_ArmExpert):
    """Scripted NutAssemblySquare demonstrator with privileged state: grasp the square nut by its
    handle, lift it above the square peg, turn it square to the peg, lower it on, let go.

    As for LiftExpert, the phase follows from the state plus a counter of how long the fingers have
    been closing on the handle, so noise or an operator can push it off and it carries on from
    there (a dropped nut is grasped again). The gripper points straight down and turns only about
    the vertical: fingers across the handle to grasp, then the nut square to the peg.
    The peg is near the edge of the Panda's reach, so the nut goes on with its handle toward the
    robot or to the side, never away (the gripper would have to reach 5.4 cm further); of those
    headings and the two ways to grasp the handle, it takes the one that turns the wrist least
    (robosuite's OSC drifts into joint limits on large turns). It lets go as soon as the nut is
    threaded on the peg: the nut drops the rest of the way, where the arm could hardly reach.
    robosuite counts the nut as on the peg once its centre is within 3 cm (x and y) of the peg's
    and less than 5 cm above the table, with the gripper over ~4 cm from the nut centre.
    """

    ENV = "NutAssemblySquare"
    APPROACH_HEIGHT = 0.08  # m above the handle before descending
    XY_TOLERANCE = 0.006  # m: close enough above the handle to descend all the way
    CLEAR_XY = 0.03  # m: this far off, stay at approach height
    YAW_TOLERANCE = np.radians(5)  # fingers this close to across the handle: descend all the way
    CLEAR_YAW = np.radians(20)  # this far off, stay at approach height
    GRASP_HEIGHT = 0.01  # m: the gripper site this far above the handle centre (the fingertips
    # reach below the site: any lower and they press on the table)
    GRASP_OUT = 0.006  # m: and this far out along the handle, so the fingers keep clear of the
    # nut's wall (the handle site is 1 cm from it, the finger pads about as wide)
    GRASP_TOLERANCE = 0.006  # m: close enough to the grasp point to close the fingers
    HOLD_RADIUS = 0.03  # m: the handle is still between the fingers
    CLOSE_STEPS = 10  # steps the fingers get to close on the handle before lifting
    CARRY_CLEARANCE = 0.03  # m between the nut's underside and the peg top while carrying
    # The hole is 4.55 cm square, the peg 3.2 cm: 6.75 mm play each side when square to it.
    PEG_XY_TOLERANCE = 0.003  # m: nut centre this close above the peg: lower it all the way
    PEG_CLEAR_XY = 0.015  # m: this far off, stay at carry height
    PEG_YAW_TOLERANCE = np.radians(3)  # nut this close to square with the peg: lower all the way
    PEG_CLEAR_YAW = np.radians(15)
    NUT_HALF_HEIGHT = 0.01  # m (square-nut.xml)
    THREADED_DEPTH = 0.02  # m: nut centre this far below the peg top (and within PEG_CLEAR_XY of
    # its axis, which the nut's walls allow only around the peg): it is on, open the fingers
    SIDEWAYS_COST = np.radians(30)  # handle to the side: worth this much wrist turn saved
    FINGERS_OPEN = 0.038  # m of finger joint travel (0.042 fully open): clear of the handle
    # The Panda's last joint turns the gripper from about 125 degrees clockwise to 230 degrees
    # anticlockwise (seen from above) of its starting heading: wrist headings are measured from
    # the starting one, in the full turn centred on this.
    WRIST_CENTRE = np.radians(45)
    MAX_TURN = np.pi / 2  # rad: aim at most this far round per step, so the way round is ours

    def __init__(
        self, robot: RobosuiteRobot, task: RobosuiteTask, noise: float = 0.0, seed: int | None = None
    ):
        super().__init__(robot, task, noise, seed)
        env, model = self.env, self.env.sim.model
        # robosuite's square nut is nuts[0] and its peg is peg1 (nut_to_id["square"] == 0, and
        # on_peg(..., 0) checks peg1).
        nut = env.nuts[env.nut_to_id["square"]]
        self._nut_body = env.obj_body_id[nut.name]
        self._handle_site = model.site_name2id(nut.important_sites["handle"])
        self._peg_body = env.peg1_body_id
        peg_geom = next(g for g in range(model.ngeom) if model.geom_bodyid[g] == self._peg_body)
        self._peg_top = float(env.sim.data.body_xpos[self._peg_body][2] + model.geom_size[peg_geom][2])
        self._gripper_joints = [model.get_joint_qpos_addr(j) for j in env.robots[0].gripper[self._arm].joints]
        # The nut's headings on the peg, with their costs: its handle (the nut's x axis) toward the
        # robot base (to the nearest quarter turn of the peg), or a quarter turn either side.
        to_base = env.sim.data.body_xpos[self._base_body][:2] - env.sim.data.body_xpos[self._peg_body][:2]
        peg_yaw = _yaw(env.sim.data.body_xmat[self._peg_body].reshape(3, 3))
        quarter = np.pi / 2
        toward = peg_yaw + quarter * np.round((np.arctan2(to_base[1], to_base[0]) - peg_yaw) / quarter)
        self._places = [
            (toward, 0.0),
            (toward + quarter, self.SIDEWAYS_COST),
            (toward - quarter, self.SIDEWAYS_COST),
        ]
        self._home_yaw = 0.0

    def reset(self) -> None:
        super().reset()
        self._home_yaw = _yaw(self._home_rot)  # the finger axis is the gripper frame's x axis

    # --- privileged state ----------------------------------------------------------------------
    def nut_pos(self) -> np.ndarray:
        return self.env.sim.data.body_xpos[self._nut_body].copy()

    def handle_pos(self) -> np.ndarray:
        return self.env.sim.data.site_xpos[self._handle_site].copy()

    def _grip_pos(self) -> np.ndarray:
        """Where the gripper site goes to hold the handle."""
        out = self.env.sim.data.body_xmat[self._nut_body].reshape(3, 3)[:, 0]  # the handle's direction
        return self.handle_pos() + self.GRASP_OUT * out + [0.0, 0.0, self.GRASP_HEIGHT]

    def peg_pos(self) -> np.ndarray:
        return self.env.sim.data.body_xpos[self._peg_body].copy()

    def _nut_yaw(self) -> float:
        return _yaw(self.env.sim.data.body_xmat[self._nut_body].reshape(3, 3))

    def _wrist(self, heading: float) -> float:
        """A finger-axis heading (world) as a wrist turn from the starting heading."""
        return _wrap(heading - self._home_yaw - self.WRIST_CENTRE, 2 * np.pi) + self.WRIST_CENTRE

    def _carry_z(self) -> float:
        """Nut centre height that clears the peg top."""
        return self._peg_top + self.NUT_HALF_HEIGHT + self.CARRY_CLEARANCE

    def _goal_z(self) -> float:
        """Nut centre height resting on the table around the peg."""
        return self._table_z() + self.NUT_HALF_HEIGHT

    def _threaded(self, nut: np.ndarray) -> bool:
        """The nut is down around the peg (its walls allow it this low this near only there)."""
        return bool(
            np.linalg.norm(nut[:2] - self.peg_pos()[:2]) < self.PEG_CLEAR_XY
            and nut[2] < self._peg_top - self.THREADED_DEPTH
        )

    def distance(self) -> float:
        """How far from done (metres): the gripper to the grasp point (until the nut is threaded
        on the peg and let go), then the nut's way up to carry height, across and down the peg."""
        nut, peg = self.nut_pos(), self.peg_pos()
        xy = float(np.linalg.norm(nut[:2] - peg[:2]))
        if xy > self.PEG_CLEAR_XY:
            # Counted from the table until the nut is carried: robosuite drops it from 6 cm at reset.
            z = nut[2] if self._closing >= self.CLOSE_STEPS else self._goal_z()
            way = xy + abs(self._carry_z() - z) + self._carry_z() - self._goal_z()
        else:
            way = max(0.0, nut[2] - self._goal_z())
        if self._threaded(nut):
            return way
        return float(np.linalg.norm(self._grip_pos() - self._ee_pos()) + way)

    # --- policy --------------------------------------------------------------------------------
    def _plan(self, grip_yaw: float, start: float) -> tuple[float, float, float]:
        """(cost, wrist turn, nut heading) of placing the nut held with the finger axis `grip_yaw`
        off its own heading, from wrist turn `start`: the place heading that turns the wrist least
        (SIDEWAYS_COST added for the handle to the side)."""
        options = []
        for place, extra in self._places:
            placed = self._wrist(place + grip_yaw)
            options.append((abs(placed - start) + extra, placed, place))
        return min(options)

    def _grasp_wrist(self, nut_yaw: float) -> float:
        """Wrist turn to grasp at: fingers across the handle (along the nut's y axis), of the two
        ways round the one that turns the wrist least to grasp and then to place."""
        options = []
        for side in (np.pi / 2, -np.pi / 2):
            grasp = self._wrist(nut_yaw + side)
            options.append((abs(grasp) + self._plan(side, grasp)[0], grasp))
        return min(options)[1]

    def __call__(self, obs=None) -> np.ndarray:
        if self._episode != self.task.episode:
            self.reset()
        ee, grip, nut, peg = self._ee_pos(), self._grip_pos(), self.nut_pos(), self.peg_pos()
        heading, nut_yaw = _yaw(self._ee_rot()), self._nut_yaw()
        wrist = self._wrist(heading)
        to_peg = np.linalg.norm(nut[:2] - peg[:2])
        if self._threaded(nut):
            # The nut is threaded on the peg: let go, and rise once the fingers are open, centred
            # on the handle so that neither drags the nut up with it.
            self._closing = 0
            fingers = self.env.sim.data.qpos[self._gripper_joints]
            target = np.r_[grip[:2], ee[2]]
            if fingers[0] - fingers[1] > self.FINGERS_OPEN:
                target[2] = self._peg_top + self.APPROACH_HEIGHT
            return self._action(target, self._turn(wrist, wrist), -1.0)

        offset = grip - ee
        xy_error = np.linalg.norm(offset[:2])
        # Once the fingers start closing, keep going while the handle stays between them.
        holding = self._closing > 0 and np.linalg.norm(offset) < self.HOLD_RADIUS
        if not holding:
            grasp_wrist = self._grasp_wrist(nut_yaw)
            yaw_error = abs(grasp_wrist - wrist)
            if (
                xy_error < self.GRASP_TOLERANCE
                and abs(offset[2]) < self.GRASP_TOLERANCE
                and yaw_error < self.CLEAR_YAW / 2
            ):
                holding = True  # at the handle: start closing
            else:
                # Open; turn the fingers across the handle and descend onto it only as far as the
                # xy and heading alignment allow (smooth, as in LiftExpert).
                self._closing = 0
                height = max(
                    _ramp(xy_error, self.XY_TOLERANCE, self.CLEAR_XY),
                    _ramp(yaw_error, self.YAW_TOLERANCE, self.CLEAR_YAW),
                )
                target = grip + [0.0, 0.0, height * self.APPROACH_HEIGHT]
                return self._action(target, self._turn(wrist, grasp_wrist), -1.0)

        self._closing += 1
        if self._closing < self.CLOSE_STEPS:
            return self._action(grip, self._turn(wrist, wrist), 1.0)
        # Carry: turn the nut to its place heading (the gripper turns with it), move its centre
        # over the peg at carry height, and lower it as far as it is aligned.
        _, place_wrist, place = self._plan(heading - nut_yaw, wrist)
        yaw_error = abs(_wrap(place - nut_yaw, 2 * np.pi))
        height = max(
            _ramp(to_peg, self.PEG_XY_TOLERANCE, self.PEG_CLEAR_XY),
            _ramp(yaw_error, self.PEG_YAW_TOLERANCE, self.PEG_CLEAR_YAW),
        )
        goal = np.r_[peg[:2], self._goal_z() + height * (self._carry_z() - self._goal_z())]
        if to_peg > self.PEG_CLEAR_XY and nut[2] < self._carry_z() - 0.01:
            goal[:2] = nut[:2]  # lift first, so the nut neither drags across the table nor hits the peg
        # The gripper holds the nut by its handle: move the gripper by how far the nut is off.
        return self._action(ee + goal - nut, self._turn(wrist, place_wrist), 1.0)

    def _turn(self, wrist: float, target: float) -> np.ndarray:
        """Rotation (world axis-angle) toward pointing straight down at wrist turn `target`, the way
        round that stays inside the wrist's range (at most MAX_TURN of it per step)."""
        heading = self._home_yaw + wrist + np.clip(target - wrist, -self.MAX_TURN, self.MAX_TURN)
        c, s = np.cos(heading), np.sin(heading)
        # Finger axis (x) at `heading`, approach axis (z) straight down.
        return self._rotation_error(np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]]))


EXPERTS = {expert.ENV: expert for expert in (LiftExpert, SquareExpert)}  # robosuite env name -> expert


def make_robosuite_env(
    env_name: str,
    robot: str = "Panda",
    cameras: Sequence[str] = ("agentview",),
    image_size: int = 84,
    max_steps: int = 200,
    control_hz: float = CONTROL_HZ,
    task_text: str = "",
    seed: int | None = 0,
    fast_render: bool = True,
    offscreen: bool = False,
) -> RobotEnv:
    """A RobotEnv over `robosuite.make(env_name, robots=robot)`.

    `seed` fixes what robosuite randomizes when it builds the model (each episode's reset is
    seeded by `RobotEnv.reset`); `fast_render=False` keeps robosuite's own render quality;
    `offscreen` makes the GL context without cameras too (for a render camera).
    """
    cameras = tuple(cameras or ())
    offscreen = offscreen or bool(cameras)
    suite_env = make_suite_env(env_name, robot, control_hz, offscreen=offscreen, seed=seed)
    if offscreen and fast_render:
        fast_rendering(suite_env)
    body = RobosuiteRobot(suite_env)
    task = RobosuiteTask(body, max_steps=max_steps, text=task_text)
    cams = [RobosuiteCamera(body, name, image_size, image_size) for name in cameras]
    return RobotEnv(body, task, cams)


def from_config(cfg, expert_noise: float = 0.0, seed: int | None = None):
    """(RobotEnv, expert) for an env config of kind `robosuite`; the expert is None where this
    adapter has no scripted one (it has for Lift and NutAssemblySquare)."""
    if any(v for v in dict(cfg.get("randomization") or {}).values()):
        raise ConfigError("randomization hooks work on robot_rl's own MuJoCo scenes, not on robosuite envs")
    env = make_robosuite_env(
        str(cfg.robosuite_env),
        robot=str(cfg.get("robot", "Panda")),
        cameras=tuple(cfg.cameras or ()),
        image_size=int(cfg.image_size),
        max_steps=int(cfg.max_steps),
        control_hz=float(cfg.control_hz),
        task_text=str(cfg.get("task_text", "")),
        seed=0 if seed is None else seed,
        offscreen=bool(cfg.get("offscreen", False)),
    )
    expert = EXPERTS.get(str(cfg.robosuite_env))
    if expert is None:
        return env, None
    return env, expert(env.robot, env.task, noise=expert_noise, seed=seed)
