"""robot_rl: one control loop for simulated and real robots, and the learners that train on it."""

import os

# MuJoCo picks its OpenGL backend when it is first imported: default to headless EGL unless the
# user chose a backend or has a display. Done here so that it holds whatever is imported first.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"

# numpy's OpenBLAS spreads even a 6x6 solve (the arm's IK, every tick) over every core, and its
# threads spin while they wait: beside one busy process (a learner) a solve took 120x longer and
# the control loop stalled. Nothing here gives numpy matrices large enough to gain from threads.
# Set before numpy is first imported; a user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.2.0"


def _register_gym_envs() -> None:
    """`gym.make("robot_rl/PegInsert-v0")` and the other sim tasks, once robot_rl is imported
    (or `gym.make("robot_rl:robot_rl/PegInsert-v0")`, which imports it)."""
    from pathlib import Path

    import gymnasium

    for path in sorted((Path(__file__).parent / "conf" / "env").glob("*.yaml")):
        env_id = "robot_rl/" + "".join(part.capitalize() for part in path.stem.split("_")) + "-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point="robot_rl.factory:make_gym_env", kwargs={"env": path.stem})


_register_gym_envs()
