"""A 7-DoF arm with a parallel-jaw gripper (Franka Panda kinematics), and its Cartesian controller.

The MJCF is our own: the Panda's joint frames and limits (as in MuJoCo Menagerie's panda.xml), links
drawn as capsules between joint origins. Only the hand and the finger pads collide: link-link and
link-scene contacts are not needed by the tabletop tasks and would cost collision time.

Control: an action is an end-effector step [dx, dy, dz, dyaw] plus a gripper command; the gripper
always points down. Each command solves damped least-squares IK on the 6-D site Jacobian (position
and orientation error), with a null-space pull toward the home posture for the redundant 7th joint,
and integrates the joint servo targets. Physics runs at 500 Hz under a 20 Hz command.
"""

from __future__ import annotations

import mujoco
import numpy as np

from robot_rl.core.protocols import Robot
from robot_rl.core.specs import ArraySpec
from robot_rl.sim.world import MujocoWorld
from robot_rl.tasks.arm import down_rotation, yaw_of

CONTROL_HZ = 20.0
MAX_STEP_M = 0.02  # per command: 0.4 m/s at 20 Hz
MAX_YAW_STEP = 0.15  # rad per command
MAX_TARGET_LEAD = 0.15  # rad: how far the servo target may run ahead of the measured joints
MAX_HAND_LEAD_M = 0.01  # how far the hand's target may run ahead of the hand, per axis
FINGER_OPEN = 0.04  # finger joint travel (half the opening), metres
HOME_QPOS = np.array([0.0, -0.2, 0.0, -2.3, 0.0, 2.1, 0.0])
JOINT_KP = (2500, 2500, 2000, 2000, 1200, 1200, 800)

ARM_XML = """
<body name="link0" pos="0 0 0">
  <geom type="cylinder" size="0.07 0.05" pos="0 0 0.05" rgba="0.92 0.92 0.94 1"/>
  <geom type="capsule" fromto="0 0 0.05 0 0 0.333" size="0.06" rgba="0.92 0.92 0.94 1"/>
  <body name="link1" pos="0 0 0.333" gravcomp="1">
    <inertial pos="0 0 0" mass="3" diaginertia="0.05 0.05 0.02"/>
    <joint name="joint1" range="-2.8973 2.8973"/>
    <geom type="sphere" size="0.065" rgba="0.92 0.92 0.94 1"/>
    <body name="link2" quat="1 -1 0 0" gravcomp="1">
      <inertial pos="0 -0.1 0" mass="3" diaginertia="0.05 0.05 0.02"/>
      <joint name="joint2" range="-1.7628 1.7628"/>
      <geom type="capsule" fromto="0 0 0 0 -0.316 0" size="0.06" rgba="0.92 0.92 0.94 1"/>
      <body name="link3" pos="0 -0.316 0" quat="1 1 0 0" gravcomp="1">
        <inertial pos="0.04 0 0" mass="2.5" diaginertia="0.03 0.03 0.01"/>
        <joint name="joint3" range="-2.8973 2.8973"/>
        <geom type="capsule" fromto="0 0 0 0.0825 0 0" size="0.055" rgba="0.92 0.92 0.94 1"/>
        <body name="link4" pos="0.0825 0 0" quat="1 1 0 0" gravcomp="1">
          <inertial pos="-0.04 0.15 0" mass="2.5" diaginertia="0.03 0.03 0.01"/>
          <joint name="joint4" range="-3.0718 -0.0698"/>
          <geom type="capsule" fromto="0 0 0 -0.0825 0.384 0" size="0.055" rgba="0.25 0.25 0.28 1"/>
          <body name="link5" pos="-0.0825 0.384 0" quat="1 -1 0 0" gravcomp="1">
            <inertial pos="0 0 -0.05" mass="2" diaginertia="0.02 0.02 0.01"/>
            <joint name="joint5" range="-2.8973 2.8973"/>
            <geom type="sphere" size="0.055" rgba="0.92 0.92 0.94 1"/>
            <body name="link6" quat="1 1 0 0" gravcomp="1">
              <inertial pos="0.04 0 0" mass="1.5" diaginertia="0.01 0.01 0.005"/>
              <joint name="joint6" range="-0.0175 3.7525"/>
              <geom type="capsule" fromto="0 0 0 0.088 0 0" size="0.045" rgba="0.92 0.92 0.94 1"/>
              <body name="link7" pos="0.088 0 0" quat="1 1 0 0" gravcomp="1">
                <inertial pos="0 0 0.05" mass="0.5" diaginertia="0.003 0.003 0.002"/>
                <joint name="joint7" range="-2.8973 2.8973"/>
                <geom type="cylinder" fromto="0 0 0 0 0 0.09" size="0.04" rgba="0.25 0.25 0.28 1"/>
                <body name="hand" pos="0 0 0.107" gravcomp="1">
                  <inertial pos="0 0 0.03" mass="0.6" diaginertia="0.002 0.002 0.001"/>
                  <geom name="hand" type="box" size="0.025 0.1 0.03" pos="0 0 0.03" rgba="0.92 0.92 0.94 1"
                        contype="1" conaffinity="1"/>
                  <camera name="wrist" pos="0.06 0 0.01" xyaxes="0 1 0 0.94 0 0.35" fovy="75"/>
                  <site name="tcp" pos="0 0 0.105" size="0.006" rgba="1 0.2 0.2 0.6"/>
                  {hand_extra}
                  <body name="left_finger" pos="0 0 0.06" gravcomp="1">
                    <inertial pos="0 0.01 0.025" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
                    <joint name="finger_left" type="slide" axis="0 1 0" range="0 0.04" damping="5"
                           armature="0.01"/>
                    <geom name="pad_left" class="pad" pos="0 0.006 0.03"/>
                  </body>
                  <body name="right_finger" pos="0 0 0.06" gravcomp="1">
                    <inertial pos="0 -0.01 0.025" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
                    <joint name="finger_right" type="slide" axis="0 -1 0" range="0 0.04" damping="5"
                           armature="0.01"/>
                    <geom name="pad_right" class="pad" pos="0 -0.006 0.03"/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
  </body>
</body>
"""

