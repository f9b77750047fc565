"""`rc_car`: a 1/10-scale MuJoCo RC car driving laps of a procedurally generated walled course.

The car: 3 kg, wheelbase 0.33 m, track 0.25 m, wheel radius 5 cm. Ackermann steering (two front
knuckles on position servos), spring-damper suspension on each wheel, rear-wheel drive through an
open differential (one velocity servo on a tendon averaging the rear wheels, so both get equal
torque) that also brakes the rear wheels through the motor, as a hobby ESC does, plus brakes on the
front wheels.
Physics at 500 Hz, commanded at 20 Hz (25 substeps per command).

Action and robot observation: the car kind's spec (robot_rl/tasks/car.py), the same as the VESC
and ROS cars', so a state policy trained here runs on them.
Action (robot units): [steer, speed]
  steer  rad, in [-0.35, 0.35], positive turns left: the bicycle-model angle at the front axle,
         turned into inner/outer wheel angles with the Ackermann relation.
  speed  m/s, in [-3, 3]: the target speed of the electronic speed controller (ESC). When it
         opposes the current motion the ESC brakes first (like a hobby ESC) and only then reverses.
A normalized action of 0 means "straight, stand still".

Robot observation (odometry/IMU, from MuJoCo sensors):
  pose (3)         x, y [m], yaw [rad] in the course frame
  velocity (3)     body-frame linear velocity [m/s] (velocimeter; [0] is forward speed)
  gyro (3)         body-frame angular velocity [rad/s] ([2] is the yaw rate)
  accel (3)        body-frame specific force [m/s^2] (accelerometer: reads +9.81 on z at rest)
  wheel_speed (1)  the rear (driven) wheels' mean speed [rad/s]: what the motor turns at through the
                   differential, the one wheel speed a real car's motor controller measures
  steer (1)        measured steering angle [rad]: the mean of the two front wheel angles
  collision (1)    1.0 if the car touched a wall during the last command, else 0.0
Task observation: checkpoint_rel (2), the next checkpoint in the car frame [m] (privileged).
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from robot_rl.core.env import RobotEnv
from robot_rl.core.protocols import Robot, Task
from robot_rl.core.specs import ArraySpec
from robot_rl.errors import ConfigError
from robot_rl.sim.course import WALL_HALF_HEIGHT, WALL_HALF_THICKNESS, Course, generate_course
from robot_rl.sim.world import MujocoCamera, MujocoWorld
from robot_rl.tasks import car as car_spec
from robot_rl.tasks.car import MAX_SPEED, MAX_STEER
from robot_rl.tasks.course import CheckpointTracker

CONTROL_HZ = 20.0
TIMESTEP = 0.002
WHEELBASE = 0.33
TRACK = 0.25
WHEEL_RADIUS = 0.05
SPRUNG_MASS = 2.52  # kg: all but the wheels and steering knuckles, carried by the four springs
SPRING_K = 600.0  # N/m per corner
BRAKE_MIN_SPEED = 0.1  # m/s: below this an opposing command reverses instead of braking
BRAKE_FULL_AT = 1.0  # m/s of opposing speed command that means full brake


def ackermann(steer: float, wheelbase: float = WHEELBASE, track: float = TRACK) -> tuple[float, float]:
    """(left, right) front wheel angles for a bicycle steering angle `steer` (positive: left turn).

    tan(d_in/out) = L / (R -+ W/2) with R = L / tan(steer), rearranged so that steer = 0 (R = inf)
    needs no special case: tan(d_left) = t / (1 - k t), tan(d_right) = t / (1 + k t), k = W / 2L.
    """
    t = math.tan(steer)
    k = track / (2.0 * wheelbase)
    return math.atan(t / (1.0 - k * t)), math.atan(t / (1.0 + k * t))


# --- the scene ---------------------------------------------------------------------------------
_CAR = """
    <body name="car" pos="0 0 {r}">
      <freejoint name="car"/>
      <site name="imu" pos="0 0 0" size="0.01"/>
      <!-- Chassis plate with battery and electronics: most of the mass, low. Collides with walls. -->
      <geom name="chassis" class="car" type="box" size="0.22 0.09 0.03" pos="0 0 0.01" mass="2.5"
            rgba="0.1 0.35 0.9 1"/>
      <geom name="shell" class="car" type="box" size="0.14 0.08 0.03" pos="-0.03 0 0.07" mass="0.02"
            rgba="0.95 0.85 0.1 1"/>
      <!-- First-person camera on the roof front, pitched 0.2 rad down, wide like an action cam. -->
      <camera name="fpv" pos="0.21 0 0.1" xyaxes="0 -1 0 0.199 0 0.980" fovy="85"/>
{front}{rear}    </body>"""

_FRONT = """      <body name="knuckle_{s}" pos="{x} {y} 0">
        <joint name="susp_{s}" class="suspension"/>
        <joint name="steer_{s}" class="steer"/>
        <geom class="visual" type="sphere" size="0.012" mass="0.05"/>
        <body name="wheel_{s}">
          <joint name="wheel_{s}" class="front_wheel"/>
          <geom name="tyre_{s}" class="tyre" zaxis="0 1 0"/>
          <geom class="rim" zaxis="0 1 0"/>
        </body>
      </body>