ARM_DEFAULTS = """
<default>
  <joint damping="8" armature="0.1"/>
  <geom contype="0" conaffinity="0" density="0"/>
  <default class="pad">
    <!-- condim 4 adds torsional friction, so a pinched object does not spin about the pinch axis -->
    <geom type="box" size="0.012 0.006 0.025" contype="1" conaffinity="1" condim="4"
          friction="1.5 0.02 0.001" solref="0.004 1" rgba="0.2 0.2 0.22 1" density="500"/>
  </default>
</default>
"""

ARM_ACTUATORS = """
<actuator>
  {joints}
  <position name="gripper" joint="finger_left" kp="400" kv="20" ctrlrange="0 0.04" forcerange="-40 40"/>
</actuator>
<equality>
  <!-- the two fingers move together, as the Panda's single gripper motor drives them -->
  <joint joint1="finger_right" joint2="finger_left" polycoef="0 1 0 0 0" solref="0.004 1"/>
</equality>
"""


def scene_xml(worldbody: str, hand_extra: str = "", extra: str = "", timestep: float = 0.002) -> str:
    """A full MJCF: the arm on a table, the given task bodies, two cameras and the actuators."""
    joints = "\n  ".join(
        f'<position name="a{i + 1}" joint="joint{i + 1}" kp="{kp}" kv="{2 * np.sqrt(kp) * 0.9:.0f}"/>'
        for i, kp in enumerate(JOINT_KP)
    )
    return f"""
<mujoco model="arm_task">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <global offwidth="84" offheight="84"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  {ARM_DEFAULTS}
  <worldbody>
    <light pos="0.5 0 1.5" dir="0 0 -1" directional="true" castshadow="false"/>
    <geom name="table" type="plane" size="1.2 1.2 0.01" rgba="0.78 0.72 0.62 1" contype="1" conaffinity="1"/>
    <camera name="front" pos="1.1 0 0.55" xyaxes="0 1 0 -0.6 0 0.8" fovy="50"/>
    <camera name="side" pos="0.55 -0.9 0.55" xyaxes="1 0 0 0 0.45 0.89" fovy="50"/>
    {ARM_XML.replace("{hand_extra}", hand_extra)}
    {worldbody}
  </worldbody>
  {ARM_ACTUATORS.format(joints=joints)}
  {extra}
</mujoco>
"""


class MujocoArm(Robot):
    """The 7-DoF arm as a robot_rl Robot. Action (robot units): [dx, dy, dz, dyaw, gripper]."""

    def __init__(
        self,
        world: MujocoWorld,
        control_hz: float = CONTROL_HZ,
        damping: float = 0.05,
        null_gain: float = 0.1,
    ):
        self.world = world
        m = world.model
        self.substeps = int(round(1.0 / (control_hz * m.opt.timestep)))
        self._site = m.site("tcp").id
        self._qadr = np.array([m.jnt_qposadr[m.joint(f"joint{i}").id] for i in range(1, 8)])
        self._dadr = np.array([m.jnt_dofadr[m.joint(f"joint{i}").id] for i in range(1, 8)])
        self._finger = m.jnt_qposadr[m.joint("finger_left").id]
        self._finger_r = m.jnt_qposadr[m.joint("finger_right").id]
        self._act = np.array([m.actuator(f"a{i}").id for i in range(1, 8)])
        self._grip_act = m.actuator("gripper").id
        self._range = m.jnt_range[[m.joint(f"joint{i}").id for i in range(1, 8)]]
        self._damping2 = damping**2
        self._null_gain = null_gain
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self.target_yaw = 0.0
        self.observation_spec = {
            "joint_pos": ArraySpec((7,)),
            "joint_vel": ArraySpec((7,)),
            "ee_pos": ArraySpec((3,)),
            "ee_yaw": ArraySpec((2,)),  # cos, sin: continuous across the +-pi wrap
            "gripper": ArraySpec((1,)),  # opening width in metres
            "timestamp": ArraySpec((), "float64"),
        }
        low = [-MAX_STEP_M] * 3 + [-MAX_YAW_STEP, -1.0]
        high = [MAX_STEP_M] * 3 + [MAX_YAW_STEP, 1.0]
        self.action_spec = ArraySpec(
            (5,), low=np.array(low), high=np.array(high), names=("dx", "dy", "dz", "dyaw", "gripper")
        )

    # --- Robot protocol --------------------------------------------------------------------
    def connect(self) -> None:
        self.world.forward()

    def disconnect(self) -> None:
        pass

    def observe(self) -> dict[str, np.ndarray]:
        d = self.world.data
        yaw = yaw_of(self.ee_rotation())
        return {
            "joint_pos": d.qpos[self._qadr].astype(np.float32),
            "joint_vel": d.qvel[self._dadr].astype(np.float32),
            "ee_pos": self.ee_pos().astype(np.float32),
            "ee_yaw": np.array([np.cos(yaw), np.sin(yaw)], np.float32),
            "gripper": np.array([d.qpos[self._finger] + d.qpos[self._finger_r]], np.float32),
            "timestamp": np.float64(d.time),
        }

    def command(self, action: np.ndarray) -> None:
        self.set_command(action)
        self.step_physics()

    def step_physics(self) -> None:
        """Advance physics by one command period."""
        self.world.step(self.substeps)

    def set_command(self, action: np.ndarray) -> None:
        """Turn an action into servo targets without stepping physics."""
        MujocoArm.set_commands([self], np.asarray(action, np.float64)[None])

    @staticmethod
    def set_commands(arms: list[MujocoArm], actions: np.ndarray) -> None:
        """Servo targets for many arms at once (a vector env): one batched IK solve for all."""
        a = np.asarray(actions, np.float64)
        delta = np.clip(a[:, :3], -MAX_STEP_M, MAX_STEP_M)
        for arm, dyaw in zip(arms, a[:, 3]):
            arm.target_yaw = float(
                np.clip(arm.target_yaw + np.clip(dyaw, -MAX_YAW_STEP, MAX_YAW_STEP), -2.5, 2.5)
            )
        n = len(arms)
        jac, twist = np.empty((n, 6, 7)), np.empty((n, 6))
        q, ctrl = np.empty((n, 7)), np.empty((n, 7))
        for i, arm in enumerate(arms):
            m, d = arm.world.model, arm.world.data
            mujoco.mj_jacSite(m, d, arm._jacp, arm._jacr, arm._site)
            jac[i, :3], jac[i, 3:] = arm._jacp[:, arm._dadr], arm._jacr[:, arm._dadr]
            # Orientation error: the rotation vector of goal @ rot^T, to first order.
            err = down_rotation(arm.target_yaw) @ arm.ee_rotation().T
            twist[i, :3] = delta[i]
            twist[i, 3:] = 0.5 * np.array(
                [err[2, 1] - err[1, 2], err[0, 2] - err[2, 0], err[1, 0] - err[0, 1]]
            )
            q[i], ctrl[i] = d.qpos[arm._qadr], d.ctrl[arm._act]
        targets = _ik_targets(jac, twist, q, ctrl, arms[0]._damping2, arms[0]._null_gain)
        for i, arm in enumerate(arms):
            d = arm.world.data
            d.ctrl[arm._act] = np.clip(targets[i], arm._range[:, 0], arm._range[:, 1])
            # Gripper command in [-1, 1]: -1 fully open, +1 fully closed (the servo squeezes).
            d.ctrl[arm._grip_act] = FINGER_OPEN * (1.0 - np.clip(a[i, 4], -1.0, 1.0)) / 2.0

    def stop(self) -> None:
        # Hold the measured joints and the gripper as it is. Safe from any thread: writes targets only.
        d = self.world.data
        d.ctrl[self._act] = d.qpos[self._qadr]
        d.ctrl[self._grip_act] = d.qpos[self._finger]

    # --- kinematics ------------------------------------------------------------------------
    def ee_pos(self) -> np.ndarray:
        return self.world.data.site_xpos[self._site].copy()

    def ee_rotation(self) -> np.ndarray:
        return self.world.data.site_xmat[self._site].reshape(3, 3).copy()

    def gripper_width(self) -> float:
        d = self.world.data
        return float(d.qpos[self._finger] + d.qpos[self._finger_r])

    def reset_joints(self, qpos: np.ndarray, gripper_open: float = FINGER_OPEN) -> None:
        d = self.world.data
        d.qpos[self._qadr] = qpos
        d.qpos[self._finger] = d.qpos[self._finger_r] = gripper_open
        d.qvel[:] = 0.0
        d.ctrl[self._act] = qpos
        d.ctrl[self._grip_act] = gripper_open
        self.world.forward()
        self.target_yaw = yaw_of(self.ee_rotation())