"""

_REAR = """      <body name="wheel_{s}" pos="{x} {y} 0">
        <joint name="susp_{s}" class="suspension"/>
        <joint name="wheel_{s}" class="rear_wheel"/>
        <geom name="tyre_{s}" class="tyre" zaxis="0 1 0"/>
        <geom class="rim" zaxis="0 1 0"/>
      </body>
"""

_SCENE = """<mujoco model="rc_car_course_{seed}">
  <compiler angle="radian" autolimits="true"/>
  <!-- implicitfast integrates the servo and brake damping implicitly: stable at 2 ms.
       Elliptic friction cones: with the default pyramidal ones, the tyres' condim-6 friction
       (below) made wheels hop off the floor for single substeps under drive torque and in
       corners (seen as contact dropouts and accelerometer spikes). -->
  <option timestep="{dt}" integrator="implicitfast" cone="elliptic"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <global offwidth="84" offheight="84"/>
    <headlight ambient="0.5 0.5 0.5" diffuse="0.4 0.4 0.4" specular="0 0 0"/>
    <!-- znear is a fraction of the scene extent (~10 m); the fpv camera needs a near plane of cm. -->
    <map znear="0.002"/>
  </visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.55 0.52" rgb2="0.42 0.42 0.40"
             width="64" height="64"/>
    <material name="floor" texture="grid" texrepeat="4 4" texuniform="true"/>
  </asset>
  <default>
    <!-- Collision bits: the world (floor, walls) is contype 1; car geoms are contype 2 and
         conaffinity 1, so they hit the world but never each other. The plastic body slides along
         a wall (friction 0.3) rather than sticking to it. -->
    <default class="car">
      <geom contype="2" conaffinity="1" friction="0.3 0.005 0.0001"/>
    </default>
    <default class="visual">
      <geom contype="0" conaffinity="0"/>
    </default>
    <!-- Tyres. condim 6 = sliding + torsional + rolling friction: torsional friction resists
         pivoting a steered wheel on the spot (steering scrub) and rolling friction gives the
         coast-down drag of rubber tyres; condim 3 would let the car roll forever and steer freely
         at standstill. Friction: sliding 1.0 (rubber on an indoor floor), torsional 5 mm (about
         the contact patch radius), rolling 0.5 mm (rolling resistance coefficient 0.01 x 5 cm
         radius). priority 1 makes these values win over the floor's when the two are combined.
         The collision shape is an ellipsoid: one contact point on the floor (a cylinder makes two
         on its rims, twice the constraint rows, and torsional/rolling friction are meant for a
         point contact). A cylinder of the same size is drawn over it. -->
    <default class="tyre">
      <geom type="ellipsoid" size="{r} {r} 0.02" mass="0.1" contype="2" conaffinity="1" condim="6"
            friction="1.0 0.005 0.0005" priority="1" rgba="0.08 0.08 0.08 1"/>
    </default>
    <default class="rim">
      <geom type="cylinder" size="{r} 0.02" mass="0" contype="0" conaffinity="0" rgba="0.08 0.08 0.08 1"/>
    </default>
    <!-- Suspension: each wheel on a vertical slide with a spring and damper. Without it the rigid
         chassis stands on four stiff contacts like a table, rocks onto three wheels in corners and
         under drive torque, and the IMU sees the resulting jolts. {k} N/m and 23 N s/m per corner:
         ~5 Hz ride frequency, damping ratio ~0.6. The load pushes a wheel up (+q); springref
         (minus the static sag) puts the loaded rest position at q = 0. -->
    <default class="suspension">
      <joint type="slide" axis="0 0 1" range="-0.025 0.025" stiffness="{k}" springref="{springref}"
             damping="23"/>
    </default>
    <default class="steer">
      <!-- Servo gear train: armature dominates the knuckle inertia. -->
      <joint axis="0 0 1" range="-0.5 0.5" armature="0.001" damping="0.02"/>
    </default>
    <default class="front_wheel">
      <joint axis="0 1 0" armature="0.00001" damping="0.00001"/>
    </default>
    <default class="rear_wheel">
      <!-- Motor rotor and gearbox inertia reflected to the wheels. -->
      <joint axis="0 1 0" armature="0.0005" damping="0.0001"/>
    </default>
  </default>
  <worldbody>
    <light pos="0 0 10" dir="0 0 -1" directional="true" castshadow="false" diffuse="0.5 0.5 0.5"/>
    <geom name="floor" type="plane" size="{floor} {floor} 0.1" material="floor"/>
    <camera name="overview" pos="{cx} {cy} {cz}" xyaxes="1 0 0 0 1 0" fovy="50"/>
{car}
    <body name="walls">
{walls}
    </body>
  </worldbody>
  <tendon>
    <!-- Open differential: the drive acts on the mean rear wheel angle, so each wheel gets half
         of its torque whatever their speeds, and the wheels can turn at different rates. -->
    <fixed name="rear_diff">
      <joint joint="wheel_rl" coef="0.5"/>
      <joint joint="wheel_rr" coef="0.5"/>
    </fixed>
  </tendon>
  <actuator>
    <!-- Steering servos (~1 N m, ~0.1 s to full lock). -->
    <position name="steer_fl" joint="steer_fl" kp="10" kv="0.2" forcerange="-1 1" ctrlrange="-0.5 0.5"/>
    <position name="steer_fr" joint="steer_fr" kp="10" kv="0.2" forcerange="-1 1" ctrlrange="-0.5 0.5"/>
    <!-- Speed controller: target wheel speed (rad/s) on the differential. 0.6 N m on the tendon =
         0.3 N m per rear wheel = 12 N of thrust (4 m/s^2); it is also the motor brake, kept below
         what the rear tyres can take while weight shifts forward, so braking does not lock them. -->
    <velocity name="drive" tendon="rear_diff" kv="0.2" forcerange="-0.6 0.6" ctrlrange="{wmax_neg} {wmax}"/>
    <!-- Front brakes, a damper scaled by ctrl in [0, 1]: torque = -0.05 * wheel speed * ctrl, at
         most 0.3 N m per wheel (the front tyres carry the extra load when braking). Together with
         the motor brake: up to ~7 m/s^2. -->
{brakes}
  </actuator>
  <sensor>
    <framepos name="pos" objtype="site" objname="imu"/>
    <framequat name="quat" objtype="site" objname="imu"/>
    <velocimeter name="velocity" site="imu"/>
    <gyro name="gyro" site="imu"/>
    <accelerometer name="accel" site="imu"/>
    <jointvel name="w_fl" joint="wheel_fl"/>
    <jointvel name="w_fr" joint="wheel_fr"/>
    <jointvel name="w_rl" joint="wheel_rl"/>
    <jointvel name="w_rr" joint="wheel_rr"/>
    <jointpos name="steer_fl" joint="steer_fl"/>
    <jointpos name="steer_fr" joint="steer_fr"/>
    <!-- Number of contacts between any car geom and any wall. -->
    <contact name="wall_contacts" subtree1="car" body2="walls" data="found" reduce="mindist" num="1"/>
  </sensor>
</mujoco>
"""


def scene_xml(course: Course, timestep: float = TIMESTEP) -> str:
    """The MJCF of the car on `course`."""
    half_l, half_w = WHEELBASE / 2, TRACK / 2
    front = "".join(_FRONT.format(s=s, x=half_l, y=y) for s, y in (("fl", half_w), ("fr", -half_w)))
    rear = "".join(_REAR.format(s=s, x=-half_l, y=y) for s, y in (("rl", half_w), ("rr", -half_w)))
    walls = "\n".join(
        f'      <geom name="wall{i}" type="box" size="{h:.4f} {WALL_HALF_THICKNESS} {WALL_HALF_HEIGHT}" '
        f'pos="{x:.4f} {y:.4f} {WALL_HALF_HEIGHT}" euler="0 0 {yaw:.5f}" friction="0.3" '
        f'rgba="0.85 0.3 0.15 1"/>'
        for i, (x, y, yaw, h) in enumerate(course.wall_boxes())
    )
    brakes = "\n".join(
        f'    <general name="brake_{s}" joint="wheel_{s}" gaintype="affine" gainprm="0 0 -0.05" '
        f'ctrlrange="0 1" forcerange="-0.3 0.3"/>'
        for s in ("fl", "fr")
    )
    lo, hi = course.bounds()
    center, half = (lo + hi) / 2, (hi - lo).max() / 2
    wmax = MAX_SPEED / WHEEL_RADIUS
    return _SCENE.format(
        seed=course.seed,
        dt=timestep,
        r=WHEEL_RADIUS,
        floor=float(np.abs(np.concatenate([lo, hi])).max() + 5),
        cx=center[0],
        cy=center[1],
        cz=1.05 * half / math.tan(math.radians(25)),
        car=_CAR.format(r=WHEEL_RADIUS, front=front, rear=rear),
        walls=walls,
        brakes=brakes,
        wmax=wmax,
        wmax_neg=-wmax,
        k=SPRING_K,
        springref=-SPRUNG_MASS * 9.81 / 4 / SPRING_K,
    )


class CourseWorld(MujocoWorld):
    """A MujocoWorld compiled from a generated course instead of an XML file."""

    def __init__(self, course: Course, timestep: float = TIMESTEP):
        # Not calling MujocoWorld.__init__: it loads a file; everything else is inherited.
        self.course = course
        self.model = mujoco.MjModel.from_xml_string(scene_xml(course, timestep))
        self.data = mujoco.MjData(self.model)


# --- the robot ---------------------------------------------------------------------------------
class MujocoRCCar(Robot):
    """The car as a Robot: [steer, speed] commands, odometry/IMU observations, wall contact checks."""

    def __init__(self, world: CourseWorld, control_hz: float = CONTROL_HZ):
        self.world = world
        m = world.model
        self.substeps = int(round(1.0 / (control_hz * m.opt.timestep)))
        if self.substeps < 1:
            raise ValueError(
                f"control_hz {control_hz} is faster than the physics ({1 / m.opt.timestep:.0f} Hz)"
            )
        self._sensor = {
            m.sensor(i).name: slice(m.sensor_adr[i], m.sensor_adr[i] + m.sensor_dim[i])
            for i in range(m.nsensor)
        }
        self._contacts = self._sensor["wall_contacts"].start
        self._act = {m.actuator(i).name: i for i in range(m.nu)}
        self._brakes = [self._act["brake_fl"], self._act["brake_fr"]]
        self._qpos = m.joint("car").qposadr[0]
        self.observation_spec = car_spec.observation_spec()
        self.action_spec = car_spec.action_spec()
        self.collided = False  # touched a wall during the last command
        self.contact_substeps = 0  # substeps of the last command with a wall contact
        self.max_contacts = 0  # most simultaneous car-wall contacts during the last command
        self.collision_events = 0  # contacts begun since the last place(): a scrape counts once
        self.commands = 0
        self.stops = 0
        self._rest_z = self._settle_height()

    # --- Robot -------------------------------------------------------------------------------
    def connect(self) -> None:
        self.world.forward()

    def disconnect(self) -> None:
        pass

    def observe(self) -> dict[str, np.ndarray]:
        s, d = self._sensor, self.world.data.sensordata
        # Per-wheel speeds are not observed: no real car measures them (robot_rl/tasks/car.py).
        drive = 0.5 * (d[s["w_rl"]] + d[s["w_rr"]])
        steer = 0.5 * (d[s["steer_fl"]] + d[s["steer_fr"]])
        return {
            "pose": self.pose().astype(np.float32),
            "velocity": d[s["velocity"]].astype(np.float32),
            "gyro": d[s["gyro"]].astype(np.float32),
            "accel": d[s["accel"]].astype(np.float32),
            "wheel_speed": drive.astype(np.float32),
            "steer": steer.astype(np.float32),
            "collision": np.array([float(self.collided)], np.float32),
            "timestamp": np.float64(self.world.data.time),
        }

    def command(self, action: np.ndarray) -> None:
        self.set_command(action)
        self.step_physics()
        self.commands += 1

    def set_command(self, action: np.ndarray) -> None:
        """Actuator targets for an action, without stepping physics (a vector env steps many)."""
        steer, speed = np.clip(
            np.asarray(action, np.float64), [-MAX_STEER, -MAX_SPEED], [MAX_STEER, MAX_SPEED]
        )
        ctrl = self.world.data.ctrl
        ctrl[self._act["steer_fl"]], ctrl[self._act["steer_fr"]] = ackermann(steer)
        forward = self.forward_speed()
        if speed * forward < 0 and abs(forward) > BRAKE_MIN_SPEED:
            # The command opposes the motion: motor brake (the drive servo held at zero speed) and
            # the front brakes, harder for a harder opposing command. Reverse comes once stopped.
            ctrl[self._act["drive"]] = 0.0
            ctrl[self._brakes] = min(1.0, abs(speed) / BRAKE_FULL_AT)
        else:
            ctrl[self._act["drive"]] = speed / WHEEL_RADIUS
            ctrl[self._brakes] = 0.0

    def stop(self) -> None:
        # Drive to zero speed and brake fully; steering stays. Safe from any thread: it only writes
        # ctrl, and the car stops even if physics is stepped without further commands.
        ctrl = self.world.data.ctrl
        ctrl[self._act["drive"]] = 0.0
        ctrl[self._brakes] = 1.0
        self.stops += 1

    # --- car-specific ------------------------------------------------------------------------
    def pose(self) -> np.ndarray:
        """(x, y, yaw) from the position and orientation sensors."""
        d, s = self.world.data.sensordata, self._sensor
        w, x, y, z = d[s["quat"]]
        yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
        px, py, _ = d[s["pos"]]
        return np.array([px, py, yaw])

    def forward_speed(self) -> float:
        return float(self.world.data.sensordata[self._sensor["velocity"]][0])

    def steering_angles(self) -> tuple[float, float]:
        """Measured (left, right) front wheel angles."""
        d, s = self.world.data.sensordata, self._sensor
        return float(d[s["steer_fl"]][0]), float(d[s["steer_fr"]][0])

    def place(self, x: float, y: float, yaw: float) -> None:
        """Put the car at rest on the floor at (x, y) facing `yaw`, controls zeroed."""
        d = self.world.data
        d.qpos[:] = 0.0
        d.qpos[self._qpos : self._qpos + 7] = [
            x,
            y,
            self._rest_z,
            math.cos(yaw / 2),
            0.0,
            0.0,
            math.sin(yaw / 2),
        ]
        d.qvel[:] = 0.0
        d.ctrl[:] = 0.0
        self.collided, self.contact_substeps, self.max_contacts, self.collision_events = False, 0, 0, 0
        self.world.forward()

    def step_physics(self) -> None:
        # One substep at a time so that a contact lasting only a few ms is still seen.
        m, d = self.world.model, self.world.data
        touching, self.contact_substeps, self.max_contacts = self.collided, 0, 0
        for _ in range(self.substeps):
            mujoco.mj_step(m, d)
            n = int(d.sensordata[self._contacts])
            if n:
                self.contact_substeps += 1
                self.max_contacts = max(self.max_contacts, n)
                self.collision_events += not touching
            touching = n > 0
        self.collided = self.contact_substeps > 0

    def _settle_height(self) -> float:
        """Height of the chassis origin at rest on its tyres (they sink a little into the floor)."""
        m = self.world.model
        d = mujoco.MjData(m)
        x, y, _ = self.world.course.start_pose  # on the track: clear of the walls
        d.qpos[self._qpos : self._qpos + 3] = [x, y, WHEEL_RADIUS + 0.005]
        d.ctrl[self._brakes] = 1.0
        mujoco.mj_step(m, d, nstep=int(0.5 / m.opt.timestep))
        return float(d.qpos[self._qpos + 2])


# --- the task ----------------------------------------------------------------------------------
class LapTask(Task):
    """Drive laps through the checkpoints in order; +1 per checkpoint (sparse).

    success: at least one full lap done; terminated: `laps` laps done. Lap times are sim time from
    the reset (or the previous lap) to reaching the last checkpoint, which is the start line.
    """

    text = "drive laps around the course without hitting the walls"

    def __init__(
        self,
        car: MujocoRCCar,
        n_checkpoints: int = 20,
        checkpoint_radius: float = 0.6,
        laps: int = 1,
        max_steps: int = 600,
        start_noise: bool = True,
    ):
        if n_checkpoints < 2:
            raise ValueError(f"n_checkpoints must be at least 2, got {n_checkpoints}")
        if not checkpoint_radius > 0:
            raise ValueError(f"checkpoint_radius must be positive, got {checkpoint_radius}")
        if laps < 1:
            raise ValueError(f"laps must be at least 1, got {laps}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.car, self.world, self.course = car, car.world, car.world.course
        self.max_steps, self.laps, self.start_noise = max_steps, laps, start_noise
        self.tracker = CheckpointTracker(self.course.checkpoints(n_checkpoints), checkpoint_radius)

    # The tracker's state, under the names the task has always shown.
    checkpoints = property(lambda self: self.tracker.checkpoints)
    next_checkpoint = property(lambda self: self.tracker.next_checkpoint)
    laps_completed = property(lambda self: self.tracker.laps_completed)
    lap_times = property(lambda self: self.tracker.lap_times)
    checkpoint_times = property(lambda self: self.tracker.checkpoint_times)

    @property
    def collisions(self) -> int:
        """Wall contacts begun this episode (a long scrape counts once)."""
        return self.car.collision_events

    def observation_spec(self) -> dict[str, ArraySpec]:
        return {"checkpoint_rel": ArraySpec((2,))}

    def observe(self) -> dict[str, np.ndarray]:
        (upcoming,) = self.tracker.upcoming(self.car.pose()[:2])
        return {"checkpoint_rel": self.to_car_frame(upcoming).astype(np.float32)}

    def to_car_frame(self, xy: np.ndarray) -> np.ndarray:
        x, y, yaw = self.car.pose()
        dx, dy = xy[0] - x, xy[1] - y
        c, s = math.cos(yaw), math.sin(yaw)
        return np.array([c * dx + s * dy, -s * dx + c * dy])

    def reset(self, rng: np.random.Generator) -> None:
        mujoco.mj_resetData(self.world.model, self.world.data)  # time 0, no solver warm start
        x, y, yaw = self.course.start_pose
        if self.start_noise:
            # A little off the line and off the heading, never near the walls.
            lateral = rng.uniform(-0.15, 0.15) * self.course.width
            x, y = x - math.sin(yaw) * lateral, y + math.cos(yaw) * lateral
            yaw += rng.uniform(-0.15, 0.15)
        self.car.place(x, y, yaw)
        self.tracker.reset()

    def evaluate(self, obs) -> tuple[float, bool, bool]:
        reached, _ = self.tracker.advance(self.car.pose()[:2], self.world.time)
        laps = self.tracker.laps_completed
        return float(reached), laps >= 1, laps >= self.laps

    def lateral_offset(self) -> float:
        return self.course.lateral_offset(self.car.pose()[:2])


def practice_hooks(env: RobotEnv) -> dict:
    """What autonomous practice (learners.practice.PracticeTask) needs from the sim beyond the car:
    the start placement (the lap task's reset), righting a flipped car (back on its wheels on the
    centerline nearest to where it lies, facing along the track: what a real run would need a
    hand for) and the sim clock."""
    task, car, course = env.task, env.robot, env.robot.world.course

    def right_car() -> None:
        i = course.nearest(car.pose()[:2])
        x, y = course.centerline[i]
        car.place(float(x), float(y), float(course.heading[i]))

    return {"place_start": task.reset, "right_car": right_car, "clock": lambda: car.world.time}


# --- the scripted driver -----------------------------------------------------------------------
class RCCarExpert:
    """Pure pursuit on the centerline with a curvature-aware speed profile.

    Steering: aim the rear axle at the centerline point `lookahead + lookahead_gain * speed` metres
    ahead (pure pursuit: steer = atan(2 L sin(alpha) / distance)). Speed: the slowest of
    `max_speed`, and for every point in the next few metres the speed from which the car can still
    brake (at `brake_accel`) down to that point's cornering speed sqrt(lateral_accel / curvature).
    `noise` adds Gaussian noise to the normalized action.
    """

    def __init__(
        self,
        task: LapTask,
        noise: float = 0.0,
        seed: int | None = None,
        max_speed: float = 2.5,
        lateral_accel: float = 3.5,
        brake_accel: float = 3.0,
        lookahead: float = 0.5,
        lookahead_gain: float = 0.3,
        preview: float = 3.0,
    ):
        if not 0 < max_speed <= MAX_SPEED:
            raise ValueError(f"max_speed must be within (0, {MAX_SPEED}] m/s, got {max_speed}")
        self.task, self.car, self.course, self.noise = task, task.car, task.course, noise
        self.max_speed, self.lateral_accel, self.brake_accel = max_speed, lateral_accel, brake_accel
        self.lookahead, self.lookahead_gain = lookahead, lookahead_gain
        self.rng = np.random.default_rng(seed)
        # Cornering speed at every centerline point, and the distances ahead the speed plan looks at.
        curvature = np.maximum(np.abs(self.course.curvature), 1e-6)
        self._corner_speed = np.minimum(max_speed, np.sqrt(lateral_accel / curvature))
        self._ahead = np.arange(0, int(preview / self.course.spacing) + 1)

    def __call__(self, obs=None) -> np.ndarray:
        action = np.array([self.steer() / MAX_STEER, self.speed() / MAX_SPEED])
        if self.noise:
            action = action + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _rear_axle(self) -> tuple[np.ndarray, float]:
        x, y, yaw = self.car.pose()
        return np.array([x, y]) - 0.5 * WHEELBASE * np.array([math.cos(yaw), math.sin(yaw)]), yaw

    def steer(self) -> float:
        rear, yaw = self._rear_axle()
        i = self.course.nearest(rear)
        ahead = self.lookahead + self.lookahead_gain * max(self.car.forward_speed(), 0.0)
        target = self.course.point_at(i * self.course.spacing + ahead)
        dx, dy = target - rear
        c, s = math.cos(yaw), math.sin(yaw)
        alpha = math.atan2(-s * dx + c * dy, c * dx + s * dy)
        return math.atan2(2.0 * WHEELBASE * math.sin(alpha), math.hypot(dx, dy))

    def speed(self) -> float:
        i = self.course.nearest(self.car.pose()[:2])
        idx = (i + self._ahead) % len(self._corner_speed)
        distance = self._ahead * self.course.spacing
        return float(np.min(np.sqrt(self._corner_speed[idx] ** 2 + 2.0 * self.brake_accel * distance)))

    def distance(self) -> float:
        """Lateral distance from the centerline (what ScriptedTeleop's drift mode watches)."""
        return abs(self.task.lateral_offset())


# --- construction ------------------------------------------------------------------------------
def make_rc_car_env(
    course_seed: int = 0,
    cameras: tuple[str, ...] = ("fpv",),
    image_size: int = 84,
    max_steps: int = 600,
    n_checkpoints: int = 20,
    checkpoint_radius: float = 0.6,
    laps: int = 1,
    track_width: float = 1.2,
    control_hz: float = CONTROL_HZ,
    start_noise: bool = True,
) -> RobotEnv:
    """The car on the course drawn from `course_seed`; `cameras` from ("fpv", "overview")."""
    world = CourseWorld(generate_course(course_seed, width=track_width))
    car = MujocoRCCar(world, control_hz=control_hz)
    task = LapTask(
        car,
        n_checkpoints=n_checkpoints,
        checkpoint_radius=checkpoint_radius,
        laps=laps,
        max_steps=max_steps,
        start_noise=start_noise,
    )
    cams = [MujocoCamera(world, name, image_size, image_size) for name in cameras]
    return RobotEnv(car, task, cams)


def from_config(cfg, expert_noise: float = 0.0, seed: int | None = None):
    """(env, expert) from an `env` config entry like robot_rl/conf/env/rc_car.yaml."""
    try:
        env = make_rc_car_env(
            course_seed=int(cfg.get("course_seed", 0)),
            cameras=tuple(cfg.get("cameras", ("fpv",))),
            image_size=int(cfg.get("image_size", 84)),
            max_steps=int(cfg.get("max_steps", 600)),
            n_checkpoints=int(cfg.get("n_checkpoints", 20)),
            checkpoint_radius=float(cfg.get("checkpoint_radius", 0.6)),
            laps=int(cfg.get("laps", 1)),
            track_width=float(cfg.get("track_width", 1.2)),
            control_hz=float(cfg.get("control_hz", CONTROL_HZ)),
            start_noise=bool(cfg.get("start_noise", True)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad rc_car config: {exc}") from exc
    return env, RCCarExpert(
        env.task, noise=expert_noise, seed=seed, max_speed=float(cfg.get("expert_speed", 2.5))
    )