def _ik_targets(jac, twist, q, ctrl, damping2: float, null_gain: float) -> np.ndarray:
    """Batched damped least-squares IK step for (N, 6, 7) Jacobians; returns new servo targets.

    The servo targets are integrated rather than restarted from the measured joints, so servo lag
    does not shrink every commanded step; they stay within MAX_TARGET_LEAD of the joints.
    """
    jt = np.swapaxes(jac, 1, 2)
    jjt = jac @ jt + damping2 * np.eye(6)
    dq = (jt @ np.linalg.solve(jjt, twist[..., None]))[..., 0]
    # Null space: the 7th degree of freedom drifts toward the home posture, away from limits.
    # Projected with the exact pseudo-inverse: the damped one leaks the pull into the task space,
    # enough to stall sub-millimetre steps.
    null = np.eye(7) - np.linalg.pinv(jac, rcond=1e-4) @ jac
    dq += (null @ (null_gain * (HOME_QPOS - q))[..., None])[..., 0]
    # Bound how far the hand's target runs ahead of the hand, in Cartesian space and per axis: a
    # hand pressed on a surface then pushes into it with a bounded force while its target keeps
    # its place sideways, so the servos hold it there. (Re-anchoring joint by joint instead made
    # the push follow the hand, and its sideways part slid the hand along the surface.)
    lead = ctrl + dq - q
    ahead = (jac[:, :3] @ lead[..., None])[..., 0]
    excess = ahead - np.clip(ahead, -MAX_HAND_LEAD_M, MAX_HAND_LEAD_M)
    lead -= (
        jt[..., :3] @ np.linalg.solve(jac[:, :3] @ jt[..., :3] + damping2 * np.eye(3), excess[..., None])
    )[..., 0]
    return q + np.clip(lead, -MAX_TARGET_LEAD, MAX_TARGET_LEAD)
